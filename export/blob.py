"""Model blobs: the binary the C runtime reads (layout in docs/model-format.md).

``pack_f32`` / ``pack_int8`` write a blob from float or quantized layers; ``read_blob`` parses
and validates one (the same checks, in the same order, as ``nanofly_model_init``) and decodes
its layers back, so tests can check a round trip.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"NFLY"
VERSION = 1
FORMAT_F32 = 1
FORMAT_INT8 = 2
ACTIVATION_TANH = 1
MAX_LAYERS = 8
MAX_INPUT = 256
MAX_WIDTH = 128
HEADER_BYTES = 16

# Error codes of nanofly_policy.h, by name.
ERROR_CODES = {"OK": 0, "MAGIC": -1, "VERSION": -2, "SIZE": -3, "CRC": -4, "FORMAT": -5,
               "DIMS": -6, "NONFINITE": -7, "ALIGN": -8}


class BlobError(ValueError):
    """A blob that the C runtime would refuse; ``code`` is the NANOFLY_ERR_* name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} (NANOFLY_ERR_{code})")
        self.code = code


def _round_up(v: int, k: int) -> int:
    return (v + k - 1) // k * k


def check_dims(widths: list[int]) -> None:
    """Raise BlobError('DIMS') unless the runtime limits allow these layer widths."""
    if not 2 <= len(widths) <= MAX_LAYERS + 1:
        raise BlobError("DIMS", f"{len(widths) - 1} linear layers; the C runtime supports "
                                f"1..{MAX_LAYERS}")
    if not 1 <= widths[0] <= MAX_INPUT:
        raise BlobError("DIMS", f"input width {widths[0]}; the C runtime supports 1..{MAX_INPUT}")
    for w in widths[1:]:
        if not 1 <= w <= MAX_WIDTH:
            raise BlobError("DIMS", f"layer width {w}; the C runtime supports hidden and "
                                    f"output widths 1..{MAX_WIDTH}")


def _header(fmt: int, widths: list[int], payload_bytes: int) -> bytes:
    n_layers = len(widths) - 1
    head = MAGIC + struct.pack("<HBBBBH", VERSION, fmt, ACTIVATION_TANH, n_layers, 0, 0)
    start = _round_up(HEADER_BYTES + 2 * len(widths), 4)
    total = start + payload_bytes + 4
    head += struct.pack("<I", total) + struct.pack(f"<{len(widths)}H", *widths)
    return head + b"\0" * (start - len(head))


def _finish(head: bytes, payload: bytes) -> bytes:
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<f4")


