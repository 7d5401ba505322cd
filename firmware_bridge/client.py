"""pyserial client for the nanofly bridge firmware: requests with timeouts and retries, and
the model upload (BEGIN, idempotent CHUNKs, COMMIT, ACTIVATE) that resumes after a lost link.

Any pyserial URL works: ``/dev/ttyUSB0``, ``socket://127.0.0.1:PORT`` (QEMU),
``rfc2217://host:port``, ``loop://``; and any cflib URI (``radio://0/80/2M/E7E7E7E7E7``,
``usb://0``, ``udp://127.0.0.1:PORT``), which carries the same byte stream over the Crazyflie's
CRTP app channel (``crtp_link.AppChannelPort``).
"""
from __future__ import annotations

import os
import random
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import crtp_link
from . import protocol as P
from .chunking import (LOSSES_AT_FLOOR_LIMIT, MIN_CHUNK_BYTES, WIRE_MARGIN,
                       ChunkSizeController, ReplyTimer)


class LinkError(P.ProtocolError):
    """The serial link failed (disconnected, cannot open) or the board stopped answering."""


class NoReplyError(LinkError):
    """No intact reply to a request after every attempt: the frames were lost or damaged on
    the way, or the board does not answer. (A closed connection is a plain :class:`LinkError`.)"""


@dataclass
class LinkStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    retries: int = 0
    reconnects: int = 0
    stale_frames: int = 0     # valid replies to an earlier request (after a retry)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class UploadResult:
    size_bytes: int
    crc: int
    format: str
    model_id: int
    wall_s: float
    chunk_bytes: int          # the largest (and first) CHUNK data size
    bytes_on_wire: int        # both directions, every frame of the upload
    bytes_to_board: int       # host -> board only (the busy direction of a full-duplex UART)
    retries: int              # same-frame resends + chunks sent again after a loss
    reconnects: int
    resumed_from: int         # bytes already on the board when the upload (re)started
    activated: bool
    # how the chunk size and the reply wait adapted (ChunkSizeController.as_dict and more)
    chunking: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        """Bytes on the wire per model byte (1.0 = no protocol overhead)."""
        return self.bytes_on_wire / self.size_bytes

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["overhead"] = self.overhead
        d["crc_hex"] = f"0x{self.crc:08x}"
        d["rate_bytes_per_s"] = self.size_bytes / self.wall_s if self.wall_s > 0 else None
        return d


def check_link_options(*, timeout_s: float | None = None, retries: int | None = None,
                       chunk_bytes: int | None = None, baudrate: int | None = None,
                       names: dict[str, str] | None = None) -> None:
    """Raise ``ValueError`` naming the first unusable link option: a timeout that is not a
    positive number of seconds, a negative retry count, a chunk of less than one byte, a baud
    rate below 1. ``names``: how to call each option in the message (the CLI's flags)."""
    import math

    names = {"timeout_s": "timeout_s", "retries": "retries", "chunk_bytes": "chunk_bytes",
             "baudrate": "baudrate", **(names or {})}

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if timeout_s is not None and not (isinstance(timeout_s, (int, float))
                                      and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"{names['timeout_s']} must be a positive number of seconds, got "
                         f"{timeout_s!r}")
    if retries is not None and not (whole(retries) and retries >= 0):
        raise ValueError(f"{names['retries']} must be a whole number >= 0, got {retries!r}")
    if chunk_bytes is not None and not (whole(chunk_bytes) and chunk_bytes >= 1):
        raise ValueError(f"{names['chunk_bytes']} must be a whole number of bytes >= 1, got "
                         f"{chunk_bytes!r} (leave it out to use the negotiated maximum)")
    if baudrate is not None and not (whole(baudrate) and baudrate >= 1):
        raise ValueError(f"{names['baudrate']} must be a whole number >= 1, got {baudrate!r}")


ANNOUNCE_AFTER_S = 0.5  # a reply not in by then gets a line saying what the client waits for


