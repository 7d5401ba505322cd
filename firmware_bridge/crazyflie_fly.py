"""``nanofly crazyflie fly``: one supervised flight of the nanofly app on a real Crazyflie, over
cflib (radio, USB, or any cflib URI).

The flight, in order (``flight_plan`` builds the setpoint schedule):

1. connect; check that the firmware runs the nanofly app (param ``nanofly.enable``) with a
   valid model (``nanofly.modelStatus`` 0), and that a position source is present (Flow deck
   v2, Lighthouse deck, or ``--position-source mocap``);
2. select the Kalman estimator and the out-of-tree controller, reset the estimator and wait
   until its position variance has settled;
3. arm; take off under the stock PID controller (the app runs PID while ``nanofly.enable`` is
   0) to ``--height`` above the start point, or with ``--takeoff policy`` let the policy take
   off from the ground;
4. enable the policy and hold the hover point for ``--duration`` s, sending position setpoints
   at 50 Hz (the app cuts the motors 200 ms after they stop);
5. disable the policy, land under PID, stop, disarm.

Whatever ends the flight early (Ctrl-C, a lost link, an error) disables the policy, sends a
stop setpoint and disarms. Every variable of the ``nanofly`` log group (from the firmware's
log table of contents, so the names follow the firmware) and the state estimate are written
to ``--out/flight.csv`` at 100 Hz, with a plot ``--out/flight.png``.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SETPOINT_RATE_HZ = 50.0  # well inside the app's 200 ms setpoint timeout
LOG_PERIOD_MS = 10  # 100 Hz: the policy's rate
TAKEOFF_S = 2.0
LANDING_S = 2.5
SETTLE_S = 1.0  # hover under PID before the policy takes over
ESTIMATOR_KALMAN = 2  # param stabilizer.estimator
# Param stabilizer.controller: the firmware's ControllerType enum (controller.h) with
# CONFIG_CONTROLLER_OOT: AutoSelect, PID, Mellinger, INDI, Brescianini, Lee, Oot.
CONTROLLER_OOT = 6
POSITION_DECKS = {"flow": "deck.bcFlow2", "lighthouse": "deck.bcLighthouse4"}


class FlightError(RuntimeError):
    """A pre-flight check failed; the message says what and how to fix it."""


@dataclass(frozen=True)
class Setpoint:
    t: float  # s since the plan's start
    x: float  # m, world frame
    y: float
    z: float
    policy: bool  # nanofly.enable during this setpoint
    phase: str


def flight_plan(start: tuple[float, float, float], *, height: float, duration: float,
                takeoff: str = "pid", rate_hz: float = SETPOINT_RATE_HZ) -> list[Setpoint]:
    """The position setpoints of one flight, ``rate_hz`` apart: take-off ramp, settle, policy
    hover at ``start + (0, 0, height)``, landing ramp back to ``start``. With ``takeoff ==
    "policy"`` the policy is enabled from the first setpoint and the hover point is commanded
    at once (the policy flies the climb, as from a training episode's start)."""
    if not (math.isfinite(height) and 0.1 <= height <= 2.0):
        raise FlightError(f"--height {height} m is outside 0.1..2.0 m")
    if not (math.isfinite(duration) and 0.0 < duration <= 120.0):
        raise FlightError(f"--duration {duration} s is outside (0, 120] s")
    if takeoff not in ("pid", "policy"):
        raise FlightError(f"--takeoff must be pid or policy, got {takeoff!r}")
    x0, y0, z0 = start
    dt = 1.0 / rate_hz
    plan: list[Setpoint] = []
    t = 0.0

    def add(seconds: float, phase: str, policy: bool, z_of) -> None:
        nonlocal t
        n = max(1, int(round(seconds * rate_hz)))
        for k in range(n):
            plan.append(Setpoint(t, x0, y0, z_of((k + 1) / n), policy, phase))
            t += dt

    hover_z = z0 + height
    if takeoff == "pid":
        add(TAKEOFF_S, "takeoff", False, lambda s: z0 + s * height)
        add(SETTLE_S, "settle", False, lambda s: hover_z)
    add(duration, "policy", True, lambda s: hover_z)
    add(SETTLE_S, "settle", False, lambda s: hover_z)
    add(LANDING_S, "landing", False, lambda s: hover_z - s * height)
    return plan


def _param_names(cf) -> set[str]:
    return {f"{group}.{name}" for group, names in cf.param.toc.toc.items() for name in names}


def _log_names(cf, group: str) -> list[str]:
    return [f"{group}.{name}" for name in cf.log.toc.toc.get(group, {})]


def preflight(cf, position_source: str) -> dict[str, Any]:
    """Check the app, its model and the position source on a connected Crazyflie."""
    params = _param_names(cf)
    if "nanofly.enable" not in params:
        raise FlightError("this Crazyflie does not run the nanofly app (no param nanofly.enable): "
                          "build it with `nanofly crazyflie build` and flash cf2.bin "
                          "(docs/crazyflie.md)")
    info = {name: cf.param.get_value(name) for name in sorted(params) if name.startswith("nanofly.")}
    status = info.get("nanofly.modelStatus")
    if status is not None and int(status) != 0:
        raise FlightError(f"the app refused its model (nanofly.modelStatus {status}); read the "
                          f"console (cfclient) for the reason and rebuild with a valid policy")
    if position_source in POSITION_DECKS:
        deck = POSITION_DECKS[position_source]
        if deck not in params or int(cf.param.get_value(deck)) != 1:
            raise FlightError(f"no {position_source} deck detected ({deck} is not 1): mount it, "
                              f"or name another --position-source")
    elif position_source != "mocap":
        raise FlightError(f"--position-source must be flow, lighthouse or mocap, got "
                          f"{position_source!r}")
    return info


def _wait_for_estimator(cf, timeout_s: float = 10.0) -> None:
    """Reset the Kalman filter and wait until its position variance is small and steady (the
    pattern of cflib's own examples)."""
    from cflib.crazyflie.log import LogConfig
    from cflib.crazyflie.syncLogger import SyncLogger

    cf.param.set_value("kalman.resetEstimation", "1")
    time.sleep(0.1)
    cf.param.set_value("kalman.resetEstimation", "0")
    config = LogConfig(name="variance", period_in_ms=50)
    for axis in "XYZ":
        config.add_variable(f"kalman.varP{axis}", "float")
    history: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + timeout_s
    with SyncLogger(cf, config) as logger:
        for _, data, _ in logger:
            history = (history + [(data["kalman.varPX"], data["kalman.varPY"], data["kalman.varPZ"])])[-10:]
            if len(history) == 10 and all(max(v) - min(v) < 0.001 for v in zip(*history)):
                return
            if time.monotonic() > deadline:
                raise FlightError("the position estimate did not settle within 10 s: check the "
                                  "position source (flow deck surface and light, Lighthouse base "
                                  "stations, mocap stream)")


class FlightLog:
    """The ``nanofly`` log group and the state estimate, at 100 Hz, into CSV rows."""

    def __init__(self, cf):
        from cflib.crazyflie.log import LogConfig

        self.rows: list[dict[str, float]] = []
        self.configs = []
        names = ["stateEstimate.x", "stateEstimate.y", "stateEstimate.z"] + _log_names(cf, "nanofly")
        # A log block carries at most 26 bytes: four 4-byte variables per block is always safe.
        for i in range(0, len(names), 4):
            config = LogConfig(name=f"nanofly{i // 4}", period_in_ms=LOG_PERIOD_MS)
            for name in names[i:i + 4]:
                config.add_variable(name)  # the type comes from the firmware's TOC
            cf.log.add_config(config)
            config.data_received_cb.add_callback(self._received)
            self.configs.append(config)
        self.t0 = time.monotonic()
        self.target = (math.nan, math.nan, math.nan)
        self.policy = False

    def _received(self, timestamp, data, config) -> None:
        row = {"time_s": time.monotonic() - self.t0, "firmware_ms": timestamp,
               "target_x": self.target[0], "target_y": self.target[1], "target_z": self.target[2],
               "policy": int(self.policy)}
        row.update(data)
        self.rows.append(row)

    def start(self) -> None:
        for config in self.configs:
            config.start()

    def stop(self) -> None:
        for config in self.configs:
            try:
                config.stop()
            except Exception:  # the link may be gone; the rows are what matter
                pass

    def write(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "flight.csv"
        fields: list[str] = []
        for row in self.rows:
            fields.extend(k for k in row if k not in fields)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def plot_flight(rows: Iterable[dict[str, float]], path: Path) -> Path | None:
    """Position and target per axis over time, the policy's stretch shaded."""
    rows = list(rows)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["time_s"] for r in rows]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 6))
    for ax, axis in zip(axes, "xyz"):
        ax.plot(t, [r.get(f"stateEstimate.{axis}", math.nan) for r in rows], label="estimate")
        ax.plot(t, [r.get(f"target_{axis}", math.nan) for r in rows], "--", label="setpoint")
        on = [r.get("policy", 0) for r in rows]
        ax.fill_between(t, 0, 1, where=[bool(v) for v in on], color="tab:green", alpha=0.15,
                        transform=ax.get_xaxis_transform(), label="policy enabled")
        ax.set_ylabel(f"{axis} (m)")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fly(uri: str, *, height: float = 0.5, duration: float = 10.0, takeoff: str = "pid",
        position_source: str = "flow", out: Path = Path("runs/flight"),
        progress=print) -> dict[str, Any]:
    """Fly one supervised flight (module docstring). Returns a summary dict."""
    try:
        import cflib.crtp
        from cflib.crazyflie import Crazyflie
        from cflib.crazyflie.syncCrazyflie import SyncCrazyflie
    except ImportError as exc:
        raise FlightError(f"cflib is not installed ({exc}); pip install cflib") from None
    flight_plan((0.0, 0.0, 0.0), height=height, duration=duration, takeoff=takeoff)  # validate
    # cflib logs its link errors with tracebacks; the error below says what matters in a line.
    logging.getLogger("cflib").addHandler(logging.NullHandler())
    cflib.crtp.init_drivers()
    cache = Path.home() / ".cache" / "nanofly" / "cflib"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        scf = SyncCrazyflie(uri, cf=Crazyflie(rw_cache=str(cache)))
        scf.open_link()
    except Exception as exc:  # cflib raises plain Exceptions for "no dongle", "no answer", ...
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise FlightError(f"cannot connect to {uri}: {reason} (check the Crazyradio or USB cable, "
                          f"the URI, and that the Crazyflie is on)") from None
    cf = scf.cf
    log = None
    summary: dict[str, Any] = {"uri": uri, "completed": False}
    try:
        summary["app"] = preflight(cf, position_source)
        progress(f"nanofly app found: {summary['app']}")
        cf.param.set_value("stabilizer.estimator", str(ESTIMATOR_KALMAN))
        cf.param.set_value("nanofly.enable", "0")
        cf.param.set_value("stabilizer.controller", str(CONTROLLER_OOT))
        progress("waiting for the position estimate to settle ...")
        _wait_for_estimator(cf)
        start = (0.0, 0.0, 0.0)  # replaced by the estimate once the log runs
        log = FlightLog(cf)
        log.start()
        time.sleep(0.3)
        if log.rows:
            last = log.rows[-1]
            start = (last.get("stateEstimate.x", 0.0), last.get("stateEstimate.y", 0.0),
                     last.get("stateEstimate.z", 0.0))
        plan = flight_plan(start, height=height, duration=duration, takeoff=takeoff)
        cf.platform.send_arming_request(True)
        time.sleep(0.2)
        policy_on = False
        phase = None
        t0 = time.monotonic()
        for sp in plan:
            if sp.phase != phase:
                phase = sp.phase
                progress(f"{phase} ({sp.x:+.2f}, {sp.y:+.2f}, {sp.z:+.2f}) m")
            if sp.policy != policy_on:
                cf.param.set_value("nanofly.enable", "1" if sp.policy else "0")
                policy_on = sp.policy
            log.target = (sp.x, sp.y, sp.z)
            log.policy = policy_on
            cf.commander.send_position_setpoint(sp.x, sp.y, sp.z, 0.0)
            delay = t0 + sp.t + 1.0 / SETPOINT_RATE_HZ - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        summary["completed"] = True
    finally:
        # Whatever happened: policy off, motors stopped, disarmed, link closed.
        for action in (lambda: cf.param.set_value("nanofly.enable", "0"),
                       lambda: cf.commander.send_stop_setpoint(),
                       lambda: cf.commander.send_notify_setpoint_stop(),
                       lambda: cf.platform.send_arming_request(False)):
            try:
                action()
            except Exception:
                pass
        if log is not None:
            log.stop()
            summary["log"] = str(log.write(out))
            png = plot_flight(log.rows, out / "flight.png")
            summary["plot"] = str(png) if png else None
            summary["log_rows"] = len(log.rows)
        scf.close_link()
    return summary
