"""End to end on the emulated STM32F405 (QEMU netduinoplus2): build the firmware, flash an
int8 export with the CLI, read it back with `nanofly firmware status`, and check that the
board's actions equal the host C runtime's; f32 too; PIL backend; dead man's switch.

One emulated board is shared by the whole module."""
from __future__ import annotations

import contextlib
import io
import json
import os
import time

import numpy as np
import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.emulator import EmulatedBoard, qemu_missing
from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

from helpers import bridge as T

pytestmark = pytest.mark.skipif(bool(toolchain_missing() or qemu_missing()),
                                reason=f"{toolchain_missing() or qemu_missing()}")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    work = tmp_path_factory.mktemp("bridge_e2e")
    policy = T.test_policy(work, seed=0)
    return {"policy": policy, "dir": T.export(policy, work / "export", seed=0)}


@pytest.fixture(scope="module")
def board():
    elf = build_firmware()
    with EmulatedBoard(elf, lifetime_s=600) as b:
        yield b


@pytest.fixture(scope="module")
def obs():
    return T.observations(48, seed=1)


def cli(*argv) -> tuple[int, str]:
    from nanofly.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()


def client(board, **kw):
    from nanofly.firmware_bridge.client import BridgeClient

    return BridgeClient(board.url, timeout_s=kw.pop("timeout_s", 1.0), **kw)


def test_hello_reports_capabilities(board):
    with client(board) as c:
        h = c.hello()
    assert h.protocol_version == P.PROTOCOL_VERSION
    assert (h.observation_dim, h.action_dim) == (146, 4)
    assert set(h.formats) == {"f32", "int8"}
    assert h.max_payload == P.MAX_PAYLOAD and h.max_model_bytes >= 56_892  # a 146-64-64-4 f32 blob
    assert h.emulated and h.sysclk_hz == 168_000_000
    assert h.counter_kind == P.COUNTER_TIM5_TICKS
    assert h.heartbeat_timeout_ms == 200
    # INFER_STATE: [18 state | 32 x 4 action history], histories in the 56 KiB staging slot
    assert (h.state_dim, h.history_length) == (18, 32)
    assert h.max_histories == 56 * 1024 // 512 and h.state_rows_per_frame() == 27


def test_flash_int8_status_and_infer_match_host_c_runtime(board, exports, obs):
    export_dir = exports["dir"]
    blob = (export_dir / "policy_int8.bin").read_bytes()
    rc, out = cli("flash", str(export_dir), "--port", board.url, "--format", "int8", "--json")
    assert rc == 0, out
    result = json.loads(out)
    assert result["activated"] and result["size_bytes"] == len(blob)
    # protocol overhead of the whole upload (both directions, every frame) per model byte
    T.assert_upload_overhead(result)

    rc, out = cli("firmware", "status", "--port", board.url, "--json")
    assert rc == 0
    status = json.loads(out)["status"]
    assert status["active_format"] == "int8"
    assert status["active_crc"] == P.model_crc(blob) == int.from_bytes(blob[-4:], "little")
    assert status["active_size"] == len(blob)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert int(manifest["blobs"]["int8"]["crc32"], 16) == status["active_crc"]

    expected = T.host_reference(export_dir, "int8", obs)
    with client(board) as c:
        got = []
        for row in obs:
            action, ticks, crc = c.infer(row)
            assert crc == status["active_crc"] and ticks > 1000
            got.append(action)
    np.testing.assert_allclose(np.array(got), expected, rtol=0, atol=1e-6)


def test_status_text_output(board):
    rc, out = cli("firmware", "status", "--port", board.url)
    assert rc == 0
    assert "active model: int8 model" in out and "146 -> action 4" in out


def test_flash_f32_matches_host_c_f32(board, exports, obs):
    from nanofly.firmware_bridge.client import read_export_blob, upload_model

    blob, model_id = read_export_blob(exports["dir"], "f32")
    with client(board) as c:
        result = upload_model(c, blob, "f32", model_id=model_id)
        assert result.activated
        T.assert_upload_overhead(result.as_dict())
        got = np.array([c.infer(row)[0] for row in obs[:16]])
    np.testing.assert_allclose(got, T.host_reference(exports["dir"], "f32", obs[:16]), rtol=0, atol=1e-6)


