"""Model blob format: Python writer/reader round trip, CRC, and the C loader's rejections."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from nanofly.export import blob as B
from nanofly.export.runtime import CModel, c_crc32, init_error_code

rng = np.random.default_rng(0)


def _layers(sizes, seed=0):
    r = np.random.default_rng(seed)
    ws = [r.normal(0, 0.3, (m, n)).astype(np.float32) for n, m in zip(sizes[:-1], sizes[1:])]
    bs = [r.normal(0, 0.1, m).astype(np.float32) for m in sizes[1:]]
    return ws, bs


def _int8_blob(sizes=(146, 64, 64, 4), seed=0):
    r = np.random.default_rng(seed)
    qs = [r.integers(-127, 128, (m, n)) for n, m in zip(sizes[:-1], sizes[1:])]
    ss = [r.uniform(1e-5, 1e-4, m).astype(np.float32) for m in sizes[1:]]
    bs = [r.normal(0, 0.1, m).astype(np.float32) for m in sizes[1:]]
    return B.pack_int8(np.full(sizes[0], 256, np.float32), qs, ss, bs), qs, ss, bs


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 255, 1000])
def test_crc32_matches_zlib(n):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert c_crc32(data) == zlib.crc32(data)


@pytest.mark.parametrize("sizes", [(146, 64, 64, 4), (3, 5), (7, 9, 1), (256, 128, 128, 128, 2)])
def test_f32_round_trip_and_header(sizes):
    ws, bs = _layers(sizes)
    data = B.pack_f32(ws, bs)
    assert data[:4] == b"NFLY"
    assert struct.unpack_from("<HBBBBHI", data, 4) == (1, 1, 1, len(sizes) - 1, 0, 0, len(data))
    assert len(data) % 4 == 0
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    parsed = B.read_blob(data)
    assert parsed.widths == list(sizes)
    for w, pw, b, pb in zip(ws, parsed.weights, bs, parsed.biases):
        np.testing.assert_array_equal(w, pw)
        np.testing.assert_array_equal(b, pb)
    m = CModel(data)
    assert (m.input_dim, m.output_dim, m.format) == (sizes[0], sizes[-1], 1)


@pytest.mark.parametrize("sizes", [(146, 64, 64, 4), (3, 5), (7, 9, 1), (10, 6, 3)])
def test_int8_round_trip(sizes):
    data, qs, ss, bs = _int8_blob(sizes)
    parsed = B.read_blob(data)
    assert parsed.format == B.FORMAT_INT8 and parsed.widths == list(sizes)
    for q, pq, s, ps in zip(qs, parsed.weights, ss, parsed.scales):
        np.testing.assert_array_equal(q, pq)
        np.testing.assert_array_equal(s, ps)
    assert CModel(data).format == 2


def test_int8_packing_layout_matches_doc():
    """Word 0 of block (0, 0) is [A'(o0,i0), B(o1,i0), A'(o0,i1), B(o1,i1)] (docs/model-format)."""
    q = np.zeros((4, 4), np.int32)
    q[0, 0], q[1, 0], q[0, 1], q[1, 1] = -5, -7, 9, 127
    q[2, 2], q[3, 3] = 3, -127
    packed = B.pack_int8_weights(q)
    assert list(packed[0:4]) == [123, 0xF9, 137, 127]   # -5+128, -7, 9+128, 127
    assert list(packed[12:16]) == [131, 0, 128, 0x81]   # word 3: A'(o2,i2)=3+128 ... B(o3,i3)=-127
    assert list(packed[4:8]) == [128, 0, 128, 0]         # zeros: A' = 128, B = 0


def test_int8_c_runtime_computes_documented_math():
    """The C int8 path equals the format's formula evaluated independently in NumPy."""
    sizes = (10, 6, 3)
    data, qs, ss, bs = _int8_blob(sizes, seed=3)
    obs = np.random.default_rng(1).uniform(-2, 2, (50, sizes[0])).astype(np.float32)
    x = np.clip(np.rint(obs * np.float32(256)), -32768, 32767)
    for i, (q, s, b) in enumerate(zip(qs, ss, bs)):
        z = (x @ q.T).astype(np.float32) * s + b
        t = np.tanh(z.astype(np.float64))
        x = np.rint(t * 32767) if i < len(qs) - 1 else t
    np.testing.assert_allclose(CModel(data)(obs), x, atol=2e-6)


# --- the C loader refuses bad blobs, each with its own code ------------------------------------

GOOD_F32 = B.pack_f32(*_layers((146, 64, 64, 4)))
GOOD_INT8 = _int8_blob()[0]


