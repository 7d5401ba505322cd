"""`nanofly crazyflie fly`: the flight plan, the pre-flight refusals and the link errors, through
cflib's real client code (no Crazyflie is attached here; what only a flight shows is listed in
docs/crazyflie.md)."""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
import threading
import time
from pathlib import Path

import pytest

from nanofly.firmware_bridge import crazyflie_fly as flight
from nanofly.firmware_bridge import crazyflie_link_sim as link_sim

APP_SOURCE = Path(__file__).resolve().parents[1] / "firmware_bridge" / "crazyflie" / "src" / "nanofly_app.c"


def test_flight_plan_pid_takeoff_policy_hover_pid_landing():
    start = (0.3, -0.2, 0.05)
    plan = flight.flight_plan(start, height=0.5, duration=4.0)
    phases = [sp.phase for sp in plan]
    # phases in order, each one contiguous
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["takeoff", "settle", "policy", "settle", "landing"]
    policy = [sp for sp in plan if sp.policy]
    assert policy and all(sp.phase == "policy" for sp in policy)
    assert len(policy) == round(4.0 * flight.SETPOINT_RATE_HZ)
    assert all(sp.z == pytest.approx(0.55) and (sp.x, sp.y) == start[:2] for sp in policy)
    # setpoints evenly spaced and well inside the app's 200 ms timeout
    gaps = [b.t - a.t for a, b in zip(plan, plan[1:])]
    assert max(gaps) == pytest.approx(1.0 / flight.SETPOINT_RATE_HZ)
    assert max(gaps) < 0.2
    # ramps are monotonic and end on the ground point
    climb = [sp.z for sp in plan if sp.phase == "takeoff"]
    assert climb == sorted(climb) and climb[-1] == pytest.approx(0.55)
    descent = [sp.z for sp in plan if sp.phase == "landing"]
    assert descent == sorted(descent, reverse=True) and descent[-1] == pytest.approx(0.05)


def test_flight_plan_policy_takeoff_commands_the_hover_point_at_once():
    plan = flight.flight_plan((0.0, 0.0, 0.0), height=0.4, duration=1.0, takeoff="policy")
    assert plan[0].policy and plan[0].z == pytest.approx(0.4)
    assert not plan[-1].policy and plan[-1].z == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"height": 0.0, "duration": 5.0}, "--height"),
    ({"height": math.nan, "duration": 5.0}, "--height"),
    ({"height": 0.5, "duration": -1.0}, "--duration"),
    ({"height": 0.5, "duration": 5.0, "takeoff": "yolo"}, "--takeoff"),
])
def test_flight_plan_rejects_bad_arguments(kwargs, words):
    with pytest.raises(flight.FlightError, match=re.escape(words)):
        flight.flight_plan((0.0, 0.0, 0.0), **kwargs)


def test_no_radio_is_a_one_line_error_from_cflib(capsys):
    """cflib's real radio driver, with no Crazyradio attached: one line, nothing flown."""
    pytest.importorskip("cflib")
    with pytest.raises(flight.FlightError) as info:
        flight.fly("radio://0/80/2M/E7E7E7E7E7", duration=1.0, out=Path("unused"))
    message = str(info.value)
    assert "\n" not in message
    assert "radio://0/80/2M/E7E7E7E7E7" in message and "Crazyradio" in message
    assert "Traceback" not in capsys.readouterr().err


class _FakeToc:
    def __init__(self, names):
        self.toc = {}
        for full in names:
            group, name = full.split(".")
            self.toc.setdefault(group, {})[name] = object()


class _Params:
    def __init__(self, values):
        self.values = values
        self.toc = _FakeToc(values)

    def get_value(self, name):
        return self.values[name]


class _Cf:
    def __init__(self, values):
        self.param = _Params(values)