class BridgeClient:
    """One connection to a board running the bridge firmware.

    ``timeout_s``: how long to wait for each reply before sending the request again, on top
    of the time the request itself takes on the wire (frame bytes / ``link_bytes_per_s``);
    ``retries``: how many times to send it again before giving up with :class:`LinkError`.
    ``link_bytes_per_s``: the slowest rate expected: baud / 10 (8N1) for serial ports,
    8 000 B/s for ``socket://`` (QEMU takes in 20-50 KB/s), and for cflib URIs the packet rate
    ``crtp_link.PACKETS_PER_S`` assumes times 30 bytes.
    ``on_wait``: called with one line of text when a wait gets long, so a person is not left
    in silence: a connection that does not open at once, a reply not in after
    ``ANNOUNCE_AFTER_S`` (what it waits for and for how long at most), each resend and each
    reconnect. None: quiet.
    """

    def __init__(self, url: str, *, timeout_s: float = 1.0, retries: int = 3,
                 max_payload: int = P.MAX_PAYLOAD, open_timeout_s: float = 5.0,
                 baudrate: int = 115200, link_bytes_per_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        check_link_options(timeout_s=timeout_s, retries=retries, baudrate=baudrate)
        self.url = url
        self.on_wait = on_wait
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.host_max_payload = int(max_payload)
        self.open_timeout_s = float(open_timeout_s)
        self.baudrate = baudrate
        if link_bytes_per_s is None:
            if crtp_link.is_cflib_uri(url):
                link_bytes_per_s = crtp_link.link_bytes_per_s(url)
            else:
                link_bytes_per_s = 8000.0 if url.startswith("socket://") else baudrate / 10
        self.link_bytes_per_s = float(link_bytes_per_s)
        self.stats = LinkStats()
        self.hello_info: P.Hello | None = None
        self._seq = random.randrange(256)
        self._serial = None
        self._decoder = P.FrameDecoder()
        self.open()

    # ---- link -------------------------------------------------------------------------
    def open(self) -> None:
        import serial  # pyserial

        if crtp_link.is_cflib_uri(self.url):
            connect_timeout_s = max(self.open_timeout_s, crtp_link.CONNECT_TIMEOUT_S)
            self._say(f"connecting to {self.url} (up to {connect_timeout_s:g} s)...")
            try:
                self._serial = crtp_link.AppChannelPort(self.url, connect_timeout_s=connect_timeout_s)
            except OSError as exc:
                raise LinkError(str(exc)) from exc
            self._decoder = P.FrameDecoder()
            return
        deadline = time.monotonic() + self.open_timeout_s
        announced = False
        while True:
            try:
                self._serial = serial.serial_for_url(self.url, baudrate=self.baudrate,
                                                     timeout=0.02, write_timeout=5.0)
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                if isinstance(exc, ValueError) or time.monotonic() > deadline:
                    raise LinkError(f"cannot open {self.url}: {exc}") from exc
                if not announced:
                    self._say(f"cannot open {self.url} yet ({exc}); trying again for up to "
                              f"{self.open_timeout_s:g} s...")
                    announced = True
                time.sleep(0.05)  # e.g. QEMU not listening yet
        self._decoder = P.FrameDecoder()

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            finally:
                self._serial = None

    def _say(self, message: str) -> None:
        if self.on_wait is not None:
            self.on_wait(message)

    def reconnect(self) -> None:
        self._say(f"reconnecting to {self.url}...")
        self.close()
        self.stats.reconnects += 1
        self.open()

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        import serial

        if self._serial is None:
            raise LinkError(f"{self.url}: not connected")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.url}: write failed ({exc})") from exc
        self.stats.bytes_sent += len(data)
        self.stats.frames_sent += 1

    def _read_some(self) -> bytes:
        import serial

        if self._serial is None:
            raise LinkError(f"{self.url}: not connected")
        try:
            waiting = self._serial.in_waiting
            data = self._serial.read(waiting if waiting > 1 else 1)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.url}: connection lost ({exc})") from exc
        self.stats.bytes_received += len(data)
        return data

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests use this to send garbage)."""
        self._write(data)

    # ---- requests ---------------------------------------------------------------------
    def request(self, ftype: int, payload: bytes = b"", *, timeout_s: float | None = None,
                retries: int | None = None) -> bytes:
        """Send one request and return its reply payload.

        The frame is sent again (same sequence number, so the firmware recognises a repeat)
        when no reply arrives in time: ``timeout_s`` plus the frame's time on the wire, doubled
        after each attempt (at most 8x). Error replies raise
        :class:`~nanofly.firmware_bridge.protocol.DeviceError`; no reply at all raises
        :class:`LinkError`."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = P.encode_frame(ftype, seq, payload)
        name = P.COMMAND_NAMES.get(ftype, f"0x{ftype:02x}")
        wait_s = timeout_s + len(frame) / self.link_bytes_per_s
        # back off: a slow link must not be flooded with more copies of the frame
        attempt_waits_s = [wait_s * min(2 ** attempt, 8) for attempt in range(retries + 1)]
        started = time.monotonic()
        announced = False

        def announce() -> None:
            nonlocal announced
            announced = True
            self._say(f"waiting for the board's {name} reply on {self.url} (up to "
                      f"{sum(attempt_waits_s):.3g} s in all: {retries + 1} "
                      f"{'try' if retries == 0 else 'tries'} from {wait_s:.3g} s, doubling)...")

        for attempt, attempt_wait_s in enumerate(attempt_waits_s):
            if attempt:
                self.stats.retries += 1
                if not announced:
                    announce()
                self._say(f"no {name} reply after {attempt_waits_s[attempt - 1]:.3g} s; sending "
                          f"it again (try {attempt + 1} of {retries + 1}, waiting up to "
                          f"{attempt_wait_s:.3g} s)")
            self._write(frame)
            deadline = time.monotonic() + attempt_wait_s
            while time.monotonic() < deadline:
                if not announced and time.monotonic() - started > ANNOUNCE_AFTER_S:
                    announce()
                data = self._read_some()
                if not data:
                    continue
                for reply in self._decoder.feed(data):
                    if reply.seq != seq:
                        self.stats.stale_frames += 1
                        continue
                    if reply.type == P.REPLY_ERROR:
                        if len(reply.payload) < P.ERROR_REPLY_BYTES:
                            raise P.ProtocolError(
                                f"{name}: error reply of {len(reply.payload)} bytes, expected "
                                f"{P.ERROR_REPLY_BYTES}: the board's firmware does not match this "
                                f"client; build and flash the firmware of this nanofly "
                                f"(`nanofly firmware build`)")
                        err = P.decode_error(reply.payload)
                        if err.request == ftype:
                            raise err
                        self.stats.stale_frames += 1
                    elif reply.type == (ftype | P.REPLY_FLAG):
                        return reply.payload
                    else:
                        self.stats.stale_frames += 1
        raise NoReplyError(f"no reply to {name} from {self.url} after {retries + 1} attempts "
                        f"(waiting {wait_s:.2f} s, doubling up to 8x): is the board powered and running the "
                        "nanofly bridge firmware, and is the port right?")

    def hello(self) -> P.Hello:
        info = P.Hello.decode(self.request(P.CMD_HELLO, P.hello_request(self.host_max_payload)))
        if info.max_payload < P.MIN_PAYLOAD:
            raise P.ProtocolError(f"negotiated payload of {info.max_payload} bytes is below the "
                                  f"protocol minimum {P.MIN_PAYLOAD}")
        self.hello_info = info
        return info

    def status(self) -> P.Status:
        return P.Status.decode(self.request(P.CMD_STATUS))

    def begin(self, size: int, crc: int, fmt: int, model_id: int) -> tuple[int, int]:
        """Start (or resume) an upload; returns (bytes already received, staging state)."""
        reply = self.request(P.CMD_BEGIN, P.begin_request(size, crc, fmt, model_id))
        received, state = P.unpack_reply("<IB", reply, P.CMD_BEGIN)
        return received, state

    def chunk(self, offset: int, data: bytes, *, timeout_s: float | None = None,
              retries: int | None = None) -> int:
        """Write bytes at ``offset`` of the staging slot; returns bytes received so far.
        ``timeout_s``, ``retries``: as :meth:`request` (default: the client's)."""
        reply = self.request(P.CMD_CHUNK, P.chunk_request(offset, data), timeout_s=timeout_s,
                             retries=retries)
        (received,) = P.unpack_reply("<I", reply, P.CMD_CHUNK)
        return received

    def commit(self) -> dict:
        crc, size, n_in, n_out = P.unpack_reply("<IIHH", self.request(P.CMD_COMMIT), P.CMD_COMMIT)
        return {"crc": crc, "size": size, "observation_dim": n_in, "action_dim": n_out}

    def activate(self, crc: int) -> dict:
        model_id, active_crc, size = P.unpack_reply(
            "<III", self.request(P.CMD_ACTIVATE, struct.pack("<I", crc)), P.CMD_ACTIVATE)
        return {"model_id": model_id, "crc": active_crc, "size": size}

    def arm(self) -> int:
        return P.unpack_reply("<I", self.request(P.CMD_ARM), P.CMD_ARM)[0]

    def disarm(self) -> int:
        return P.unpack_reply("<I", self.request(P.CMD_DISARM), P.CMD_DISARM)[0]

    def heartbeat(self) -> dict:
        now_ms, armed, tripped = P.unpack_reply("<IBB", self.request(P.CMD_HEARTBEAT), P.CMD_HEARTBEAT)
        return {"now_ms": now_ms, "armed": bool(armed), "failsafe_tripped": bool(tripped)}

    def infer(self, observation, env: int | None = None) -> tuple[np.ndarray, int, int]:
        """One inference on the board: returns (action float32, cost ticks, model CRC).

        ``env``: also load this environment's on-board action history from the observation
        (then :meth:`infer_state` can continue it); None keeps no history.
        Cost ticks are instructions under QEMU (-icount shift=0) and CPU cycles on silicon
        (see ``hello().counter_kind``)."""
        obs = np.ascontiguousarray(observation, dtype="<f4").reshape(-1)
        payload = obs.tobytes() if env is None else P.infer_request(obs.tobytes(), env)
        reply = self.request(P.CMD_INFER, payload)
        if len(reply) < 12 or len(reply) % 4:
            raise P.ProtocolError(f"INFER reply of {len(reply)} bytes, expected 4 per action value "
                                  f"+ 8: the board's firmware does not match this client; build "
                                  f"and flash the firmware of this nanofly (`nanofly firmware build`)")
        n_act = (len(reply) - 8) // 4
        action = np.frombuffer(reply, dtype="<f4", count=n_act).astype(np.float32)
        ticks, crc = struct.unpack_from("<II", reply, 4 * n_act)
        return action, ticks, crc

    def infer_state(self, envs, states, action_dim: int = 4) -> tuple[np.ndarray, np.ndarray, int]:
        """Compact inference for several environments in one frame: ``states`` (n, state dim)
        is the state part of each observation, the board appends environment ``envs[i]``'s
        on-board action history, runs the model and pushes the clipped action into that
        history. Returns (actions (n, action_dim) float32, cost ticks (n,), model CRC).

        The firmware refuses the whole frame (DeviceError HISTORY, nothing changed) when an
        environment has no history on board; a repeated frame (retry) is answered from the
        reply cache, so a history never advances twice."""
        st = np.ascontiguousarray(states, dtype="<f4")
        envs = [int(e) for e in envs]
        if st.ndim != 2 or st.shape[0] != len(envs):
            raise ValueError(f"states must be (len(envs)={len(envs)}, state dim), got {st.shape}")
        reply = self.request(P.CMD_INFER_STATE, P.infer_state_request(envs, st.tobytes()))
        n = len(envs)
        row = 4 * action_dim + 4
        if len(reply) != n * row + 4:
            raise P.ProtocolError(f"INFER_STATE reply of {len(reply)} bytes, expected {n * row + 4} "
                                  f"for {n} rows of {action_dim} actions")
        rows = np.frombuffer(reply, dtype="<u4", count=n * row // 4).reshape(n, row // 4)
        actions = rows[:, :action_dim].copy().view("<f4").astype(np.float32)
        ticks = rows[:, action_dim].astype(np.int64)
        (crc,) = struct.unpack_from("<I", reply, n * row)
        return actions, ticks, crc


# ---- upload -------------------------------------------------------------------------------

@dataclass
class UploadProgress:
    sent_bytes: int = 0
    total_bytes: int = 0
    retries: int = 0
    reconnects: int = 0
    chunk_bytes: int = 0      # size of the next CHUNK (adapts to the link's losses)
    started: float = field(default_factory=time.monotonic)

    @property
    def rate_bytes_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent_bytes / elapsed if elapsed > 0 else 0.0


def upload_model(client: BridgeClient, blob: bytes, fmt: int | str, *, model_id: int = 0,
                 chunk_bytes: int | None = None, activate: bool = True,
                 max_reconnects: int = 3, progress: Callable[[UploadProgress], None] | None = None,
                 min_chunk_bytes: int = MIN_CHUNK_BYTES) -> UploadResult:
    """Upload a model blob into the staging slot, verify it on the board and activate it.

    Every CHUNK carries its offset, so repeats are harmless; after a lost link the client
    reconnects and BEGIN with the same size/CRC/format/id resumes at the byte count the board
    reports. The model only becomes active after COMMIT verified it and ACTIVATE named its CRC;
    the final STATUS must show that CRC active.

    Chunk size: ``chunk_bytes`` (default: the negotiated maximum payload - 4) is the largest
    and the first; each CHUNK that gets no intact reply in time is sent again at half the
    size (not below ``min_chunk_bytes``), and each that does lets the next grow by 64 bytes
    (:class:`~nanofly.firmware_bridge.chunking.ChunkSizeController`). The wait for a CHUNK's
    reply follows the round trips measured so far (a reply that comes after its wait ended
    counts with the time since its chunk was sent) plus half the chunk's estimated wire
    time, never longer than ``client.timeout_s`` plus that
    (:class:`~nanofly.firmware_bridge.chunking.ReplyTimer`); a lost chunk is not a reason to
    wait longer (a damaged frame is not a slow board). The board counts as not
    answering (:class:`NoReplyError`, then a reconnect) after ``max(client.retries + 1, 12)``
    chunks in a row were lost at the smallest size."""
    check_link_options(chunk_bytes=chunk_bytes)
    fmt_code = P.FORMAT_BY_NAME[fmt] if isinstance(fmt, str) else int(fmt)
    blob = bytes(blob)
    size, crc = len(blob), P.model_crc(blob)
    stats0 = (client.stats.bytes_sent + client.stats.bytes_received, client.stats.retries,
              client.stats.reconnects, client.stats.bytes_sent)
    t0 = time.monotonic()
    state = UploadProgress(total_bytes=size)
    reconnects_left = max_reconnects
    restarts_left = 3
    resume_offsets: list[int] = []  # what each BEGIN reported as already on the board
    sizer: ChunkSizeController | None = None  # kept across reconnects: the link stays as bad
    timer = ReplyTimer(client.timeout_s)
    losses_limit = max(client.retries + 1, LOSSES_AT_FLOOR_LIMIT)

    def control(ftype: int, payload: bytes = b"") -> bytes:
        """BEGIN, COMMIT, ACTIVATE, STATUS, with as many attempts as a chunk gets once the
        link has lost chunks. They wait the client's full timeout: BEGIN may erase a flash
        slot, COMMIT and ACTIVATE may program one, and a STATUS given up on would fail an
        upload that is done."""
        lossy = sizer is not None and sizer.losses > 0
        return client.request(ftype, payload,
                              retries=max(client.retries, losses_limit - 1) if lossy else None)

    def timed(send: Callable[[], object], payload_bytes: int, only_if_unsampled: bool = False):
        """``send()``, and its round trip beyond the request's wire time as a sample of the
        reply wait, unless it was retried (then the reply may answer either attempt)."""
        if only_if_unsampled and timer.mean_s is not None:
            return send()
        sent_at, retries_before = time.monotonic(), client.stats.retries
        reply = send()
        if client.stats.retries == retries_before:
            timer.sample(time.monotonic() - sent_at
                         - P.wire_bytes(payload_bytes) / client.link_bytes_per_s)
        return reply

    def link_lost(exc: Exception) -> None:
        nonlocal reconnects_left
        if reconnects_left <= 0:
            error = NoReplyError if isinstance(exc, NoReplyError) else LinkError
            raise error(f"upload to {client.url} failed: {exc} (gave up after "
                        f"{max_reconnects} reconnects)") from exc
        reconnects_left -= 1
        reason = str(exc).split(" (")[0].split(": is the board")[0]  # its first clause
        client._say(f"{reason}; reconnect {max_reconnects - reconnects_left} of {max_reconnects}")
        time.sleep(0.05)
        client.reconnect()

    while True:  # (re)start: HELLO + BEGIN, then chunks until the board has every byte
        try:
            info = timed(client.hello, len(P.hello_request(0)))
            largest = min(chunk_bytes or info.max_payload - 4, info.max_payload - 4)
            if sizer is None or sizer.max_bytes != largest:
                sizer = ChunkSizeController(largest, min_bytes=min_chunk_bytes)
            begin_request = P.begin_request(size, crc, fmt_code, model_id)
            # BEGIN's round trip may include a flash erase: only a first estimate, if HELLO's
            # was retried (ambiguous)
            received, _ = P.unpack_reply(
                "<IB", timed(lambda: control(P.CMD_BEGIN, begin_request), len(begin_request),
                             only_if_unsampled=True), P.CMD_BEGIN)
            resume_offsets.append(received)
            offset = received
            # ERR_OFFSET refusals in a row (no chunk accepted between them): a board that keeps
            # refusing is broken, not behind, and must not keep the client in a loop
            offset_refusals = 0
            lost_at: tuple[float, float] | None = None  # (sent, wire s) of the last lost chunk

            def late_reply() -> None:
                """A reply to an earlier, timed-out chunk came in: its round trip was at most
                the time since that chunk was sent (no lost chunk yet: just wait longer)."""
                if lost_at is None:
                    timer.backoff()
                else:
                    timer.sample(time.monotonic() - lost_at[0] - lost_at[1])

            while offset < size:
                data = blob[offset:offset + sizer.size]
                on_wire_s = P.wire_bytes(4 + len(data)) / client.link_bytes_per_s
                sent_at, stale_before = time.monotonic(), client.stats.stale_frames
                try:
                    received = client.chunk(offset, data, retries=0,
                                            timeout_s=timer.wait_s + WIRE_MARGIN * on_wire_s)
                except NoReplyError as exc:
                    # lost or damaged on the way there or back: smaller frames get through
                    sizer.on_loss()
                    if client.stats.stale_frames > stale_before:
                        late_reply()
                    lost_at = (sent_at, on_wire_s)
                    if sizer.gave_up(losses_limit):
                        raise NoReplyError(
                            f"no reply to CHUNK from {client.url}: {sizer.losses_at_floor} "
                            f"{sizer.min_bytes}-byte chunks in a row got no intact reply "
                            f"({sizer.losses} lost, {sizer.successes} through so far); is the "
                            f"board powered and the link working?") from exc
                    state.retries += 1
                    state.chunk_bytes = sizer.size
                    continue
                except P.DeviceError as err:
                    if err.code == P.ERR_OFFSET:   # the board has fewer bytes than we thought
                        board_has = err.detail1 & 0xFFFFFFFF
                        offset_refusals += 1
                        if offset_refusals > MAX_OFFSET_REFUSALS or board_has > size:
                            raise P.ProtocolError(
                                f"upload to {client.url}: the board refused the chunk at offset "
                                f"{offset} {offset_refusals} times in a row (it reports {board_has} "
                                f"of {size} bytes received); reset the board and flash again"
                            ) from err
                        offset = board_has
                        continue
                    if err.code == P.ERR_STATE and restarts_left > 0:  # staging was reset
                        restarts_left -= 1
                        raise _Restart() from err
                    raise
                if client.stats.stale_frames > stale_before:
                    late_reply()
                else:
                    timer.sample(time.monotonic() - sent_at - on_wire_s)
                lost_at = None
                sizer.on_success(len(data))
                offset = received
                offset_refusals = 0
                state.sent_bytes = offset
                state.retries = client.stats.retries - stats0[1] + sizer.losses
                state.reconnects = client.stats.reconnects - stats0[2]
                state.chunk_bytes = sizer.size
                if progress:
                    progress(state)
            committed = dict(zip(("crc", "size", "observation_dim", "action_dim"),
                                 P.unpack_reply("<IIHH", control(P.CMD_COMMIT), P.CMD_COMMIT)))
            break
        except _Restart:
            continue
        except LinkError as exc:
            link_lost(exc)
    if committed["crc"] != crc or committed["size"] != size:
        raise P.ProtocolError(f"board verified CRC 0x{committed['crc']:08x} / {committed['size']} "
                              f"bytes, expected 0x{crc:08x} / {size}")
    activated = False
    if activate:
        activate_request = struct.pack("<I", crc)
        try:
            control(P.CMD_ACTIVATE, activate_request)
        except LinkError as exc:  # the link went: did the ACTIVATE get through?
            link_lost(exc)
            if P.Status.decode(control(P.CMD_STATUS)).active_crc != crc:
                control(P.CMD_ACTIVATE, activate_request)
        status = P.Status.decode(control(P.CMD_STATUS))
        if status.active_crc != crc or status.active_size != size:
            raise P.ProtocolError(f"after ACTIVATE the board reports active CRC "
                                  f"0x{status.active_crc:08x}, expected 0x{crc:08x}")
        activated = True
    wire = client.stats.bytes_sent + client.stats.bytes_received - stats0[0]
    chunking = {**sizer.as_dict(), "reply_wait_s_last": timer.wait_s,
                "reply_round_trip_s_mean": timer.mean_s}
    return UploadResult(size_bytes=size, crc=crc, format=P.FORMAT_NAMES.get(fmt_code, str(fmt_code)),
                        model_id=model_id, wall_s=time.monotonic() - t0, chunk_bytes=sizer.max_bytes,
                        bytes_on_wire=wire, bytes_to_board=client.stats.bytes_sent - stats0[3],
                        retries=client.stats.retries - stats0[1] + sizer.losses,
                        reconnects=client.stats.reconnects - stats0[2],
                        resumed_from=resume_offsets[0], activated=activated,
                        chunking=chunking, extra={"resume_offsets": resume_offsets})


MAX_OFFSET_REFUSALS = 8  # ERR_OFFSET replies in a row before an upload gives up


class _Restart(Exception):
    pass


def read_export_blob(export_dir: str | os.PathLike, fmt: str = "int8") -> tuple[bytes, int]:
    """The model blob of an export directory and a model id derived from its manifest.

    Checked before anything goes to a board: the blob must match the SHA-256 its manifest
    records and be a well-formed model blob (``nanofly.export.blob.read_blob``). Raises
    ``FileNotFoundError`` / ``ValueError`` with a message that says what to do."""
    import hashlib
    import json
    from pathlib import Path

    from nanofly.export.blob import BlobError, read_blob

    export_dir = Path(export_dir)
    if fmt not in P.FORMAT_BY_NAME:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(P.FORMAT_BY_NAME)}")
    if export_dir.is_file():
        raise ValueError(f"{export_dir} is a file, not an export directory; export it first: "
                         f"nanofly export {export_dir} --out DIR, then flash DIR")
    path = export_dir / f"policy_{fmt}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {fmt} model blob; is {export_dir} an export directory "
                                "(`nanofly export POLICY --out DIR`)?")
    blob = path.read_bytes()
    manifest_path = export_dir / "manifest.json"
    manifest_bytes = manifest_path.read_bytes() if manifest_path.is_file() else None
    if manifest_bytes is not None:
        try:
            recorded = json.loads(manifest_bytes)["blobs"][fmt]["sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest_path}: not a nanofly export manifest ({type(exc).__name__}: "
                             f"{exc}); export the policy again") from None
        if hashlib.sha256(blob).hexdigest() != recorded:
            raise ValueError(f"{path} does not match the SHA-256 in {manifest_path} (changed after "
                             f"the export?); export the policy again")
    try:
        read_blob(blob)
    except BlobError as exc:
        raise ValueError(f"{path} is not a valid model blob ({exc}); export the policy "
                         f"again") from None
    # The id says which export is on the board; CRC-32 of the manifest is stable per export.
    model_id = zlib.crc32(manifest_bytes) if manifest_bytes is not None else P.model_crc(blob)
    return blob, model_id


def format_error_warning(export_dir: str | os.PathLike, fmt: str) -> str | None:
    """A warning when the export's manifest records that ``fmt``'s measured error (largest
    |action - float32 actor| over its evaluation observations) exceeds its bound, with what to
    do about it; None when it is within the bound or the manifest does not say."""
    import json
    from pathlib import Path

    try:
        manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
        errors = manifest["errors"]
        measured = errors[{"int8": "c_int8", "f32": "c_f32"}[fmt]]
        if measured["within_bound"]:
            return None
        observations = errors.get("observations", {})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    over = (f"over {observations['count']} {observations.get('source', '')} observations "
            if "count" in observations else "")
    fixes = ("flash --format f32, or train with --int8-aware-steps N and export again"
             if fmt == "int8" else "export again and check the C runtime against the policy")
    return (f"the {fmt} model's measured error {measured['max_abs']:.3g} (largest |action - "
            f"float32 actor| {over}in {Path(export_dir) / 'manifest.json'}) exceeds its bound "
            f"{measured['bound']:g}: it may not fly like the policy you evaluated. Check it "
            f"closed loop (nanofly eval {export_dir} --backend c-{fmt}), {fixes}")
