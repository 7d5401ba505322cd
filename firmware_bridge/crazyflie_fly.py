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
import math
import queue
import threading
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
STOCK_PARAMS_USED = ("stabilizer.estimator", "stabilizer.controller", "kalman.resetEstimation")
STOCK_LOGS_USED = ("kalman.varPX", "kalman.varPY", "kalman.varPZ",
                   "stateEstimate.x", "stateEstimate.y", "stateEstimate.z")
CONNECT_TIMEOUT_S = 30.0  # link up, TOCs and all param values (seconds over a radio, no cache)
PARAM_CONFIRM_S = 2.0  # the firmware echoes a param write within a few radio round trips
# No log data (100 Hz) for this long means the link is gone. cflib's radio driver reports a lost
# link itself; a link that just goes quiet (UDP, a stalled USB) reports nothing.
LINK_TIMEOUT_S = 0.5


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


class _Link:
    """cflib's connection callbacks as events with timeouts (cflib's SyncCrazyflie and
    SyncLogger wait without one, so a Crazyflie that stops answering would hang the script)."""

    def __init__(self, cf, uri: str):
        self.cf = cf
        self.uri = uri
        self.settled = threading.Event()  # fully connected, or failed
        self.fully_connected = False
        self.failure: str | None = None
        self.lost: str | None = None
        cf.fully_connected.add_callback(self._fully_connected)
        cf.connection_failed.add_callback(self._failed)
        cf.connection_lost.add_callback(self._lost)

    def _fully_connected(self, uri) -> None:
        self.fully_connected = True
        self.settled.set()

    def _failed(self, uri, message) -> None:
        self.failure = message
        self.settled.set()

    def _lost(self, uri, message) -> None:
        self.lost = message

    @property
    def up(self) -> bool:
        return self.cf.link is not None and self.lost is None

    def check(self, last_data_s: float | None = None) -> None:
        """Raise FlightError if cflib reported the link lost, or if no log data arrived for
        LINK_TIMEOUT_S (``last_data_s``: time.monotonic() of the last log data)."""
        if not self.up:
            # cflib drops the link before it reports why: give the report a moment to arrive
            deadline = time.monotonic() + 0.2
            while self.lost is None and time.monotonic() < deadline:
                time.sleep(0.01)
            raise FlightError(f"lost the link to {self.uri}: {_link_error(self.lost)}")
        if last_data_s is not None and time.monotonic() - last_data_s > LINK_TIMEOUT_S:
            raise FlightError(f"lost the link to {self.uri}: no log data for {LINK_TIMEOUT_S} s "
                              f"(out of range, or the Crazyflie stopped); the app cuts the motors "
                              f"200 ms after the last setpoint")


def _link_error(message: str | None) -> str:
    """cflib's link error in one line: its first line and the exception behind it."""
    if not message:
        return "cflib closed the link"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    cause = next((line[len("Exception:"):].strip() for line in lines[1:] if line.startswith("Exception:")), "")
    return f"{lines[0]} ({cause})" if cause and cause not in lines[0] else lines[0]


def _set_param(cf, name: str, value, wait_s: float | None = PARAM_CONFIRM_S) -> threading.Event:
    """Write a param; with ``wait_s``, wait until the firmware echoes the write (cflib queues
    writes on a thread of its own, so without this a later packet, e.g. the arming request,
    can overtake them). Returns the event set on the echo."""
    group, short = name.split(".")
    echoed = threading.Event()

    def on_update(complete_name, value_text) -> None:
        if not echoed.is_set():
            echoed.set()
            cf.param.remove_update_callback(group=group, name=short, cb=on_update)

    cf.param.add_update_callback(group=group, name=short, cb=on_update)
    cf.param.set_value(name, str(value))
    if wait_s is not None and not echoed.wait(wait_s):
        raise FlightError(f"the Crazyflie did not confirm {name} = {value} within {wait_s} s: "
                          f"the link is failing")
    return echoed


