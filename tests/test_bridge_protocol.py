"""Host-side protocol: COBS, framing, resynchronization, error messages, and agreement of the
Python constants with the firmware's protocol.h. No emulator needed."""
from __future__ import annotations

import re
import struct
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.firmware import FIRMWARE_DIR


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_cobs_round_trip_and_no_zero_bytes(data):
    encoded = P.cobs_encode(data)
    assert 0 not in encoded
    assert P.cobs_decode(encoded) == data
    assert len(encoded) <= len(data) + len(data) // 254 + 1


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_frame_round_trip_and_wire_size(ftype, seq, payload):
    wire = P.encode_frame(ftype, seq, payload)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert len(wire) <= P.wire_bytes(len(payload))
    frames = P.FrameDecoder(max_encoded=8000).feed(wire)
    assert frames == [P.Frame(ftype, seq, payload)]


def test_decoder_resynchronizes_after_garbage_split_and_corrupt_frames():
    rng = np.random.default_rng(0)
    good = [P.encode_frame(P.CMD_INFER, i, rng.bytes(int(rng.integers(0, 700)))) for i in range(20)]
    corrupt = bytearray(P.encode_frame(P.CMD_STATUS, 99, b"x" * 50))
    corrupt[10] ^= 0x40
    truncated = P.encode_frame(P.CMD_STATUS, 98, b"y" * 50)[:-20]
    stream = bytearray(rng.bytes(5000))  # garbage first (with zeros in it)
    for i, frame in enumerate(good):
        stream += frame
        if i == 5:
            stream += corrupt
        if i == 9:
            stream += truncated  # no delimiter: glued to the next frame's leading 0x00
        if i == 13:
            stream += bytes(rng.integers(1, 256, 9000, dtype=np.uint8))  # too long, no zero
    decoder = P.FrameDecoder()
    got = []
    pos = 0
    while pos < len(stream):  # arbitrary read boundaries
        n = int(rng.integers(1, 300))
        got += decoder.feed(bytes(stream[pos:pos + n]))
        pos += n
    assert [f.seq for f in got] == list(range(20))
    assert decoder.frames_bad >= 3


def _c_defines() -> dict[str, int]:
    text = (FIRMWARE_DIR.parent / "core" / "protocol.h").read_text()
    return {name: int(value, 0) for name, value in
            re.findall(r"#define\s+NF_(\w+)\s+(0x[0-9A-Fa-f]+|\d+)\b", text)}


def test_python_constants_match_firmware_header():
    c = _c_defines()
    firmware_only = {"FW_VERSION_MAJOR", "FW_VERSION_MINOR", "FW_VERSION_PATCH"}
    for name, value in c.items():
        if name in firmware_only:
            continue
        assert hasattr(P, name), f"NF_{name} has no counterpart in protocol.py"
        assert getattr(P, name) == value, f"{name}: Python {getattr(P, name)} != C {value}"
    assert len(c) > 40
    for name in dir(P):  # and every Python code exists in C
        if name.startswith(("ERR_", "CMD_", "STAGE_", "COUNTER_")) and not name.endswith("NAMES"):
            assert c.get(name) == getattr(P, name), name


def test_error_messages_say_what_and_how():
    msg = str(P.DeviceError(P.CMD_BEGIN, P.ERR_SIZE, 200_000, 57_344))
    assert "BEGIN" in msg and "200000" in msg and "57344" in msg and "int8" in msg
    msg = str(P.DeviceError(P.CMD_COMMIT, P.ERR_DIMS, (100 << 16) | 4, (146 << 16) | 4))
    assert "100 -> 4" in msg and "146 -> 4" in msg
    msg = str(P.DeviceError(P.CMD_COMMIT, P.ERR_MODEL, -7, 0))
    assert "NaN" in msg
    msg = str(P.DeviceError(P.CMD_COMMIT, P.ERR_CRC, 0x1234, 0xABCD))
    assert "0x00001234" in msg and "0x0000abcd" in msg