def test_pil_backend_uploads_once_and_matches(board, exports, obs):
    from nanofly.firmware_bridge.pil import make_backend

    expected = T.host_reference(exports["dir"], "int8", obs[:8])
    int8_crc = P.model_crc((exports["dir"] / "policy_int8.bin").read_bytes())
    with client(board) as c:
        was_active = c.status().active_crc == int8_crc
    with make_backend(f"pil:{board.url}", exports["dir"]) as backend:
        assert (backend.upload is None) == was_active
        actions = backend(obs[:8])
        info = backend.info()
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    assert actions.shape == (8, 4) and actions.dtype == np.float32
    assert info["steps"] == 8 and info["round_trip_s"]["median"] > 0
    assert info["instructions_per_inference"]["min"] > 1000
    with make_backend(board.url, exports["dir"]) as again:
        assert again.upload is None  # same CRC already active: no upload
        np.testing.assert_allclose(again(obs[0]), expected[0], rtol=0, atol=1e-6)
    assert board.alive()  # closing a backend on a given URL leaves the board running


def _next_obs(state, prev_obs, action):
    """[state | clip(action), previous history minus its oldest action]."""
    clipped = np.clip(action, -1, 1).astype(np.float32)
    return np.concatenate([state, clipped, prev_obs[18:-4]]).astype(np.float32)


def test_infer_state_keeps_histories_on_board(board, exports, obs):
    from nanofly.firmware_bridge.client import read_export_blob, upload_model

    blob, model_id = read_export_blob(exports["dir"], "int8")
    with client(board) as c:
        h = c.hello()
        upload_model(c, blob, "int8", model_id=model_id)  # an upload forgets every history
        with pytest.raises(P.DeviceError) as e:
            c.infer_state([3], obs[:1, :18])
        assert e.value.code == P.ERR_HISTORY and e.value.detail1 == P.HIST_NOT_LOADED
        assert "full INFER" in str(e.value)
        with pytest.raises(P.DeviceError) as e:
            c.infer_state([h.max_histories], obs[:1, :18])
        assert e.value.detail1 == P.HIST_RANGE

        # full INFER loads env 3's history; INFER_STATE continues it with the state part only
        o = [obs[0]]
        a = [c.infer(o[0], env=3)[0]]
        for k in (1, 2):
            o.append(_next_obs(obs[k, :18], o[-1], a[-1]))
            actions, ticks, crc = c.infer_state([3], obs[k:k + 1, :18])
            assert ticks[0] > 1000 and crc == P.model_crc(blob)
            a.append(actions[0])
        with pytest.raises(P.DeviceError) as e:  # refused whole: changes nothing
            c.infer_state([3, 3], obs[3:5, :18])
        assert e.value.detail1 == P.HIST_DUPLICATE

        # a repeated frame (lost reply, retry) is answered from the cache: one step, not two
        before = c.status()
        payload = P.infer_state_request([3], obs[3:4, :18].tobytes())
        first = c.request(P.CMD_INFER_STATE, payload)
        c._seq = (c._seq - 1) & 0xFF
        assert c.request(P.CMD_INFER_STATE, payload) == first
        after = c.status()
        assert after.inferences == before.inferences + 1
        assert after.repeats_answered == before.repeats_answered + 1
        o.append(_next_obs(obs[3, :18], o[-1], a[-1]))
        a.append(np.frombuffer(first, "<f4", count=4))
        o.append(_next_obs(obs[4, :18], o[-1], a[-1]))
        a.append(c.infer_state([3], obs[4:5, :18])[0][0])
        np.testing.assert_allclose(np.array(a), T.host_reference(exports["dir"], "int8", np.array(o)),
                                   rtol=0, atol=1e-6)

        # an upload that starts occupies the staging slot: histories unavailable, INFER works
        c.begin(len(blob), P.model_crc(blob), P.FORMAT_INT8, model_id + 1)
        with pytest.raises(P.DeviceError) as e:
            c.infer_state([3], obs[:1, :18])
        assert e.value.detail1 == P.HIST_BUSY
        np.testing.assert_allclose(c.infer(obs[5], env=3)[0],
                                   T.host_reference(exports["dir"], "int8", obs[5:6])[0], rtol=0, atol=1e-6)
        upload_model(c, blob, "int8", model_id=model_id)
        assert c.status().staging_state == "empty"