def _arm(cf, on: bool) -> None:
    supervisor = getattr(cf, "supervisor", None)  # cflib's supervisor port (protocol 12+)
    if supervisor is not None:
        supervisor.send_arming_request(on)
    else:
        cf.platform.send_arming_request(on)


def _wait_for_estimator(cf, link: _Link, timeout_s: float = 10.0) -> None:
    """Reset the Kalman filter and wait until its position variance is small and steady (the
    pattern of cflib's own examples)."""
    from cflib.crazyflie.log import LogConfig

    _set_param(cf, "kalman.resetEstimation", 1)
    time.sleep(0.1)
    _set_param(cf, "kalman.resetEstimation", 0)
    config = LogConfig(name="variance", period_in_ms=50)
    for axis in "XYZ":
        config.add_variable(f"kalman.varP{axis}", "float")
    samples: queue.Queue = queue.Queue()
    config.data_received_cb.add_callback(lambda timestamp, data, logconf: samples.put(data))
    cf.log.add_config(config)
    config.start()
    history: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + timeout_s
    last_data = time.monotonic()
    try:
        while True:
            try:
                data = samples.get(timeout=0.05)
                last_data = time.monotonic()
            except queue.Empty:
                link.check(last_data + 0.05)  # the block's own period on top of the timeout
                continue
            history = (history + [(data["kalman.varPX"], data["kalman.varPY"], data["kalman.varPZ"])])[-10:]
            if len(history) == 10 and all(max(v) - min(v) < 0.001 for v in zip(*history)):
                return
            if time.monotonic() > deadline:
                raise FlightError(f"the position estimate did not settle within {timeout_s:.0f} s: "
                                  "check the position source (flow deck surface and light, "
                                  "Lighthouse base stations, mocap stream)")
    finally:
        if link.up:
            config.stop()
            config.delete()


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
        self.last_data_s = self.t0  # time.monotonic() of the last log data
        self.target = (math.nan, math.nan, math.nan)
        self.policy = False

    def _received(self, timestamp, data, config) -> None:
        self.last_data_s = time.monotonic()
        row = {"time_s": self.last_data_s - self.t0, "firmware_ms": timestamp,
               "target_x": self.target[0], "target_y": self.target[1], "target_z": self.target[2],
               "policy": int(self.policy)}
        row.update(data)
        self.rows.append(row)

    def position(self) -> tuple[float, float, float] | None:
        """The latest state estimate (m); each log block is a row of its own, so the latest row
        need not hold it."""
        for row in reversed(self.rows):
            if "stateEstimate.x" in row:
                return row["stateEstimate.x"], row["stateEstimate.y"], row["stateEstimate.z"]
        return None

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
        # Each log block is a row of its own: plot the estimate from the rows that carry it
        # (NaN between every two points would leave no line at all).
        estimate = [(r["time_s"], r[f"stateEstimate.{axis}"]) for r in rows if f"stateEstimate.{axis}" in r]
        ax.plot([p[0] for p in estimate], [p[1] for p in estimate], label="estimate")
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
    """Fly one supervised flight (module docstring). Returns a summary dict; a failed check or
    a lost link raises FlightError (after the cleanup and with the log written)."""
    from .crtp_link import cflib_missing, new_crazyflie

    if cflib_missing():
        raise FlightError("cflib is not installed; pip install cflib")
    flight_plan((0.0, 0.0, 0.0), height=height, duration=duration, takeoff=takeoff)  # validate
    if position_source not in (*POSITION_DECKS, "mocap"):
        raise FlightError(f"--position-source must be flow, lighthouse or mocap, got "
                          f"{position_source!r}")
    out = Path(out)
    cf = new_crazyflie()
    link = _Link(cf, uri)
    try:
        cf.open_link(uri)  # cflib reports "no dongle", "no answer", ... through connection_failed
    except Exception as exc:
        link.failure = str(exc)
    if not link.settled.wait(CONNECT_TIMEOUT_S) or not link.fully_connected:
        reason = _link_error(link.failure) if link.failure else \
            f"no complete answer within {CONNECT_TIMEOUT_S:.0f} s"
        cf.close_link()
        raise FlightError(f"cannot connect to {uri}: {reason} (check the Crazyradio or USB cable, "
                          f"the URI, and that the Crazyflie is on)")
    log = None
    summary: dict[str, Any] = {"uri": uri, "completed": False}
    try:
        summary["app"] = preflight(cf, position_source)
        progress(f"nanofly app found: {summary['app']}")
        missing = sorted(set(STOCK_PARAMS_USED) - _param_names(cf)) + sorted(
            name for name in STOCK_LOGS_USED if name not in _log_names(cf, name.split(".")[0]))
        if missing:
            raise FlightError(f"this firmware lacks {', '.join(missing)}: build it with the Kalman "
                              f"estimator (the stock default for the Crazyflie 2.1)")
        # Confirmed before arming: the arming request must not overtake them.
        _set_param(cf, "stabilizer.estimator", ESTIMATOR_KALMAN)
        _set_param(cf, "nanofly.enable", 0)
        _set_param(cf, "stabilizer.controller", CONTROLLER_OOT)
        progress("waiting for the position estimate to settle ...")
        _wait_for_estimator(cf, link)
        log = FlightLog(cf)
        log.start()
        deadline = time.monotonic() + 1.0
        while log.position() is None and time.monotonic() < deadline:
            link.check(log.last_data_s)
            time.sleep(0.02)
        start = log.position()
        if start is None:  # never guess the start: off the origin it would be a jump
            raise FlightError("no state estimate (stateEstimate.x/y/z) in the log within 1 s")
        plan = flight_plan(start, height=height, duration=duration, takeoff=takeoff)
        _arm(cf, True)
        time.sleep(0.2)
        policy_on = plan[0].policy
        if policy_on:  # --takeoff policy: on before the first setpoint (no stream to keep up yet)
            _set_param(cf, "nanofly.enable", 1)
        phase = None
        t0 = time.monotonic()
        for sp in plan:
            link.check(log.last_data_s)
            if sp.phase != phase:
                phase = sp.phase
                progress(f"{phase} ({sp.x:+.2f}, {sp.y:+.2f}, {sp.z:+.2f}) m")
            if sp.policy != policy_on:
                # Not waited for: the setpoint stream must not pause. Written in order after
                # the setpoints before it, echoed within a few round trips.
                _set_param(cf, "nanofly.enable", int(sp.policy), wait_s=None)
                policy_on = sp.policy
            log.target = (sp.x, sp.y, sp.z)
            log.policy = policy_on
            cf.commander.send_position_setpoint(sp.x, sp.y, sp.z, 0.0)
            delay = t0 + sp.t + 1.0 / SETPOINT_RATE_HZ - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        summary["completed"] = True
    except FlightError as exc:
        if log is not None:  # written below, on the way out
            exc.args = (f"{exc} (flight log: {out / 'flight.csv'})",)
        raise
    finally:
        # Whatever happened: policy off, motors stopped, disarmed, link closed. The stop and the
        # disarm go out at once; the param write is then given a moment to be sent and echoed
        # (closing the link drops cflib's queue of pending param writes).
        disabled = None
        if cf.link is not None and cf.param.is_updated:
            try:
                disabled = _set_param(cf, "nanofly.enable", 0, wait_s=None)
            except Exception:
                pass
        for action in (cf.commander.send_stop_setpoint,
                       cf.commander.send_notify_setpoint_stop,
                       lambda: _arm(cf, False)):
            try:
                action()
            except Exception:
                pass
        if disabled is not None and link.up:
            disabled.wait(0.5)
        if log is not None:
            if link.up:
                log.stop()
            summary["log"] = str(log.write(out))
            png = plot_flight(log.rows, out / "flight.png")
            summary["plot"] = str(png) if png else None
            summary["log_rows"] = len(log.rows)
        cf.close_link()
    return summary
