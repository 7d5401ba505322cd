"""The host client against a board that misbehaves in ways the real firmware never does: short
replies that still carry a valid CRC, and ERR_OFFSET refusals without end. The board here is a
scripted TCP peer (the emulated firmware cannot be made to send these)."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.client import BridgeClient, check_link_options, upload_model


class ScriptedBoard:
    """Accepts one connection on a free port and answers each request frame with
    ``answer(frame) -> reply frames (bytes)``; counts the requests it saw."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[P.Frame] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(5)
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        decoder = P.FrameDecoder()
        conn.settimeout(0.05)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for frame in decoder.feed(data):
                    self.requests.append(frame)
                    for reply in self.answer(frame):
                        conn.sendall(reply)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(timeout=2)


def ok(frame: P.Frame, payload: bytes) -> list[bytes]:
    return [P.encode_frame(frame.type | P.REPLY_FLAG, frame.seq, payload)]


def good_hello(frame: P.Frame) -> list[bytes]:
    payload = bytearray(52)
    struct.pack_into("<HBBBBHIBBHHHH", payload, 0, P.PROTOCOL_VERSION, 0, 2, 0, 0, P.MAX_PAYLOAD,
                     56 * 1024, 0b110, 0, 146, 4, 200, 500)
    return ok(frame, bytes(payload))


@pytest.mark.parametrize("command, call", [
    (P.CMD_HELLO, lambda c: c.hello()),
    (P.CMD_STATUS, lambda c: c.status()),
    (P.CMD_ARM, lambda c: c.arm()),
    (P.CMD_HEARTBEAT, lambda c: c.heartbeat()),
    (P.CMD_COMMIT, lambda c: c.commit()),
    (P.CMD_INFER, lambda c: c.infer([0.0] * 146)),
])
def test_short_reply_with_valid_crc_is_a_protocol_error(command, call):
    board = ScriptedBoard(lambda f: ok(f, b"\x01\x02"))  # 2 bytes, framed and CRC'd correctly
    try:
        with BridgeClient(board.url, timeout_s=0.5, retries=0) as client:
            with pytest.raises(P.ProtocolError, match=r"reply of 2 bytes.*nanofly firmware build"):
                call(client)
    finally:
        board.close()
    assert [f.type for f in board.requests] == [command]


def test_short_error_reply_is_a_protocol_error_not_a_timeout():
    board = ScriptedBoard(lambda f: [P.encode_frame(P.REPLY_ERROR, f.seq, bytes([f.type, 3]))])
    try:
        with BridgeClient(board.url, timeout_s=0.5, retries=2) as client:
            t0 = time.monotonic()
            with pytest.raises(P.ProtocolError, match="error reply of 2 bytes"):
                client.status()
            assert time.monotonic() - t0 < 0.5  # at once, not after the retries
    finally:
        board.close()


def test_cli_status_on_a_short_reply_is_one_line_exit_1(capsys):
    from nanofly.cli import main

    board = ScriptedBoard(lambda f: ok(f, b"\x01"))
    try:
        rc = main(["firmware", "status", "--port", board.url, "--retries", "0"])
    finally:
        board.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "HELLO reply of 1 bytes" in err[0], err


def test_endless_err_offset_gives_up_instead_of_looping():
    """A board that answers every CHUNK with ERR_OFFSET ("I have 0 bytes") used to keep the
    upload in an endless loop of resent chunks."""
    blob = bytes(range(256)) * 4

    def answer(frame: P.Frame) -> list[bytes]:
        if frame.type == P.CMD_HELLO:
            return good_hello(frame)
        if frame.type == P.CMD_BEGIN:
            return ok(frame, struct.pack("<IBxxx", 0, P.STAGE_RECEIVING))
        if frame.type == P.CMD_CHUNK and len(board.requests) < 60:  # then silence: the old
            err = struct.pack("<BBxxii", P.CMD_CHUNK, P.ERR_OFFSET, 0, 0)
            return [P.encode_frame(P.REPLY_ERROR, frame.seq, err)]  # loop ends, not hangs
        return []

    board = ScriptedBoard(answer)
    try:
        with BridgeClient(board.url, timeout_s=0.5, retries=0) as client:
            with pytest.raises(P.ProtocolError, match="refused the chunk at offset 0 9 times"):
                upload_model(client, blob, "int8", chunk_bytes=256)
    finally:
        board.close()
    chunks = [f for f in board.requests if f.type == P.CMD_CHUNK]
    assert len(chunks) == 9


@pytest.mark.parametrize("options, words", [
    ({"retries": -1}, "retries must be a whole number >= 0"),
    ({"chunk_bytes": -512}, "chunk_bytes must be a whole number of bytes >= 1"),
    ({"chunk_bytes": 0}, "chunk_bytes must be"),
    ({"timeout_s": -1.0}, "timeout_s must be a positive number"),
    ({"timeout_s": float("nan")}, "timeout_s must be a positive number"),
    ({"baudrate": 0}, "baudrate must be"),
])
def test_link_options_are_checked(options, words):
    with pytest.raises(ValueError, match=words):
        check_link_options(**options)


def test_client_and_upload_refuse_negative_counts_before_touching_the_link():
    with pytest.raises(ValueError, match="retries"):
        BridgeClient("socket://127.0.0.1:9", retries=-3)  # nothing listens there: never opened
    with pytest.raises(ValueError, match="chunk_bytes"):
        upload_model(None, b"\x00" * 64, "int8", chunk_bytes=-1)


def test_cli_status_says_what_it_waits_for_on_a_silent_board(capsys):
    """A board that accepts the connection and never answers: `firmware status` says which
    reply it waits for and for how long, and each resend, instead of staying silent."""
    from nanofly.cli import main

    board = ScriptedBoard(lambda f: [])
    try:
        rc = main(["firmware", "status", "--port", board.url, "--timeout", "0.3", "--retries", "1"])
    finally:
        board.close()
    err = capsys.readouterr().err
    assert rc == 1
    assert "waiting for the board's HELLO reply" in err and "in all: 2 tries" in err, err
    assert "no HELLO reply after 0.3" in err and "sending it again (try 2 of 2" in err, err
    assert err.strip().splitlines()[-1].startswith("error: no reply to HELLO"), err