def test_pil_compact_rollout_is_bit_identical_to_full_infer(board, exports):
    from nanofly.firmware_bridge.pil import make_backend

    runs = {}
    for compact in (True, False):
        with make_backend(board.url, exports["dir"], compact=compact, state_rows_per_frame=3) as backend:
            runs[compact] = T.closed_loop_rollout(backend, n_envs=5, steps=24, reset_every=5, seed=4)
            info = backend.info()["compact"]
        if compact:
            resets = 24 // 5 - (24 % 5 == 0)
            assert info["rows_full_infer"] == 5 + resets  # first step and each new episode
            assert info["rows_infer_state"] == 5 * 24 - 5 - resets
        else:
            assert info["rows_infer_state"] == 0
    (obs_c, act_c), (obs_f, act_f) = runs[True], runs[False]
    assert np.array_equal(act_c.view(np.uint32), act_f.view(np.uint32))
    assert np.array_equal(obs_c.view(np.uint32), obs_f.view(np.uint32))
    expected = T.host_reference(exports["dir"], "int8", obs_c.reshape(-1, 146))
    np.testing.assert_allclose(act_c.reshape(-1, 4), expected, rtol=0, atol=1e-6)


def test_pil_compact_follows_the_simulator(board, exports):
    """In the simulator the observation's history is the clipped actions, bit for bit: after
    the first step every row goes compact (except rows whose episode ended)."""
    from nanofly.export.backends import make_backend as make_host
    from nanofly.firmware_bridge.pil import make_backend
    from nanofly.sim.env import MDPConfig, VecEnv

    env = VecEnv(3, "crazyflie_paper", seed=5, config=MDPConfig())
    obs, _ = env.reset()
    host = make_host("c-int8", str(exports["dir"]))
    new_episodes = 0
    with make_backend(board.url, exports["dir"]) as backend:
        for t in range(20):
            actions = backend(obs)
            np.testing.assert_allclose(actions, host(obs), rtol=0, atol=1e-6)
            obs, _, terminated, truncated, _ = env.step(actions)
            new_episodes += int(np.sum(terminated | truncated)) if t < 19 else 0
        info = backend.info()["compact"]
    assert info["rows_full_infer"] == 3 + new_episodes
    assert info["rows_infer_state"] == 60 - 3 - new_episodes


def test_pil_refuses_compact_for_another_layout():
    from nanofly.firmware_bridge.pil import PILBackend

    backend = object.__new__(PILBackend)
    hello = dict(state_dim=18, history_length=32, max_histories=112, max_state_rows=27,
                 observation_dim=146, action_dim=4, max_payload=2048, firmware_version="0.2.0")
    backend.hello = type("H", (), {**hello, "state_rows_per_frame": lambda self: 27})()
    assert backend._compact_support(146) is None
    assert "100 inputs" in backend._compact_support(100)
    backend.hello.history_length = 0
    assert "no INFER_STATE" in backend._compact_support(146)


def test_infer_refuses_nonfinite_observation(board, obs):
    bad = obs[0].copy()
    bad[17] = np.nan
    with client(board) as c:
        with pytest.raises(P.DeviceError) as err:
            c.infer(bad)
        assert err.value.code == P.ERR_NONFINITE and err.value.detail0 == 17
        with pytest.raises(P.DeviceError) as err:
            c.infer(obs[0][:100])
        assert err.value.code == P.ERR_LENGTH


def test_dead_mans_switch_zeroes_motors_within_200ms(board, obs):
    with client(board) as c:
        c.arm()
        action, _, _ = c.infer(obs[3])
        expected = np.clip((action.astype(np.float64) + 1) / 2, 0, 1)
        samples = []
        for _ in range(6):  # heartbeats every ~40 ms keep it armed
            c.heartbeat()
            time.sleep(0.04)
            samples.append(c.status())
        alive = samples[-1]
        assert alive.armed and not alive.failsafe_tripped
        np.testing.assert_allclose(alive.motors, expected, atol=1e-6)
        # heartbeats stop: poll STATUS (which is not a heartbeat) until well past 200 ms
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = c.status()
            samples.append(s)
            if s.failsafe_tripped and s.ms_since_heartbeat > 300:
                break
            time.sleep(0.005)
        final = samples[-1]
        assert final.failsafe_tripped and not final.armed
        assert final.failsafe_trip_ms - final.last_heartbeat_ms <= 200
        assert final.motors == (0.0, 0.0, 0.0, 0.0)
        for s in samples:  # emulated time, each sample consistent (read with IRQs masked)
            if s.ms_since_heartbeat >= 200:
                assert not s.armed and s.motors == (0.0, 0.0, 0.0, 0.0), s
            else:
                assert s.armed and max(s.motors) > 0, s
        assert any(s.ms_since_heartbeat < 200 for s in samples[6:]), "no sample before the trip"
        # latched: a late heartbeat does not re-arm
        assert not c.heartbeat()["armed"]


