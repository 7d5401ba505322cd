"""Uploads through a serial link that damages 0.5 % of its bytes in both directions (each
damaged byte flipped in one bit, dropped or sent twice; faultproxy.Damage, seeded), to the
bridge firmware on QEMU over its UART (a TCP socket behind the damaging proxy).

A 2 KB chunk frame gets through such a line with probability ~0.995 ** 2070 = 3e-5, so an
upload in fixed full-size chunks gives up; the adaptive chunk size (chunking.py) must get at
least 8 of 10 uploads of the shipped int8 policy through, each verified by the board and
active with the right CRC and model id afterwards."""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import (BridgeClient, LinkError, NoReplyError,
                                            read_export_blob, upload_model)
from nanofly.firmware_bridge.emulator import EmulatedBoard, qemu_missing
from nanofly.firmware_bridge.faultproxy import Damage, FaultProxy
from nanofly.firmware_bridge.firmware import build_firmware, toolchain_missing

from helpers import bridge as T

pytestmark = pytest.mark.skipif(bool(toolchain_missing() or qemu_missing()),
                                reason=f"{toolchain_missing() or qemu_missing()}")

SHIPPED_INT8 = T.HOVER_POLICY.parents[1] / "crazyflie_hover_int8" / "policy.pt"
DAMAGE_P = 0.005
UPLOADS = 10
BOARDS = 5
TIMEOUT_S = 0.25   # per reply before a resend (the control requests; chunks adapt below it)


@pytest.fixture(scope="module")
def int8_blob(tmp_path_factory):
    if not SHIPPED_INT8.is_file():
        pytest.skip(f"{SHIPPED_INT8} not found (the shipped int8 policy)")
    export_dir = T.export(SHIPPED_INT8, tmp_path_factory.mktemp("damaged_link") / "export")
    blob, _ = read_export_blob(export_dir, "int8")
    return blob


@pytest.fixture(scope="module")
def boards():
    """Several emulated boards, so that the uploads (which mostly wait for replies that
    never come) run side by side; each board takes its uploads one after the other."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(EmulatedBoard(build_firmware(), lifetime_s=300))
               for _ in range(BOARDS)]


def active(board) -> tuple[int, int]:
    """(active model CRC, active model id), read over the clean link."""
    with BridgeClient(board.url, timeout_s=1.0) as c:
        s = c.status()
    return s.active_crc, s.active_model_id


def damaged(board, seed: int) -> tuple[FaultProxy, Damage, Damage]:
    to_board, to_host = Damage(DAMAGE_P, seed=2 * seed), Damage(DAMAGE_P, seed=2 * seed + 1)
    return FaultProxy(board.port, to_board=[to_board], to_host=[to_host]), to_board, to_host


def test_full_size_chunks_give_up_on_the_damaged_link(boards, int8_blob):
    """Today's behaviour kept as a fixed chunk (floor = maximum): no chunk gets through, the
    board counts as not answering, and the active model stays what it was."""
    board = boards[0]
    with BridgeClient(board.url, timeout_s=1.0) as c:
        upload_model(c, int8_blob, "int8", model_id=1)
    before = active(board)
    proxy, to_board, _ = damaged(board, seed=99)
    with proxy, BridgeClient(proxy.url, timeout_s=TIMEOUT_S, retries=3) as c:
        with pytest.raises(NoReplyError, match="no reply to CHUNK") as err:
            upload_model(c, int8_blob, "int8", model_id=2, min_chunk_bytes=4096, max_reconnects=0)
    assert "2044-byte chunks in a row" in str(err.value) and to_board.count > 0
    assert active(board) == before


def upload_through_damage(board, blob: bytes, i: int) -> dict:
    """Upload ``i`` (model id 200 + i) through a fresh damaging proxy (seeds 2i, 2i + 1), then
    read the active model over the clean link."""
    model_id = 200 + i
    _, previous_id = active(board)
    proxy, to_board, to_host = damaged(board, seed=i)
    result = error = None
    with proxy:
        try:
            with BridgeClient(proxy.url, timeout_s=TIMEOUT_S, retries=3) as c:
                result = upload_model(c, blob, "int8", model_id=model_id)
        except LinkError as exc:
            error = str(exc)
    active_crc, active_id = active(board)
    return {"i": i, "model_id": model_id, "previous_id": previous_id, "result": result,
            "error": error, "damaged_to_board": to_board.count, "damaged_to_host": to_host.count,
            "active_crc": active_crc, "active_id": active_id}


def test_adaptive_chunks_get_uploads_through_the_damaged_link(boards, int8_blob):
    crc = P.model_crc(int8_blob)
    with BridgeClient(boards[0].url, timeout_s=1.0) as c:
        clean = upload_model(c, int8_blob, "int8", model_id=100)
    assert clean.activated and clean.chunking["chunk_bytes_max"] == 2044

    def run_board(k: int) -> list[dict]:
        return [upload_through_damage(boards[k], int8_blob, i) for i in range(k, UPLOADS, BOARDS)]

    with ThreadPoolExecutor(BOARDS) as pool:
        runs = [run for runs in pool.map(run_board, range(BOARDS)) for run in runs]
    assert len(runs) == UPLOADS
    completed = []
    for run in runs:
        assert run["damaged_to_board"] > 0 and run["damaged_to_host"] > 0  # damaged both ways
        assert run["active_crc"] == crc                     # never a torn or another model
        result = run["result"]
        if result is None:
            assert run["active_id"] in (run["previous_id"], run["model_id"])  # ACTIVATE may have
            continue                                                          # got through
        assert result.activated and run["active_id"] == run["model_id"]
        assert result.chunking["chunks_lost"] > 0
        assert result.chunking["chunk_bytes_mean"] < 1024   # it did shrink
        completed.append(result)
    print(f"damaged link {DAMAGE_P:.1%}: {len(completed)}/{UPLOADS} uploads completed; wall s "
          f"{sorted(round(r.wall_s, 1) for r in completed)}, clean {clean.wall_s:.2f} s; mean chunk B "
          f"{sorted(round(r.chunking['chunk_bytes_mean']) for r in completed)}")
    assert len(completed) >= 8, [run["error"] for run in runs if run["error"]]
    # the chunk came back up after losses: it was larger than the floor on average
    assert max(r.chunking["chunk_bytes_mean"] for r in completed) > 64
