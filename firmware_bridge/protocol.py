"""The nanofly serial bridge protocol (host side): framing, commands, payload layouts.

Wire format (docs/protocol.md): a frame is ``type u8 | seq u8 | length u16 | payload | crc32
u32`` (little-endian, CRC-32 as zlib over everything before it), COBS-encoded and sent as
``0x00 COBS(frame) 0x00``. A zero byte never occurs inside an encoded frame, so a receiver
resynchronizes at the next zero after any garbage. The constants mirror
``core/protocol.h`` (a test checks that they agree).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import asdict, dataclass

PROTOCOL_VERSION = 1
FRAME_HEADER_BYTES = 4
FRAME_CRC_BYTES = 4
MAX_PAYLOAD = 2048          # the firmware's limit; HELLO negotiates the one in use
MIN_PAYLOAD = 640           # INFER needs 4 * OBSERVATION_DIM + 4 bytes (nanofly.policy.observation)
MIN_MODEL_BYTES = 24

CMD_HELLO = 0x01
CMD_BEGIN = 0x02
CMD_CHUNK = 0x03
CMD_COMMIT = 0x04
CMD_ACTIVATE = 0x05
CMD_INFER = 0x06
CMD_STATUS = 0x07
CMD_ARM = 0x08
CMD_DISARM = 0x09
CMD_HEARTBEAT = 0x0A
CMD_INFER_STATE = 0x0B     # compact INFER: state part only, history kept on board
REPLY_FLAG = 0x80
REPLY_ERROR = 0xFF

COMMAND_NAMES = {
    CMD_HELLO: "HELLO", CMD_BEGIN: "BEGIN", CMD_CHUNK: "CHUNK", CMD_COMMIT: "COMMIT",
    CMD_ACTIVATE: "ACTIVATE", CMD_INFER: "INFER", CMD_STATUS: "STATUS", CMD_ARM: "ARM",
    CMD_DISARM: "DISARM", CMD_HEARTBEAT: "HEARTBEAT", CMD_INFER_STATE: "INFER_STATE",
}

ERR_UNKNOWN_COMMAND = 1
ERR_LENGTH = 2
ERR_STATE = 3
ERR_SIZE = 4
ERR_FORMAT = 5
ERR_OFFSET = 6
ERR_INCOMPLETE = 7
ERR_CRC = 8
ERR_MODEL = 9
ERR_DIMS = 10
ERR_NO_MODEL = 11
ERR_NOT_VERIFIED = 12
ERR_ARMED = 13
ERR_NONFINITE = 14
ERR_PROTOCOL = 15
ERR_MISMATCH = 16
ERR_HISTORY = 17
ERR_BUSY = 18             # flash may not be written now (motors armed/running); detail0 BUSY_*
ERR_FLASH = 19            # flash erase/program/read-back failed (offset in slot, driver code)

# Why the board may not write flash now (ERR_BUSY detail0).
BUSY_ARMED = 1
BUSY_FLYING = 2
BUSY_OTHER = 3
BUSY_REASONS = {BUSY_ARMED: "the motors are armed", BUSY_FLYING: "the motors are running (flying)",
                BUSY_OTHER: "the board is busy"}

# Why INFER_STATE found no on-board history (ERR_HISTORY detail1).
HIST_RANGE = 1            # env index >= max histories (HELLO)
HIST_NOT_LOADED = 2       # no full INFER for this env since boot / the last upload
HIST_BUSY = 3             # an upload is in progress (it forgets the histories)
HIST_LAYOUT = 4           # the firmware's input has no state + action-history layout
HIST_DUPLICATE = 5        # the same env twice in one INFER_STATE frame
HIST_REASONS = {
    HIST_RANGE: "environment index beyond the board's on-board histories (HELLO max_histories)",
    HIST_NOT_LOADED: "no history loaded for it yet (send a full INFER for this environment first)",
    HIST_BUSY: "an upload is in progress (finish it, then reload each history with a full INFER)",
    HIST_LAYOUT: "the firmware's observation has no state + action-history layout",
    HIST_DUPLICATE: "the same environment appears twice in one frame",
}
INFER_NO_ENV = 0xFFFF     # full INFER env index: keep no history

ERROR_NAMES = {
    ERR_UNKNOWN_COMMAND: "UNKNOWN_COMMAND", ERR_LENGTH: "LENGTH", ERR_STATE: "STATE",
    ERR_SIZE: "SIZE", ERR_FORMAT: "FORMAT", ERR_OFFSET: "OFFSET",
    ERR_INCOMPLETE: "INCOMPLETE", ERR_CRC: "CRC", ERR_MODEL: "MODEL", ERR_DIMS: "DIMS",
    ERR_NO_MODEL: "NO_MODEL", ERR_NOT_VERIFIED: "NOT_VERIFIED", ERR_ARMED: "ARMED",
    ERR_NONFINITE: "NONFINITE", ERR_PROTOCOL: "PROTOCOL", ERR_MISMATCH: "MISMATCH",
    ERR_HISTORY: "HISTORY", ERR_BUSY: "BUSY", ERR_FLASH: "FLASH",
}

STAGE_EMPTY = 0
STAGE_RECEIVING = 1
STAGE_VERIFIED = 2
STAGE_NAMES = {STAGE_EMPTY: "empty", STAGE_RECEIVING: "receiving", STAGE_VERIFIED: "verified"}

COUNTER_NONE = 0
COUNTER_DWT_CYCLES = 1
COUNTER_TIM5_TICKS = 2
COUNTER_NAMES = {COUNTER_NONE: "none", COUNTER_DWT_CYCLES: "cpu cycles (DWT)",
                 COUNTER_TIM5_TICKS: "instructions (TIM5 under QEMU -icount shift=0)"}

HEARTBEAT_TIMEOUT_MS = 200
CONTROL_RATE_HZ = 500     # while armed
IDLE_TICK_MS = 10         # timer tick while disarmed

# Model formats (export blob byte 6), as in export/c/nanofly_policy.h.
FORMAT_F32 = 1
FORMAT_INT8 = 2
FORMAT_NAMES = {FORMAT_F32: "f32", FORMAT_INT8: "int8"}
FORMAT_BY_NAME = {v: k for k, v in FORMAT_NAMES.items()}

# nanofly_model_init() return codes, for ERR_MODEL details.
MODEL_INIT_ERRORS = {
    -1: "bad magic (not an NFLY blob)", -2: "unsupported blob version",
    -3: "size field does not match the bytes received", -4: "blob's own CRC-32 is wrong",
    -5: "unsupported number format", -6: "bad layer dimensions",
    -7: "weights contain NaN or Inf", -8: "blob is not 4-byte aligned",
}


class ProtocolError(RuntimeError):
    """The link or the firmware misbehaved in a way the client cannot recover from."""


class DeviceError(ProtocolError):
    """The firmware answered a request with an error reply."""

    def __init__(self, request: int, code: int, detail0: int, detail1: int):
        self.request, self.code, self.detail0, self.detail1 = request, code, detail0, detail1
        super().__init__(describe_error(request, code, detail0, detail1))

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, f"ERROR_{self.code}")


def describe_error(request: int, code: int, d0: int, d1: int) -> str:
    """A message that says what the firmware refused and what to do about it."""
    cmd = COMMAND_NAMES.get(request, f"command 0x{request:02x}")
    u0, u1 = d0 & 0xFFFFFFFF, d1 & 0xFFFFFFFF
    text = {
        ERR_UNKNOWN_COMMAND: f"the firmware does not know command type 0x{u0:02x}; "
                             "is the firmware older than this client? (`nanofly firmware status`)",
        ERR_LENGTH: f"payload of {d0} bytes, expected {d1} (client/firmware mismatch?)",
        ERR_STATE: f"not allowed in staging state {STAGE_NAMES.get(d0, d0)!r} "
                   f"(needs {STAGE_NAMES.get(d1, d1)!r}); start the upload with BEGIN",
        ERR_SIZE: (f"model of {u0} bytes exceeds the firmware's {u1}-byte model slot; "
                   "export a smaller network or use --format int8" if u0 > u1 else
                   f"model of {u0} bytes is smaller than any valid blob ({MIN_MODEL_BYTES} bytes)"),
        ERR_FORMAT: f"model format {d0} not accepted (supported/declared: {d1})",
        ERR_OFFSET: f"chunk at offset {u0} does not continue the {u1} bytes received",
        ERR_INCOMPLETE: f"only {u0} of {u1} bytes arrived; upload the rest before COMMIT",
        ERR_CRC: f"CRC-32 mismatch: computed 0x{u0:08x}, declared 0x{u1:08x}; the model was "
                 "corrupted in transit or the declared CRC is wrong: upload again",
        ERR_MODEL: f"the model failed validation: {MODEL_INIT_ERRORS.get(d0, d0)}; "
                   "re-export it with `nanofly export`",
        ERR_DIMS: f"model maps {u0 >> 16} -> {u0 & 0xFFFF} but the firmware is built for "
                  f"{u1 >> 16} -> {u1 & 0xFFFF} (observation -> action)",
        ERR_NO_MODEL: "no active model; flash one with `nanofly flash EXPORT_DIR --port URL`",
        ERR_NOT_VERIFIED: f"no verified model staged (staging state "
                          f"{STAGE_NAMES.get(d0, d0)!r}); upload and COMMIT first",
        ERR_ARMED: "refused while armed; DISARM first",
        ERR_NONFINITE: f"observation element {d0} is NaN or Inf",
        ERR_PROTOCOL: f"protocol version {d0} not supported by the firmware (it speaks {d1}); "
                      "rebuild and flash matching firmware (`nanofly firmware build`)",
        ERR_MISMATCH: f"staged model has CRC 0x{u0:08x}, ACTIVATE asked for 0x{u1:08x}",
        ERR_HISTORY: f"environment {d0} has no on-board action history: "
                     f"{HIST_REASONS.get(d1, d1)}",
        ERR_BUSY: f"the board does not write its model flash now: {BUSY_REASONS.get(d0, d0)}; "
                  "land, stop the motors and DISARM, then upload again",
        ERR_FLASH: f"writing the model flash failed at slot offset {u0} (driver code {d1}); "
                   "the running model is unchanged; upload again, and if it keeps failing the "
                   "flash sector may be worn",
    }.get(code, f"error code {code} ({d0}, {d1})")
    return f"{cmd} failed: {ERROR_NAMES.get(code, code)}: {text}"


def unpack_reply(fmt: str, payload: bytes, command: int, offset: int = 0) -> tuple:
    """``struct.unpack_from(fmt, payload, offset)`` for the reply to ``command``, with a
    ``ProtocolError`` that says what to do when the reply is too short (a valid frame, CRC and
    all, from firmware that does not speak this client's protocol)."""
    need = offset + struct.calcsize(fmt)
    if len(payload) < need:
        name = COMMAND_NAMES.get(command, f"command 0x{command:02x}")
        raise ProtocolError(f"{name} reply of {len(payload)} bytes, expected at least {need}: the "
                            f"board's firmware does not match this client; build and flash the "
                            f"firmware of this nanofly (`nanofly firmware build`)")
    return struct.unpack_from(fmt, payload, offset)


# ---- COBS ------------------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """Consistent overhead byte stuffing: the result contains no zero byte."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; raises ValueError for a malformed encoding."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("zero byte inside a COBS block")
        end = i + code
        if end > n:
            raise ValueError("COBS block runs past the end of the frame")
        out += data[i + 1:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    """The bytes to send for one frame, delimiters included."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a frame")
    body = struct.pack("<BBH", ftype, seq & 0xFF, len(payload)) + bytes(payload)
    body += struct.pack("<I", zlib.crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


def wire_bytes(payload_length: int) -> int:
    """Bytes on the wire for a frame with this payload length (delimiters included)."""
    body = FRAME_HEADER_BYTES + payload_length + FRAME_CRC_BYTES
    return 2 + body + 1 + body // 254


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


class FrameDecoder:
    """Streaming decoder: feed received bytes, get whole valid frames back.

    Garbage, truncated frames and frames with a bad CRC are dropped and counted; decoding
    resumes at the next zero byte."""

    def __init__(self, max_encoded: int = 2 * (MAX_PAYLOAD + 64)):
        self.max_encoded = max_encoded
        self._buf = bytearray()
        self._discarding = False
        self.frames_ok = 0
        self.frames_bad = 0

    def feed(self, data: bytes) -> list[Frame]:
        frames = []
        for part_index, part in enumerate(bytes(data).split(b"\x00")):
            if part_index > 0:  # a delimiter preceded this part: the previous frame ended
                frame = self._finish()
                if frame is not None:
                    frames.append(frame)
            if self._discarding:
                continue
            self._buf += part
            if len(self._buf) > self.max_encoded:
                self._buf.clear()
                self._discarding = True
                self.frames_bad += 1
        return frames

    def _finish(self) -> Frame | None:
        raw, self._buf = bytes(self._buf), bytearray()
        if self._discarding:
            self._discarding = False
            return None
        if not raw:
            return None
        try:
            body = cobs_decode(raw)
        except ValueError:
            self.frames_bad += 1
            return None
        if len(body) < FRAME_HEADER_BYTES + FRAME_CRC_BYTES:
            self.frames_bad += 1
            return None
        ftype, seq, length = struct.unpack_from("<BBH", body)
        if length + FRAME_HEADER_BYTES + FRAME_CRC_BYTES != len(body):
            self.frames_bad += 1
            return None
        (crc,) = struct.unpack_from("<I", body, len(body) - 4)
        if zlib.crc32(body[:-4]) != crc:
            self.frames_bad += 1
            return None
        self.frames_ok += 1
        return Frame(ftype, seq, body[FRAME_HEADER_BYTES:-FRAME_CRC_BYTES])


# ---- payloads ----------------------------------------------------------------------------

def infer_request(observation: bytes, env: int = INFER_NO_ENV) -> bytes:
    """Full INFER: float32[obs dim] observation, u16 env (whose on-board history it loads;
    INFER_NO_ENV: none), u16 0."""
    return bytes(observation) + struct.pack("<HH", env, 0)


def infer_state_request(envs, states: bytes) -> bytes:
    """INFER_STATE: u16 count, u16 env[count], float32 state[count][state dim]."""
    envs = list(envs)
    return struct.pack(f"<H{len(envs)}H", len(envs), *envs) + bytes(states)


def hello_request(max_payload: int = MAX_PAYLOAD, version: int = PROTOCOL_VERSION) -> bytes:
    return struct.pack("<HH", version, max_payload)


@dataclass(frozen=True)
class Hello:
    protocol_version: int
    firmware_version: str
    counter_kind: int
    max_payload: int          # negotiated: min(host, firmware)
    max_model_bytes: int
    formats: tuple[str, ...]
    armed: bool
    pll_locked: bool          # PLL locked at 168 MHz (real chip)
    emulated: bool            # RCC reads as zero: QEMU's stub (it models 168 MHz)
    observation_dim: int
    action_dim: int
    heartbeat_timeout_ms: int
    control_rate_hz: int
    active_format: str | None
    active_model_id: int
    active_crc: int
    active_size: int
    sysclk_hz: int
    firmware_max_payload: int
    firmware_min_payload: int
    # INFER_STATE (firmware >= 0.2; 0 when absent or not supported)
    state_dim: int = 0            # observation values sent per INFER_STATE row
    history_length: int = 0       # past actions kept on board per environment
    max_histories: int = 0        # environments with an on-board history
    max_state_rows: int = 0       # INFER_STATE rows per frame at the firmware's max payload

    _FMT = "<HBBBBHIBBHHHHBxIIII HH".replace(" ", "")
    _FMT_STATE = "<HHHH"          # at offset 44

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        (ver, major, minor, patch, counter, max_payload, max_model, formats, flags, obs, act,
         hb, rate, active_fmt, model_id, crc, size, sysclk, fw_max, fw_min) = unpack_reply(
            cls._FMT, payload, CMD_HELLO)
        return cls(
            protocol_version=ver, firmware_version=f"{major}.{minor}.{patch}",
            counter_kind=counter, max_payload=max_payload, max_model_bytes=max_model,
            formats=tuple(name for code, name in sorted(FORMAT_NAMES.items()) if formats >> code & 1),
            armed=bool(flags & 1), pll_locked=bool(flags & 2), emulated=bool(flags & 4),
            observation_dim=obs, action_dim=act,
            heartbeat_timeout_ms=hb, control_rate_hz=rate,
            active_format=FORMAT_NAMES.get(active_fmt) if size else None,
            active_model_id=model_id, active_crc=crc, active_size=size, sysclk_hz=sysclk,
            firmware_max_payload=fw_max, firmware_min_payload=fw_min,
            **cls._state_caps(payload))

    @classmethod
    def _state_caps(cls, payload: bytes) -> dict:
        base = struct.calcsize(cls._FMT)
        if len(payload) < base + struct.calcsize(cls._FMT_STATE):
            return {}  # older firmware: no INFER_STATE
        state, hist, envs, rows = struct.unpack_from(cls._FMT_STATE, payload, base)
        return {"state_dim": state, "history_length": hist, "max_histories": envs,
                "max_state_rows": rows}

    def state_rows_per_frame(self) -> int:
        """INFER_STATE rows that fit the negotiated payload (0: not supported)."""
        if not self.history_length or not self.state_dim:
            return 0
        return min(self.max_state_rows, (self.max_payload - 2) // (2 + 4 * self.state_dim))

    @property
    def has_model(self) -> bool:
        return self.active_size > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counter"] = COUNTER_NAMES.get(self.counter_kind, str(self.counter_kind))
        d["active_crc_hex"] = f"0x{self.active_crc:08x}"
        return d


@dataclass(frozen=True)
class Status:
    uptime_ms: int            # emulated (or real) milliseconds since boot
    armed: bool
    failsafe_tripped: bool    # the dead man's switch fired since the last ARM
    staging_state: str
    active_format: str | None
    ms_since_heartbeat: int | None
    last_heartbeat_ms: int
    failsafe_trip_ms: int
    motors: tuple[float, float, float, float]   # PWM ratios in [0, 1]
    active_model_id: int
    active_crc: int
    active_size: int
    staging_size: int
    staging_crc: int
    staging_received: int
    frames_ok: int
    frames_bad: int
    frames_too_long: int
    rx_overflows: int
    errors_sent: int
    inferences: int
    last_inference_ticks: int
    control_ticks: int
    failsafe_trips: int
    repeats_answered: int

    _FMT = "<IBBBBIII4f" + "I" * 16

    @classmethod
    def decode(cls, payload: bytes) -> "Status":
        v = unpack_reply(cls._FMT, payload, CMD_STATUS)
        (uptime, armed, tripped, stage, fmt, since_hb, last_hb, trip_ms, m0, m1, m2, m3,
         model_id, crc, size, s_size, s_crc, s_recv, ok, bad, too_long, overflows, errors,
         inferences, ticks, control, trips, repeats) = v
        return cls(
            uptime_ms=uptime, armed=bool(armed), failsafe_tripped=bool(tripped),
            staging_state=STAGE_NAMES.get(stage, str(stage)),
            active_format=FORMAT_NAMES.get(fmt) if size else None,
            ms_since_heartbeat=None if since_hb == 0xFFFFFFFF else since_hb,
            last_heartbeat_ms=last_hb, failsafe_trip_ms=trip_ms, motors=(m0, m1, m2, m3),
            active_model_id=model_id, active_crc=crc, active_size=size, staging_size=s_size,
            staging_crc=s_crc, staging_received=s_recv, frames_ok=ok, frames_bad=bad,
            frames_too_long=too_long, rx_overflows=overflows, errors_sent=errors,
            inferences=inferences, last_inference_ticks=ticks, control_ticks=control,
            failsafe_trips=trips, repeats_answered=repeats)

    @property
    def has_model(self) -> bool:
        return self.active_size > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["motors"] = list(self.motors)
        d["active_crc_hex"] = f"0x{self.active_crc:08x}"
        return d


def model_crc(blob: bytes) -> int:
    """The protocol's model CRC: CRC-32 of the blob without its last 4 bytes, i.e. the value of
    a well-formed blob's trailing CRC field. (CRC-32 over a whole blob, trailing CRC included,
    is the constant 0x2144DF1C for every valid blob, so it cannot identify a model.)"""
    return zlib.crc32(bytes(blob[:-4])) if len(blob) >= 4 else zlib.crc32(bytes(blob))


def begin_request(size: int, crc: int, fmt: int, model_id: int) -> bytes:
    return struct.pack("<IIBxxxI", size, crc, fmt, model_id)


def chunk_request(offset: int, data: bytes) -> bytes:
    return struct.pack("<I", offset) + bytes(data)


ERROR_REPLY_BYTES = 12  # request type u8, code u8, 2 reserved, detail0 i32, detail1 i32


def decode_error(payload: bytes) -> DeviceError:
    if len(payload) < ERROR_REPLY_BYTES:
        return DeviceError(0, 0, len(payload), ERROR_REPLY_BYTES)
    req, code, d0, d1 = struct.unpack_from("<BBxxii", payload)
    return DeviceError(req, code, d0, d1)