def test_preflight_refusals():
    """The checks run on the TOC cflib downloads; a stand-in TOC carries the names here."""
    with pytest.raises(flight.FlightError, match="does not run the nanofly app"):
        flight.preflight(_Cf({"deck.bcFlow2": "1"}), "flow")
    with pytest.raises(flight.FlightError, match="refused its model"):
        flight.preflight(_Cf({"nanofly.enable": "0", "nanofly.modelStatus": "-4",
                              "deck.bcFlow2": "1"}), "flow")
    with pytest.raises(flight.FlightError, match="no flow deck"):
        flight.preflight(_Cf({"nanofly.enable": "0", "nanofly.modelStatus": "0",
                              "deck.bcFlow2": "0"}), "flow")
    info = flight.preflight(_Cf({"nanofly.enable": "0", "nanofly.modelStatus": "0"}), "mocap")
    assert info["nanofly.enable"] == "0"


def test_the_params_the_flight_uses_exist_in_the_app():
    """The flight sets and reads params by name: they must be the ones the app declares."""
    if not APP_SOURCE.exists():
        pytest.fail(f"{APP_SOURCE} is missing")
    source = APP_SOURCE.read_text()
    group = re.search(r"PARAM_GROUP_START\(nanofly\)(.*?)PARAM_GROUP_STOP\(nanofly\)", source, re.S)
    assert group, "no param group nanofly in the app"
    declared = set(re.findall(r"PARAM_ADD(?:_CORE)?\([^,]+,\s*(\w+)\s*,", group.group(1)))
    assert {"enable", "modelStatus"} <= declared


# --- fly() end to end: cflib's real client code against a CRTP peer over UDP -----------------
# crazyflie_link_sim answers as the firmware's link, param, log, supervisor and commander
# services do, with the app's param/log names from its C source; it records what arrives. It is
# a protocol peer with a kinematic stand-in for the estimate, not a flight simulator.


def _index(events, kind, name=None, value=None, after=-1):
    """Position in ``events`` of the first match after ``after`` (None if there is none)."""
    for i, e in enumerate(events):
        if i > after and e.kind == kind and (name is None or e.name == name) and \
                (value is None or e.value == value):
            return i
    return None