def pack_f32(weights: list[np.ndarray], biases: list[np.ndarray]) -> bytes:
    """Float32 blob from per-layer ``W`` (out x in, torch Linear order) and ``b`` (out)."""
    widths = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights]
    check_dims(widths)
    parts = []
    for w, b in zip(weights, biases):
        m, n = w.shape
        m8, n4 = _round_up(m, 8), _round_up(n, 4)
        bias = np.zeros(m8, np.float32)
        bias[:m] = b
        wp = np.zeros((m8, n4), np.float32)
        wp[:m, :n] = w
        # [g][k][i][o] = W[8g+o][4k+i]
        blocks = wp.reshape(m8 // 8, 8, n4 // 4, 4).transpose(0, 2, 3, 1)
        parts += [_f32(bias).tobytes(), _f32(blocks).tobytes()]
    payload = b"".join(parts)
    return _finish(_header(FORMAT_F32, widths, len(payload)), payload)


def pack_int8_weights(q: np.ndarray) -> bytes:
    """Pack int8 weights ``q`` (out x in, values in [-127, 127]) in the SMLALD/SMLAD order."""
    m, n = q.shape
    m4, n4 = _round_up(m, 4), _round_up(n, 4)
    qp = np.zeros((m4, n4), np.int32)
    qp[:m, :n] = q
    blk = qp.reshape(m4 // 4, 4, n4 // 4, 4).transpose(0, 2, 1, 3)  # [g][k][o][i]
    out = np.empty(blk.shape[:2] + (4, 4), np.uint8)  # [g][k][word][byte]
    for j in range(4):
        p, h = j & 1, j >> 1  # output pair, input half
        out[:, :, j, 0] = blk[:, :, 2 * p, 2 * h] + 128          # A' = q + 128 (offset binary)
        out[:, :, j, 1] = blk[:, :, 2 * p + 1, 2 * h] & 0xFF      # B two's complement
        out[:, :, j, 2] = blk[:, :, 2 * p, 2 * h + 1] + 128
        out[:, :, j, 3] = blk[:, :, 2 * p + 1, 2 * h + 1] & 0xFF
    return out.tobytes()


def unpack_int8_weights(data: bytes, m: int, n: int) -> np.ndarray:
    m4, n4 = _round_up(m, 4), _round_up(n, 4)
    raw = np.frombuffer(data, np.uint8).reshape(m4 // 4, n4 // 4, 4, 4).astype(np.int32)
    blk = np.zeros((m4 // 4, n4 // 4, 4, 4), np.int32)  # [g][k][o][i]
    for j in range(4):
        p, h = j & 1, j >> 1
        blk[:, :, 2 * p, 2 * h] = raw[:, :, j, 0] - 128
        blk[:, :, 2 * p + 1, 2 * h] = raw[:, :, j, 1] - ((raw[:, :, j, 1] & 0x80) << 1)
        blk[:, :, 2 * p, 2 * h + 1] = raw[:, :, j, 2] - 128
        blk[:, :, 2 * p + 1, 2 * h + 1] = raw[:, :, j, 3] - ((raw[:, :, j, 3] & 0x80) << 1)
    return blk.transpose(0, 2, 1, 3).reshape(m4, n4)[:m, :n]


def pack_int8(input_multiplier: np.ndarray, q_weights: list[np.ndarray],
              scales: list[np.ndarray], biases: list[np.ndarray]) -> bytes:
    """Int8 blob: per-input multipliers, then per layer scale, bias (float32) and packed q."""
    widths = [int(q_weights[0].shape[1])] + [int(q.shape[0]) for q in q_weights]
    check_dims(widths)
    if len(input_multiplier) != widths[0]:
        raise ValueError("input_multiplier length must equal the input width")
    parts = [_f32(input_multiplier).tobytes()]
    for q, s, b in zip(q_weights, scales, biases):
        if q.min() < -127 or q.max() > 127:
            raise ValueError("int8 weights must lie in [-127, 127]")
        m4 = _round_up(q.shape[0], 4)
        sp = np.zeros(m4, np.float32)
        sp[:len(s)] = s
        bp = np.zeros(m4, np.float32)
        bp[:len(b)] = b
        parts += [sp.tobytes(), bp.tobytes(), pack_int8_weights(q)]
    payload = b"".join(parts)
    return _finish(_header(FORMAT_INT8, widths, len(payload)), payload)


@dataclass
class BlobContents:
    """A parsed blob. f32: ``weights``/``biases`` float; int8: ``weights`` int8 values plus
    ``scales``, ``biases`` and ``input_multiplier``."""
    format: int
    widths: list[int]
    size: int
    crc32: int
    weights: list[np.ndarray] = field(default_factory=list)
    biases: list[np.ndarray] = field(default_factory=list)
    scales: list[np.ndarray] = field(default_factory=list)
    input_multiplier: np.ndarray | None = None

    @property
    def format_name(self) -> str:
        return {FORMAT_F32: "f32", FORMAT_INT8: "int8"}[self.format]


def layer_bytes(fmt: int, n: int, m: int) -> int:
    if fmt == FORMAT_F32:
        m8 = _round_up(m, 8)
        return 4 * (m8 + m8 * _round_up(n, 4))
    m4 = _round_up(m, 4)
    return 8 * m4 + m4 * _round_up(n, 4)


def read_blob(data: bytes) -> BlobContents:
    """Parse and validate a blob like ``nanofly_model_init``; raises BlobError."""
    data = bytes(data)
    size = len(data)
    if size < 24 or size % 4:
        raise BlobError("SIZE", f"blob of {size} bytes: must be >= 24 and a multiple of 4")
    if data[:4] != MAGIC:
        raise BlobError("MAGIC", f"magic {data[:4]!r} is not {MAGIC!r}")
    version, fmt, act, n_layers, r0, r1, total = struct.unpack_from("<HBBBBHI", data, 4)
    if version != VERSION:
        raise BlobError("VERSION", f"blob version {version}; this runtime reads {VERSION}")
    if total != size:
        raise BlobError("SIZE", f"header says {total} bytes, blob has {size}")
    crc = struct.unpack_from("<I", data, size - 4)[0]
    if zlib.crc32(data[:-4]) != crc:
        raise BlobError("CRC", "CRC-32 mismatch (corrupt or truncated blob)")
    if fmt not in (FORMAT_F32, FORMAT_INT8) or act != ACTIVATION_TANH or r0 or r1:
        raise BlobError("FORMAT", f"format {fmt}, activation {act}, reserved {r0}/{r1}")
    if not 1 <= n_layers <= MAX_LAYERS:
        raise BlobError("DIMS", f"{n_layers} layers; supported 1..{MAX_LAYERS}")
    start = _round_up(HEADER_BYTES + 2 * (n_layers + 1), 4)
    if start + 4 > size:
        raise BlobError("SIZE", "blob too small for its layer table")
    if any(data[HEADER_BYTES + 2 * (n_layers + 1):start]):
        raise BlobError("FORMAT", "nonzero header padding")
    widths = list(struct.unpack_from(f"<{n_layers + 1}H", data, HEADER_BYTES))
    check_dims(widths)
    off = start + (4 * widths[0] if fmt == FORMAT_INT8 else 0)
    off += sum(layer_bytes(fmt, n, m) for n, m in zip(widths[:-1], widths[1:]))
    if off + 4 != size:
        raise BlobError("SIZE", f"layer widths imply {off + 4} bytes, blob has {size}")

    out = BlobContents(fmt, widths, size, crc)
    off = start
    floats = []
    if fmt == FORMAT_INT8:
        out.input_multiplier = np.frombuffer(data, "<f4", widths[0], off).copy()
        floats.append(out.input_multiplier)
        off += 4 * widths[0]
    for n, m in zip(widths[:-1], widths[1:]):
        if fmt == FORMAT_F32:
            m8, n4 = _round_up(m, 8), _round_up(n, 4)
            bias = np.frombuffer(data, "<f4", m8, off)
            blocks = np.frombuffer(data, "<f4", m8 * n4, off + 4 * m8)
            floats += [bias, blocks]
            w = blocks.reshape(m8 // 8, n4 // 4, 4, 8).transpose(0, 3, 1, 2).reshape(m8, n4)
            out.weights.append(w[:m, :n].copy())
            out.biases.append(bias[:m].copy())
        else:
            m4 = _round_up(m, 4)
            scale = np.frombuffer(data, "<f4", m4, off)
            bias = np.frombuffer(data, "<f4", m4, off + 4 * m4)
            floats += [scale, bias]
            nbytes = m4 * _round_up(n, 4)
            q = unpack_int8_weights(data[off + 8 * m4: off + 8 * m4 + nbytes], m, n)
            out.weights.append(q)
            out.scales.append(scale[:m].copy())
            out.biases.append(bias[:m].copy())
        off += layer_bytes(fmt, n, m)
    if not all(np.isfinite(f).all() for f in floats):
        raise BlobError("NONFINITE", "a weight, bias, scale or multiplier is NaN or Inf")
    return out


def with_header_field(blob: bytes, offset: int, fmt: str, value, *, fix_crc: bool = True) -> bytes:
    """A copy of ``blob`` with one header field replaced (tests of the C loader use it)."""
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    if fix_crc:
        struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)