def _set(blob, offset, fmt, value, fix_crc=True):
    return B.with_header_field(blob, offset, fmt, value, fix_crc=fix_crc)


def _nan_weight(blob):
    b = bytearray(blob)
    start = B._round_up(16 + 2 * 4, 4)
    struct.pack_into("<f", b, start + 4 * 100, float("nan"))
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def _inf_scale(blob):
    b = bytearray(blob)
    start = B._round_up(16 + 2 * 4, 4) + 4 * 146  # after the input multipliers: layer 0 scales
    struct.pack_into("<f", b, start + 8, float("inf"))
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def _flip_payload(blob):
    b = bytearray(blob)
    b[200] ^= 0x10
    return bytes(b)


def _truncate_fixed(blob):
    body = bytearray(blob[:-8])  # drop 4 payload bytes; header size and CRC made consistent
    struct.pack_into("<I", body, 12, len(body) + 4)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def _fix(b: bytearray) -> bytes:
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def _widths(blob, idx, value):
    b = bytearray(blob)
    struct.pack_into("<H", b, 16 + 2 * idx, value)
    return _fix(b)


CASES = [
    ("MAGIC", lambda b: _set(b, 0, "4s", b"NFLZ")),
    ("VERSION", lambda b: _set(b, 4, "<H", 2)),
    ("SIZE", lambda b: _set(b, 12, "<I", len(b) + 4)),       # header disagrees with the size
    ("SIZE", lambda b: b[:-4]),                              # truncated
    ("SIZE", lambda b: b[:20]),                              # too small for any blob
    ("SIZE", _truncate_fixed),                               # consistent header, short payload
    ("CRC", _flip_payload),
    ("CRC", lambda b: _set(b, 9, "B", 1, fix_crc=False)),    # header edited, CRC not updated
    ("FORMAT", lambda b: _set(b, 6, "B", 3)),
    ("FORMAT", lambda b: _set(b, 7, "B", 2)),                # activation other than tanh
    ("FORMAT", lambda b: _set(b, 9, "B", 1)),                # reserved
    ("FORMAT", lambda b: _set(b, 10, "<H", 7)),
    ("DIMS", lambda b: _set(b, 8, "B", 0)),                  # no layers
    ("DIMS", lambda b: _set(b, 8, "B", 9)),                  # too many layers
    ("DIMS", lambda b: _widths(b, 1, 0)),                    # zero width
    ("DIMS", lambda b: _widths(b, 0, 300)),                  # input beyond NANOFLY_MAX_INPUT
    ("DIMS", lambda b: _widths(b, 2, 129)),                  # hidden beyond NANOFLY_MAX_WIDTH
    ("SIZE", lambda b: _widths(b, 2, 65)),                   # widths imply another size
]


@pytest.mark.parametrize("fmt_blob", ["f32", "int8"])
@pytest.mark.parametrize("code,mutate", CASES)
def test_c_loader_rejects(fmt_blob, code, mutate):
    blob = mutate(GOOD_F32 if fmt_blob == "f32" else GOOD_INT8)
    assert init_error_code(blob) == B.ERROR_CODES[code]
    with pytest.raises(B.BlobError) as exc:  # the Python reader agrees
        B.read_blob(blob)
    assert exc.value.code == code


def test_c_loader_rejects_nonfinite():
    assert init_error_code(_nan_weight(GOOD_F32)) == B.ERROR_CODES["NONFINITE"]
    assert init_error_code(_inf_scale(GOOD_INT8)) == B.ERROR_CODES["NONFINITE"]
    for bad in (_nan_weight(GOOD_F32), _inf_scale(GOOD_INT8)):
        with pytest.raises(B.BlobError, match="NaN or Inf"):
            B.read_blob(bad)


def test_c_loader_rejects_misaligned_blob():
    assert init_error_code(GOOD_F32, offset=0) == 0
    assert init_error_code(GOOD_F32, offset=2) == B.ERROR_CODES["ALIGN"]
    assert init_error_code(GOOD_INT8, offset=1) == B.ERROR_CODES["ALIGN"]


def test_writer_refuses_unsupported_dims():
    with pytest.raises(B.BlobError, match="input width 300"):
        B.pack_f32(*_layers((300, 8)))
    with pytest.raises(B.BlobError, match="layer width 200"):
        B.pack_f32(*_layers((10, 200, 4)))
    with pytest.raises(B.BlobError, match="9 linear layers"):
        B.pack_f32(*_layers((4,) * 10))
