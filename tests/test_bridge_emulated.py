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
from nanofly.firmware_bridge import testing as T
from nanofly.firmware_bridge.emulator import EmulatedBoard, qemu_missing
from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

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


def test_flash_int8_status_and_infer_match_host_c_runtime(board, exports, obs):
    export_dir = exports["dir"]
    blob = (export_dir / "policy_int8.bin").read_bytes()
    rc, out = cli("flash", str(export_dir), "--port", board.url, "--format", "int8", "--json")
    assert rc == 0, out
    result = json.loads(out)
    assert result["activated"] and result["size_bytes"] == len(blob)
    # protocol overhead of the whole upload (both directions, every frame) per model byte
    assert result["overhead"] <= 1.10

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
        assert result.activated and result.overhead <= 1.10
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
            assert err.value.code == P.ERR_ARMED
        finally:
            c.disarm()
        assert c.status().active_crc == before.active_crc
        c.activate(P.model_crc(blob))  # disarmed, the same request goes through
        assert c.status().active_crc == P.model_crc(blob)


def test_firmware_sleeps_when_idle(board):
    """WFI: an idle board costs QEMU (nearly) no CPU, which a busy-polling firmware would not."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s() -> float:
        fields = open(f"/proc/{board.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = cpu_s()
    time.sleep(1.0)
    assert cpu_s() - before < 0.5


def test_cli_emulate_prints_url_and_stops_qemu(tmp_path):
    import subprocess
    import sys

    from nanofly.firmware_bridge.client import BridgeClient

    proc = subprocess.Popen([sys.executable, "-m", "nanofly", "firmware", "emulate", "--seconds", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
        with BridgeClient(url) as c:
            assert c.hello().observation_dim == 146
        qemu_pid = int(proc.stderr.readline().split("(pid ")[1].split(")")[0])
        proc.send_signal(__import__("signal").SIGINT)  # Ctrl+C
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
        pid = backend._board.proc.pid
        np.testing.assert_allclose(backend(obs[:4]), T.host_reference(exports["dir"], "int8", obs[:4]),
                                   rtol=0, atol=1e-6)
        assert backend.info()["emulated"] and backend.upload is not None
    finally:
        backend.close()
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}")