def test_model_crc_is_the_blobs_trailing_crc_field():
    body = b"NFLY" + bytes(range(100))
    blob = body + struct.pack("<I", zlib.crc32(body))
    assert P.model_crc(blob) == zlib.crc32(body)
    # whereas the CRC of a whole CRC-terminated message is one constant for all of them
    other = b"NFLY" + bytes(range(7, 90))
    other += struct.pack("<I", zlib.crc32(other))
    assert zlib.crc32(blob) == zlib.crc32(other) == 0x2144DF1C


def test_status_and_hello_layouts_have_the_sizes_the_firmware_sends():
    assert struct.calcsize(P.Status._FMT) == 100
    assert struct.calcsize(P.Hello._FMT) + struct.calcsize(P.Hello._FMT_STATE) == 52
    text = (FIRMWARE_DIR.parent / "core" / "nf_core.c").read_text()
    assert "#define STATUS_BYTES 100u" in text and "#define HELLO_BYTES 52u" in text
    assert "nf_core_reply_ok(c, req, STATUS_BYTES);" in text and "nf_core_reply_ok(c, req, HELLO_BYTES);" in text


def _hello_payload(state_caps: bytes) -> bytes:
    return struct.pack(P.Hello._FMT, 1, 0, 2, 0, 2, 2048, 57344, 6, 4, 146, 4, 200, 500, 2,
                       7, 0x1234, 15000, 168_000_000, 2048, 640) + state_caps


def test_hello_infer_state_capabilities_and_older_firmware():
    new = P.Hello.decode(_hello_payload(struct.pack("<HHHH", 18, 32, 112, 27)))
    assert (new.state_dim, new.history_length, new.max_histories) == (18, 32, 112)
    assert new.state_rows_per_frame() == 27
    old = P.Hello.decode(_hello_payload(b""))  # 44-byte reply of firmware 0.1: no INFER_STATE
    assert old.history_length == 0 and old.state_rows_per_frame() == 0
    assert old.observation_dim == 146


def test_infer_state_request_layout_and_history_errors():
    states = np.arange(36, dtype="<f4").reshape(2, 18)
    payload = P.infer_state_request([5, 9], states.tobytes())
    assert struct.unpack_from("<HHH", payload) == (2, 5, 9)
    assert payload[6:] == states.tobytes() and len(payload) == 2 + 2 * (2 + 72)
    # the rows per frame the firmware allows at its maximum payload
    assert (P.MAX_PAYLOAD - 2) // (2 + 4 * 18) == 27
    assert P.infer_request(b"\0" * 584, 7)[-4:] == struct.pack("<HH", 7, 0)
    msg = str(P.DeviceError(P.CMD_INFER_STATE, P.ERR_HISTORY, 4, P.HIST_NOT_LOADED))
    assert "INFER_STATE" in msg and "environment 4" in msg and "full INFER" in msg


def test_upload_overhead_bound_by_frame_arithmetic():
    """Bytes on the wire per model byte for a 15 KB model in negotiated 2044-byte chunks, both
    directions, every request and reply counted (the emulated test measures the real one)."""
    model = 15_000
    chunk = P.MAX_PAYLOAD - 4
    n_chunks = -(-model // chunk)
    wire = P.wire_bytes(4) + P.wire_bytes(44)            # HELLO
    wire += P.wire_bytes(16) + P.wire_bytes(8)           # BEGIN
    wire += sum(P.wire_bytes(4 + min(chunk, model - i * chunk)) + P.wire_bytes(4)
                for i in range(n_chunks))
    wire += P.wire_bytes(0) + P.wire_bytes(12)           # COMMIT
    wire += P.wire_bytes(4) + P.wire_bytes(12)           # ACTIVATE
    wire += P.wire_bytes(0) + P.wire_bytes(100)          # STATUS
    assert wire / model <= 1.10
