"""Link and model faults against the shared protocol core, on each transport that runs on the
host: the bridge firmware on QEMU over its UART (a TCP socket; faults injected by a TCP fault
proxy), and the Crazyflie app's link and store over the CRTP app channel through cflib (the
host stand-in of `nanofly crazyflie sitl`; the same faults applied to the app-channel byte
stream). In every case the client either recovers or reports a clear error, and afterwards the
active model is the one expected (the old one unless a new one arrived whole and verified) and
intact: STATUS shows its CRC and, where the target runs models on request (the bridge
firmware's INFER), INFER reproduces the host C runtime's actions.

One target per transport for the module; model A (seed 0) is active before each test."""
from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, LinkError, read_export_blob, upload_model
from nanofly.firmware_bridge.emulator import EmulatedBoard, qemu_missing
from nanofly.firmware_bridge.faultproxy import (Blackhole, Corrupt, Disconnect, Drop,
                                                DuplicateFrames, FaultProxy)
from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

from helpers import bridge as T


OBS = T.observations(6, seed=3)


class Model:
    def __init__(self, export_dir, fmt):
        self.dir, self.fmt = export_dir, fmt
        self.blob, self.id = read_export_blob(export_dir, fmt)
        self.crc = P.model_crc(self.blob)
        self.actions = T.host_reference(export_dir, fmt, OBS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    work = tmp_path_factory.mktemp("bridge_faults")
    a = T.export(T.random_policy(work / "a.pt", seed=0), work / "a", seed=0)
    b = T.export(T.random_policy(work / "b.pt", seed=1), work / "b", seed=0)
    return {"A": Model(a, "int8"), "B": Model(b, "int8"), "A_f32": Model(a, "f32"),
            # refused before they could run: the exporter's blob writer is enough for these
            "wide_f32": T.f32_blob((146, 128, 128, 4), seed=2),
            "dims_f32": T.f32_blob((100, 16, 4), seed=3)}


class QemuTarget:
    """The bridge firmware on QEMU: its UART is a TCP socket; faults go through a proxy."""
    infers = True

    def __init__(self, board: EmulatedBoard):
        self.board, self.url = board, board.url

    @contextlib.contextmanager
    def faulty(self, to_board=(), to_host=()):
        with FaultProxy(self.board.port, to_board=list(to_board), to_host=list(to_host)) as proxy:
            yield proxy


class AppChannelTarget:
    """The Crazyflie app's link and store on the host stand-in, over cflib's UDP driver and the
    CRTP app channel; faults act on the app channel's byte stream inside the stand-in."""
    infers = False

    def __init__(self, standin):
        self.standin, self.url = standin, standin.uri

    class _Faulty:
        def __init__(self, standin):
            self.standin, self.url = standin, standin.uri
            self.first = standin.peer.connections

        @property
        def connections(self) -> int:
            """cflib connections made since the faults were set (as the proxy counts them)."""
            return self.standin.peer.connections - self.first

    @contextlib.contextmanager
    def faulty(self, to_board=(), to_host=()):
        view = self._Faulty(self.standin)
        self.standin.set_faults(to_board, to_host)
        try:
            yield view
        finally:
            self.standin.set_faults()


@pytest.fixture(scope="module", params=["qemu-uart", "crazyflie-app-channel"])
def board(request, tmp_path_factory):
    if request.param == "qemu-uart":
        missing = toolchain_missing() or qemu_missing()
        if missing:
            pytest.skip(missing)
        with EmulatedBoard(build_firmware(), lifetime_s=600) as b:
            yield QemuTarget(b)
    else:
        pytest.importorskip("cflib")
        if shutil.which("gcc") is None:
            pytest.skip("gcc not installed: the stand-in is compiled for this host")
        from nanofly.firmware_bridge.crazyflie_standin import CrazyflieStandIn

        image = tmp_path_factory.mktemp("standin") / "flash.bin"
        with CrazyflieStandIn(image) as standin:
            yield AppChannelTarget(standin)


def connect(url, **kw) -> BridgeClient:
    kw.setdefault("timeout_s", 0.25)
    kw.setdefault("retries", 10)
    return BridgeClient(url, **kw)


def assert_active(board, model: Model) -> None:
    """STATUS shows the model active, and INFER reproduces the host C runtime's actions."""
    with connect(board.url) as c:
        s = c.status()
        assert s.active_crc == model.crc and s.active_size == len(model.blob), s
        if not board.infers:
            return
        got = np.array([c.infer(row)[0] for row in OBS])
    np.testing.assert_allclose(got, model.actions, rtol=0, atol=1e-6)


@pytest.fixture
def with_a(board, models):
    """Model A active before the test (uploaded over a clean link when it is not)."""
    a = models["A"]
    with connect(board.url) as c:
        if c.status().active_crc != a.crc:
            upload_model(c, a.blob, a.fmt, model_id=a.id)
    assert_active(board, a)
    return a


def test_corrupted_bytes_both_directions_recover(board, models, with_a):
    b = models["B"]
    to_board, to_host = Corrupt(1e-4, seed=11), Corrupt(every=250, seed=12)
    with board.faulty(to_board=[to_board], to_host=[to_host]) as proxy, connect(proxy.url) as c:
        result = upload_model(c, b.blob, b.fmt, model_id=b.id, chunk_bytes=512)
    assert to_board.count > 0 and to_host.count > 0 and result.retries > 0
    assert_active(board, b)


def test_dropped_bytes_recover(board, models, with_a):
    b = models["B"]
    to_board, to_host = Drop(1e-4, seed=21), Drop(every=250, seed=22)
    with board.faulty(to_board=[to_board], to_host=[to_host]) as proxy, connect(proxy.url) as c:
        result = upload_model(c, b.blob, b.fmt, model_id=b.id, chunk_bytes=512)
    assert to_board.count > 0 and to_host.count > 0 and result.retries > 0
    assert_active(board, b)


def test_duplicated_frames_are_answered_not_redone(board, models, with_a):
    b = models["B"]
    dup_to_board, dup_to_host = DuplicateFrames(every=1), DuplicateFrames(every=2)
    with connect(board.url) as c:
        repeats_before = c.status().repeats_answered
    with board.faulty(to_board=[dup_to_board], to_host=[dup_to_host]) as proxy, \
            connect(proxy.url) as c:
        upload_model(c, b.blob, b.fmt, model_id=b.id, chunk_bytes=1024)  # ACTIVATE arrives twice: swaps once
        assert c.stats.stale_frames > 0
        s = c.status()
    assert dup_to_board.count > 5 and s.repeats_answered > repeats_before
    assert s.staging_state == "empty"  # a second swap would have staged A back
    assert_active(board, b)


def test_truncated_upload_reports_and_keeps_active_model(board, models, with_a):
    b = models["B"]
    cut = len(b.blob) // 2
    with board.faulty(to_board=[Blackhole(after_bytes=cut)]) as proxy, \
            connect(proxy.url, timeout_s=0.2, retries=1) as c:
        with pytest.raises(LinkError, match="no reply to CHUNK"):
            upload_model(c, b.blob, b.fmt, model_id=b.id, max_reconnects=0, chunk_bytes=512)
    assert_active(board, with_a)
    with connect(board.url) as c:
        s = c.status()
        assert s.staging_state == "receiving" and 0 < s.staging_received < len(b.blob)
        with pytest.raises(P.DeviceError, match="INCOMPLETE") as err:
            c.commit()
        assert "upload the rest" in str(err.value)
        with pytest.raises(P.DeviceError, match="NOT_VERIFIED"):
            c.activate(b.crc)
    # a truncated file (consistent transfer CRC, wrong header size) fails verification
    short = T.truncated(b.blob, len(b.blob) // 2)
    with connect(board.url) as c, pytest.raises(P.DeviceError) as err:
        upload_model(c, short, "int8", model_id=1)
    assert err.value.code == P.ERR_MODEL and err.value.detail0 == -3  # NANOFLY_ERR_SIZE
    assert_active(board, with_a)


def test_disconnect_mid_upload_resumes(board, models, with_a):
    b = models["B"]
    fault = Disconnect(after_bytes=len(b.blob) // 2)
    with board.faulty(to_board=[fault]) as proxy, connect(proxy.url, timeout_s=0.3) as c:
        result = upload_model(c, b.blob, b.fmt, model_id=b.id, chunk_bytes=1024)
        assert fault.fired and proxy.connections == 2
    assert result.reconnects == 1
    # the second BEGIN resumed: the bytes sent after reconnecting are about half the model
    assert 0 < result.extra["resume_offsets"][-1] < len(b.blob)
    assert_active(board, b)


def test_wrong_transfer_crc_is_refused(board, models, with_a):
    b = models["B"]
    with connect(board.url) as c:
        c.hello()
        c.begin(len(b.blob), b.crc ^ 0x1, P.FORMAT_INT8, b.id)
        for offset in range(0, len(b.blob), 2044):
            c.chunk(offset, b.blob[offset:offset + 2044])
        with pytest.raises(P.DeviceError, match="CRC-32 mismatch") as err:
            c.commit()
        assert err.value.detail0 & 0xFFFFFFFF == b.crc
        with pytest.raises(P.DeviceError, match="NOT_VERIFIED"):
            c.activate(b.crc ^ 0x1)
    # a blob whose own CRC is stale (corrupted before sending) fails the runtime's check
    with connect(board.url) as c, pytest.raises(P.DeviceError, match="own CRC") as err:
        upload_model(c, T.with_stale_crc(b.blob), "int8", model_id=2)
    assert err.value.detail0 == -4  # NANOFLY_ERR_CRC
    assert_active(board, with_a)


def test_oversized_model_is_refused_at_begin(board, models, with_a):
    big = models["wide_f32"]
    with connect(board.url) as c:
        limit = c.hello().max_model_bytes
        assert len(big) > limit
        with pytest.raises(P.DeviceError, match="exceeds the firmware") as err:
            upload_model(c, big, "f32", model_id=3)
        assert err.value.code == P.ERR_SIZE and c.stats.bytes_sent < 200  # refused before any chunk
    assert_active(board, with_a)


def test_wrong_dimensions_are_refused(board, models, with_a):
    with connect(board.url) as c, pytest.raises(P.DeviceError, match="100 -> 4") as err:
        upload_model(c, models["dims_f32"], "f32", model_id=4)
    assert err.value.code == P.ERR_DIMS
    assert_active(board, with_a)


@pytest.mark.parametrize("key", ["A_f32", "B"])
def test_nan_weights_are_refused(board, models, with_a, key):
    model = models[key]
    with connect(board.url) as c, pytest.raises(P.DeviceError, match="NaN") as err:
        upload_model(c, T.with_nan_weight(model.blob), model.fmt, model_id=5)
    assert err.value.code == P.ERR_MODEL and err.value.detail0 == -7  # NANOFLY_ERR_NONFINITE
    assert_active(board, with_a)


def test_unknown_commands_and_bad_lengths_get_error_replies(board, with_a):
    with connect(board.url) as c:
        for ftype in (0x00, 0x42, 0x7F, 0x81, 0xFE):
            with pytest.raises(P.DeviceError, match="UNKNOWN_COMMAND"):
                c.request(ftype, b"\x01\x02")
        with pytest.raises(P.DeviceError, match="LENGTH"):
            c.request(P.CMD_HELLO, b"\x01")
        with pytest.raises(P.DeviceError, match="PROTOCOL"):
            c.request(P.CMD_HELLO, P.hello_request(version=99))
        with pytest.raises(P.DeviceError, match="STATE"):
            c.request(P.CMD_COMMIT)  # nothing being uploaded
        with pytest.raises(P.DeviceError, match="FORMAT"):
            c.begin(1000, 0, 7, 0)
    assert_active(board, with_a)


def test_garbage_flood_then_upload_works(board, models, with_a):
    b = models["B"]
    rng = np.random.default_rng(5)
    with connect(board.url) as c:
        bad_before = c.status().frames_bad
        c.send_raw(rng.bytes(16_000))                       # random bytes, zeros included
        c.send_raw(bytes(rng.integers(1, 256, 6_000, dtype=np.uint8)))  # one endless frame
        c.send_raw(P.encode_frame(P.CMD_STATUS, 1)[:-9])   # cut-off frame
        # the leading 0x00 of the next frame resynchronizes; QEMU takes ~1 s to swallow 22 KB
        s = P.Status.decode(c.request(P.CMD_STATUS, timeout_s=10))
        assert s.frames_bad > bad_before and s.frames_too_long > 0
        assert s.active_crc == with_a.crc
    assert_active(board, with_a)
    with connect(board.url) as c:
        upload_model(c, b.blob, b.fmt, model_id=b.id)
    assert_active(board, b)


def test_pil_compact_steps_survive_lost_and_duplicated_frames(board, models, with_a):
    """INFER_STATE advances on-board histories, so a retried or duplicated frame must not
    advance them twice: through duplicated requests and dropped reply bytes, every action
    still equals the host C runtime's on the very observation the rollout produced."""
    from nanofly.firmware_bridge.pil import make_backend

    if not board.infers:
        pytest.skip("INFER_STATE is a bridge firmware command; the Crazyflie app runs its model "
                    "in the stabilizer loop")
    a = models["A"]
    dup, drop = DuplicateFrames(every=3), Drop(every=300, seed=31)
    with board.faulty(to_board=[dup], to_host=[drop]) as proxy, \
            make_backend(proxy.url, a.dir, timeout_s=0.2, retries=10) as backend:
        obs, actions = T.closed_loop_rollout(backend, n_envs=4, steps=25, reset_every=9, seed=6)
        info = backend.info()
    assert dup.count > 3 and drop.count > 3 and info["link"]["retries"] > 0
    assert info["compact"]["rows_infer_state"] > 60
    expected = T.host_reference(a.dir, a.fmt, obs.reshape(-1, 146))
    np.testing.assert_allclose(actions.reshape(-1, 4), expected, rtol=0, atol=1e-6)
    assert_active(board, a)