def test_activate_refused_while_armed(board):
    from nanofly.firmware_bridge.client import upload_model

    blob = T.f32_blob((146, 8, 4), seed=9)  # small, valid, not yet on the board
    with client(board) as c:
        before = c.status()
        upload_model(c, blob, "f32", model_id=5, activate=False)  # staged and verified
        assert c.status().staging_state == "verified"
        c.arm()
        try:
            with pytest.raises(P.DeviceError) as err:
                c.activate(P.model_crc(blob))
            assert err.value.code == P.ERR_BUSY and err.value.detail0 == P.BUSY_ARMED
            assert "DISARM" in str(err.value)
        finally:
            c.disarm()
        assert c.status().active_crc == before.active_crc
        c.activate(P.model_crc(blob))  # disarmed, the same request goes through
        assert c.status().active_crc == P.model_crc(blob)


def test_firmware_sleeps_when_idle(board):
    """WFI: an idle board costs QEMU (nearly) no CPU, which a busy-polling firmware would not."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s() -> float:
        fields = open(f"/proc/{board.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = cpu_s()
    time.sleep(1.0)
    assert cpu_s() - before < 0.5


def test_cli_emulate_prints_url_and_stops_qemu(tmp_path):
    import signal
    import subprocess
    import sys

    from nanofly.firmware_bridge.client import BridgeClient

    # SIGINT back to its default in the child: a test run started as a background job
    # (`cmd &`) inherits SIGINT ignored, and Python then installs no Ctrl+C handler.
    proc = subprocess.Popen([sys.executable, "-m", "nanofly", "firmware", "emulate", "--seconds", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
        with BridgeClient(url) as c:
            assert c.hello().observation_dim == 146
        qemu_pid = int(proc.stderr.readline().split("(pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        assert proc.wait(timeout=10) == 0
        time.sleep(0.2)
        assert not os.path.exists(f"/proc/{qemu_pid}") or "zombie" in open(f"/proc/{qemu_pid}/status").read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pil_emulate_starts_and_stops_its_own_board(exports, obs):
    from nanofly.firmware_bridge.pil import make_backend

    backend = make_backend("pil:emulate", exports["dir"])
    try:
        pid = backend._board.pid
        np.testing.assert_allclose(backend(obs[:4]), T.host_reference(exports["dir"], "int8", obs[:4]),
                                   rtol=0, atol=1e-6)
        assert backend.info()["emulated"] and backend.upload is not None
    finally:
        backend.close()
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}")


def test_flash_warns_when_the_format_exceeds_its_error_bound(board, tmp_path, capsys):
    """An export whose int8 error exceeds its bound (large weights saturate the int8 grid):
    `flash --format int8` says so and what to do (it still flashes: the closed loop may be
    fine); `--format f32` of the same export, within its bound, flashes without a word."""
    from helpers.exports import quick_export, write_policy

    policy = write_policy(tmp_path / "big.pt", sizes=(146, 16, 4), seed=0, weight_scale=6.0)
    manifest = quick_export(policy, tmp_path / "export", num_calibration=256, num_eval=128)
    assert not manifest["errors"]["c_int8"]["within_bound"]
    assert manifest["errors"]["c_f32"]["within_bound"]
    capsys.readouterr()
    rc, out = cli("flash", str(tmp_path / "export"), "--port", board.url, "--format", "int8",
                  "--json")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.startswith("warning: the int8 model's measured error"), err
    for advice in ("exceeds its bound 0.02", "--format f32", "--int8-aware-steps",
                   "--backend c-int8"):
        assert advice in err, (advice, err)
    assert json.loads(out)["warnings"] == [err.strip()[len("warning: "):]]
    rc, out = cli("flash", str(tmp_path / "export"), "--port", board.url, "--format", "f32",
                  "--json")
    assert rc == 0 and "warnings" not in json.loads(out)
    assert "warning" not in capsys.readouterr().err