def test_fly_through_cflib_against_the_link_peer(tmp_path, monkeypatch):
    pytest.importorskip("cflib")
    monkeypatch.setenv("HOME", str(tmp_path))  # cflib's TOC cache goes under ~/.cache
    start = (0.4, -0.3, 0.0)  # off the origin, as with Lighthouse: the plan must start here
    crc = 0xDEADBEEF
    with link_sim.CrazyflieLinkPeer(start_position=start,
                                    log_values={"nanofly.modelCrc": crc, "nanofly.inferUs": 321}) as peer:
        summary = flight.fly(peer.uri, height=0.3, duration=1.0, takeoff="pid",
                             position_source="flow", out=tmp_path / "flight", progress=lambda _: None)
        events = list(peer.events)
    assert summary["completed"]
    assert json.loads(json.dumps(summary)) == summary  # what `fly --json` prints

    # Kalman and the out-of-tree controller, confirmed before the arming request
    arm_on = _index(events, "arm", value=True)
    assert arm_on is not None
    assert _index(events, "param", "stabilizer.estimator", flight.ESTIMATOR_KALMAN) < arm_on
    assert _index(events, "param", "stabilizer.controller", flight.CONTROLLER_OOT) < arm_on
    assert _index(events, "param", "kalman.resetEstimation", 1) < arm_on
    assert _index(events, "setpoint", "position") > arm_on

    # the policy on after the take-off and settle, off again before the landing
    on = _index(events, "param", "nanofly.enable", 1)
    off = _index(events, "param", "nanofly.enable", 0, after=on)
    assert on is not None and off is not None
    assert _index(events, "param", "nanofly.enable", 1, after=on) is None  # enabled once
    hover_z = start[2] + 0.3
    setpoints = [(i, e) for i, e in enumerate(events) if e.kind == "setpoint" and e.name == "position"]
    before = [e.value[2] for i, e in setpoints if i < on]
    during = [e for i, e in setpoints if on < i < off]
    after = [e.value[2] for i, e in setpoints if i > off]
    assert before == sorted(before) and before[0] < start[2] + 0.01  # the climb ...
    assert before[-1] == pytest.approx(hover_z, abs=1e-6)              # ... done before enabling
    assert sum(z == pytest.approx(hover_z, abs=1e-6) for z in before) >= flight.SETTLE_S * 40
    assert during and all(e.value[2] == pytest.approx(hover_z, abs=1e-6) for e in during)
    assert after[0] == pytest.approx(hover_z, abs=1e-6)                # disabled at the hover point,
    assert after == sorted(after, reverse=True)                        # then the landing
    assert after[-1] == pytest.approx(start[2], abs=1e-6)
    assert all(e.value[:2] == pytest.approx(start[:2], abs=1e-6) for _, e in setpoints)

    # position setpoints every ~20 ms while the policy flies, never 200 ms apart
    times = [e.t for e in during]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 0.2
    assert statistics.median(gaps) == pytest.approx(1.0 / flight.SETPOINT_RATE_HZ, abs=0.005)
    assert events[off].t - events[on].t == pytest.approx(1.0, abs=0.25)

    # then a stop setpoint and a disarm, and no position setpoint after the stop
    last_setpoint = setpoints[-1][0]
    stop = _index(events, "setpoint", "stop", after=last_setpoint)
    disarm = _index(events, "arm", value=False, after=last_setpoint)
    assert stop is not None and disarm is not None

    # the nanofly log group (the app's declared names) and the estimate, in flight.csv
    _, app_logs = link_sim.app_declarations()
    nanofly_names = [f"{g}.{n}" for g, n, _ in app_logs if g == "nanofly"]
    with open(summary["log"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(nanofly_names) <= set(rows[0])
    crc_rows = [r for r in rows if r["nanofly.modelCrc"]]
    assert len(crc_rows) > 300  # 100 Hz over the ~8 s flight
    assert {int(r["nanofly.modelCrc"]) for r in crc_rows} == {crc}  # uint32 through cflib
    assert {int(r["nanofly.inferUs"]) for r in rows if r["nanofly.inferUs"]} == {321}
    z = [float(r["stateEstimate.z"]) for r in rows if r["stateEstimate.z"]]
    assert max(z) == pytest.approx(hover_z, abs=0.02)
    assert any(r["policy"] == "1" for r in rows)
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the TOC CRCs key cflib's cache
    cache = tmp_path / ".cache" / "nanofly" / "cflib"
    assert (cache / f"{peer.param_toc.crc:08X}.json").exists()
    assert (cache / f"{peer.log_toc.crc:08X}.json").exists()


def test_fly_ends_with_a_flight_error_when_the_link_goes_quiet(tmp_path, monkeypatch):
    """The Crazyflie stops answering and logging 0.8 s after arming (cflib's UDP driver reports
    nothing, as a link that just goes quiet): fly() ends in bounded time with one line, after
    the cleanup, with the log written. (A link that cflib reports lost: the CLI test below.)"""
    pytest.importorskip("cflib")
    monkeypatch.setenv("HOME", str(tmp_path))
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = flight.fly(peer.uri, height=0.3, duration=1.0, takeoff="policy",
                                            out=tmp_path / "flight", progress=lambda _: None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    with link_sim.CrazyflieLinkPeer(fail_after_arming_s=0.8, failure="silent") as peer:
        started = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=20.0)
        elapsed = time.monotonic() - started
        events = list(peer.events)
    assert not thread.is_alive(), "fly() hung after the link went quiet"
    error = outcome.get("error")
    assert isinstance(error, flight.FlightError), outcome
    message = str(error)
    assert "\n" not in message and "lost the link" in message and peer.uri in message
    assert elapsed < 12.0
    assert (tmp_path / "flight" / "flight.csv").exists()  # the finally block ran
    # --takeoff policy: the policy is on before the first setpoint, which is the hover point
    on = _index(events, "param", "nanofly.enable", 1)
    first = _index(events, "setpoint", "position")
    assert on is not None and on < first and events[first].value[2] == pytest.approx(0.3, abs=1e-6)
    # the peer still hears: the setpoints stopped and the cleanup went out after the failure
    assert peer.failed_at is not None
    late = [e for e in events if e.t > peer.failed_at]
    last_position = max(e.t for e in events if e.kind == "setpoint" and e.name == "position")
    assert last_position - peer.failed_at < flight.LINK_TIMEOUT_S + 0.3
    assert any(e.kind == "setpoint" and e.name == "stop" for e in late)
    assert any(e.kind == "arm" and e.value is False for e in late)
    assert any(e.kind == "param" and e.name == "nanofly.enable" and e.value == 0 for e in late)


def test_link_peer_stock_names_and_enums_match_the_firmware(crazyflie_base):
    """The peer's stock params/logs carry the firmware's declared types, and the flight's
    estimator/controller numbers are the firmware's enum values (release-dependent)."""
    src = Path(crazyflie_base) / "src"
    wanted = {(g, n) for g, n, _ in link_sim.STOCK_PARAMS + link_sim.STOCK_LOGS}
    declared_params, declared_logs = {}, {}
    for path in src.rglob("*.c"):
        text = path.read_text(errors="replace")
        if not any(f"{n}," in text for _, n in wanted):
            continue
        try:
            params, logs = link_sim.parse_toc_declarations(text, path.name)
        except ValueError:
            continue  # a file with type macros of its own; the names we need are checked below
        declared_params.update({(g, n): t for g, n, t in params})
        declared_logs.update({(g, n): t for g, n, t in logs})
    for group, name, type_ in link_sim.STOCK_PARAMS:
        assert declared_params.get((group, name)) == type_, f"param {group}.{name}"
    for group, name, type_ in link_sim.STOCK_LOGS:
        assert declared_logs.get((group, name)) == type_, f"log {group}.{name}"

    def enum_index(header, member):
        body = re.search(r"typedef enum\s*\{(.*?)\}", (src / header).read_text(), re.S).group(1)
        names = re.findall(r"^\s*(\w+)\s*(?:=\s*\d+\s*)?,", body, re.M)
        return names.index(member)

    assert enum_index("modules/interface/controller/controller.h", "ControllerTypeOot") == flight.CONTROLLER_OOT
    assert enum_index("modules/interface/estimator/estimator.h", "StateEstimatorTypeKalman") == flight.ESTIMATOR_KALMAN


def test_cli_fly_one_line_errors(tmp_path, monkeypatch, capsys):
    """`nanofly crazyflie fly`: a link that cflib reports lost mid-flight (the Crazyflie's socket
    closes 0.8 s after arming), bad input and an unreachable Crazyflie are each one line on
    stderr with exit status 2."""
    pytest.importorskip("cflib")
    from nanofly.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "flight"
    with link_sim.CrazyflieLinkPeer(fail_after_arming_s=0.8, failure="close") as peer:
        rc = main(["crazyflie", "fly", "--uri", peer.uri, "--height", "0.3", "--duration", "1",
                   "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"error: lost the link to {peer.uri}") and "Connection refused" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert (out / "flight.csv").exists() and str(out / "flight.csv") in err[-1]

    assert main(["crazyflie", "fly", "--uri", peer.uri, "--height", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --height") and "\n" not in err

    # the peer is closed: nothing listens on its port any more
    assert main(["crazyflie", "fly", "--uri", peer.uri, "--out", str(tmp_path / "unused")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot connect to {peer.uri}") and "\n" not in err
