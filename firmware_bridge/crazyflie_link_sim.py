"""A Crazyflie link peer for tests: the firmware's side of CRTP over UDP, enough for cflib to
connect and for ``nanofly crazyflie fly`` to run a whole flight.

This is a **protocol peer, not a flight simulator**. It answers cflib's real client code
(``udp://127.0.0.1:PORT``; cflib's ``UdpDriver`` carries one CRTP packet per datagram: the
header byte, then up to 30 payload bytes) the way the stock firmware does, and records every
param write, arming request and setpoint with its arrival time, so a test can check the order
of a flight. Its "physics" is a kinematic stand-in: the position estimate follows the last
position setpoint with a first-order lag while armed, falls back to the ground after a stop
setpoint, a disarm or 500 ms without setpoints, and the Kalman position variance decays after
``kalman.resetEstimation``. No motor, thrust or attitude is modelled and the ``nanofly.*``
params change nothing here; the closed-loop flight of the app's controller is tested by the
SITL backend (``--backend cf-sitl``) instead.

What it speaks (ports and formats from the firmware's crtpservice.c, platformservice.c,
crtp_supervisor.c, param_logic.c, log.c and mem.c; protocol version 12, so cflib uses the v2
TOC/param/log formats and the supervisor port for arming):

- link (15): source channel -> "Bitcraze Crazyflie", echo, sink; a bare null packet (0xFF) is
  answered with one, so cflib's UDP scan finds the peer;
- platform (13): protocol/firmware version and device type; the deprecated arming command;
  the app channel (channel 2, as platformservice.c routes it to app_channel.c): packets go to
  ``app_channel_handler`` (the host stand-in's byte stream, ``nanofly crazyflie sitl``) and
  :meth:`CrazyflieLinkPeer.send_app` sends the app's replies in packets of at most 30 bytes;
- supervisor (9): arming and the state bitfield;
- mem (4): no memories;
- param (2): TOC v2 (with the firmware's chained CRC-32 of the table, the key of cflib's TOC
  cache), read, write (read-only params are not answered, as in the firmware), extended type
  and set-by-name;
- log (5): TOC v2, create/append/start/stop/delete/reset of blocks, data at each block's period
  (one packet per block: id, 24-bit ms timestamp, values in the requested fetch types);
- commander (3: roll/pitch/yawrate/thrust) and generic commander (7: setpoints on channel 0,
  notify-setpoint-stop on channel 1), localization (6): recorded.

The TOCs hold the app's real param and log groups, parsed from its C source
(``firmware_bridge/crazyflie/src/nanofly_app.c``: ``PARAM_ADD*`` / ``LOG_ADD*`` lines with their
types), plus the stock names the flight uses, with the types the stock firmware declares them
with (``STOCK_PARAMS``, ``STOCK_LOGS``).
"""
from __future__ import annotations

import math
import re
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

APP_SOURCE = Path(__file__).resolve().parent / "crazyflie" / "src" / "nanofly_app.c"

CRTP_PROTOCOL_VERSION = 12  # the firmware's crtp.h
CRTP_MAX_DATA_SIZE = 30
FIRMWARE_VERSION = "2026.08"
DEVICE_TYPE = "CF21"

# CRTP ports (the firmware's crtp.h, cflib's crtpstack.CRTPPort)
PORT_CONSOLE, PORT_PARAM, PORT_COMMANDER, PORT_MEM, PORT_LOG = 0, 2, 3, 4, 5
PORT_LOCALIZATION, PORT_COMMANDER_GENERIC, PORT_SUPERVISOR, PORT_PLATFORM, PORT_LINK = 6, 7, 9, 13, 15
PLATFORM_CHANNEL_APP = 2  # platformservice.c: APP_CHANNEL (cflib's platformservice.APP_CHANNEL)

# param.h: type byte = size (bits 0-1) | float (bit 2) | unsigned (bit 3); flags above
PARAM_CONSTANTS = {
    "PARAM_UINT8": 0x08, "PARAM_INT8": 0x00, "PARAM_UINT16": 0x09, "PARAM_INT16": 0x01,
    "PARAM_UINT32": 0x0A, "PARAM_INT32": 0x02, "PARAM_FLOAT": 0x06,
    "PARAM_CORE": 0x20, "PARAM_RONLY": 0x40, "PARAM_PERSISTENT": 0x100,
}
PARAM_EXTENDED = 0x10
PARAM_CORE = 0x20
PARAM_RONLY = 0x40
PARAM_GROUP = 0x80
PARAM_START = 0x01
PARAM_FORMATS = {0x08: "B", 0x00: "b", 0x09: "H", 0x01: "h", 0x0A: "I", 0x02: "i",
                 0x0B: "Q", 0x03: "q", 0x05: "e", 0x06: "f", 0x07: "d"}

# log.h
LOG_CONSTANTS = {
    "LOG_UINT8": 1, "LOG_UINT16": 2, "LOG_UINT32": 3, "LOG_INT8": 4, "LOG_INT16": 5,
    "LOG_INT32": 6, "LOG_FLOAT": 7, "LOG_FP16": 8, "LOG_CORE": 0x20, "LOG_BY_FUNCTION": 0x40,
}
LOG_CORE = 0x20
LOG_GROUP = 0x80
LOG_START = 0x01
LOG_TYPE_MASK = 0x0F
LOG_FORMATS = {1: "B", 2: "H", 3: "I", 4: "b", 5: "h", 6: "i", 7: "f", 8: "e"}
LOG_MAX_LEN = 26  # payload bytes of one log block's data (30 minus id and timestamp)
LOG_MAX_BLOCKS = 16
LOG_MAX_OPS = 128

# The stock names the flight uses, typed as the firmware declares them (stabilizer.c,
# estimator_kalman.c, flowdeck_v1v2.c, lighthouse.c; checked against a firmware tree in the tests).
STOCK_PARAMS = (
    ("stabilizer", "estimator", PARAM_CONSTANTS["PARAM_UINT8"] | PARAM_CORE),
    ("stabilizer", "controller", PARAM_CONSTANTS["PARAM_UINT8"] | PARAM_CORE),
    ("kalman", "resetEstimation", PARAM_CONSTANTS["PARAM_UINT8"] | PARAM_CORE),
    ("deck", "bcFlow2", PARAM_CONSTANTS["PARAM_UINT8"] | PARAM_RONLY | PARAM_CORE),
    ("deck", "bcLighthouse4", PARAM_CONSTANTS["PARAM_UINT8"] | PARAM_RONLY | PARAM_CORE),
)
STOCK_LOGS = (
    ("kalman", "varPX", LOG_CONSTANTS["LOG_FLOAT"]),
    ("kalman", "varPY", LOG_CONSTANTS["LOG_FLOAT"]),
    ("kalman", "varPZ", LOG_CONSTANTS["LOG_FLOAT"]),
    ("stateEstimate", "x", LOG_CONSTANTS["LOG_FLOAT"] | LOG_CORE),
    ("stateEstimate", "y", LOG_CONSTANTS["LOG_FLOAT"] | LOG_CORE),
    ("stateEstimate", "z", LOG_CONSTANTS["LOG_FLOAT"] | LOG_CORE),
)

# errno values the firmware answers with (newlib's)
ENOENT, ENOEXEC, ENOMEM, EEXIST, E2BIG = 2, 8, 12, 17, 7

# Kinematic stand-in (see the module docstring): not a vehicle model.
POSITION_LAG_S = 0.15        # first-order lag of the estimate behind the position setpoint
COMMANDER_TIMEOUT_S = 0.5    # the firmware commander's stabilize watchdog
VARIANCE_SETTLED_M2 = 1e-4   # Kalman position variance once settled
VARIANCE_RESET_M2 = 1.0      # ... right after kalman.resetEstimation
VARIANCE_DECAY_S = 0.05


# ----------------------------------------------------------------------------- C source parsing

def _strip_c_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _type_value(expression: str, constants: dict[str, int], where: str) -> int:
    value = 0
    for token in expression.replace("(", " ").replace(")", " ").split("|"):
        token = token.strip()
        if token in constants:
            value |= constants[token]
        elif re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", token):
            value |= int(token, 0)
        else:
            raise ValueError(f"{where}: unknown type symbol {token!r} in {expression.strip()!r}")
    return value


def parse_toc_declarations(text: str, source: str = "C source"
                           ) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """The params and log variables a firmware C file declares: ``(group, name, type)`` in
    declaration order, the type as the firmware's macros compute it (``PARAM_ADD_CORE`` adds
    ``PARAM_CORE``, ``LOG_ADD_BY_FUNCTION`` adds ``LOG_BY_FUNCTION``; ``PARAM_PERSISTENT`` is
    kept above the type byte, as in ``param.h``)."""
    text = _strip_c_comments(text)
    params: list[tuple[str, str, int]] = []
    logs: list[tuple[str, str, int]] = []
    for kind, out, constants in (("PARAM", params, PARAM_CONSTANTS), ("LOG", logs, LOG_CONSTANTS)):
        for group in re.finditer(rf"\b{kind}_GROUP_START\(\s*(\w+)\s*\)(.*?)\b{kind}_GROUP_STOP\(\s*\1\s*\)",
                                 text, re.S):
            name = group.group(1)
            for entry in re.finditer(rf"\b{kind}_ADD(_CORE)?(_WITH_CALLBACK|_BY_FUNCTION|_FULL)?\s*\("
                                     r"\s*([^,]+?)\s*,\s*(\w+)\s*,", group.group(2)):
                value = _type_value(entry.group(3), constants, f"{source}: {name}.{entry.group(4)}")
                if entry.group(1):
                    value |= PARAM_CORE if kind == "PARAM" else LOG_CORE
                if kind == "LOG" and entry.group(2) == "_BY_FUNCTION":
                    value |= LOG_CONSTANTS["LOG_BY_FUNCTION"]
                out.append((name, entry.group(4), value))
    return params, logs


def app_declarations(app_source: Path = APP_SOURCE
                     ) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """The app's params and log variables (``parse_toc_declarations`` of its C source)."""
    app_source = Path(app_source)
    if not app_source.exists():
        raise FileNotFoundError(f"{app_source} is missing: the peer's TOC holds the app's names")
    params, logs = parse_toc_declarations(app_source.read_text(), app_source.name)
    if not params or not logs:
        raise ValueError(f"{app_source} declares no param or no log group")
    return params, logs


# ----------------------------------------------------------------------------- tables of contents

def _type_byte(declared: int) -> int:
    """The type byte a TOC entry stores (param.h's PARAM_ADD_FULL: a type above 8 bits, i.e.
    PARAM_PERSISTENT, becomes the PARAM_EXTENDED flag)."""
    return (declared & 0xFF) | (PARAM_EXTENDED if declared > 0xFF else 0)


@dataclass
class TocEntry:
    ident: int
    group: str
    name: str
    type: int  # as declared (param: may carry PARAM_PERSISTENT above the byte)

    @property
    def complete_name(self) -> str:
        return f"{self.group}.{self.name}"


class Toc:
    """One TOC as the firmware lays it out: per group a start entry, the variables, a stop entry
    (``stop_<group>``); ids count variables only; the CRC chains CRC-32 over each entry's
    (previous CRC, type byte, name), as ``paramLogicInit`` / ``logInit`` compute it."""

    def __init__(self, declarations: Iterable[tuple[str, str, int]], group_flag: int, start_flag: int):
        groups: dict[str, list[tuple[str, int]]] = {}
        for group, name, type_ in declarations:
            entries = groups.setdefault(group, [])
            if any(n == name for n, _ in entries):
                continue  # declared twice (stock and app): the firmware would not link that
            if len(group) + len(name) + 2 > 26:
                raise ValueError(f"'{group}.{name}' is too long for a TOC item (the firmware asserts)")
            entries.append((name, type_))
        self.entries: list[TocEntry] = []
        crc = 0
        for group in sorted(groups):  # the linker sorts the .param.<group> / .log.<group> sections
            rows = [(group, group_flag | start_flag)] + list(groups[group]) + [(f"stop_{group}", group_flag)]
            for name, type_ in rows:
                crc = zlib.crc32(struct.pack("<IB", crc, _type_byte(type_)) + name.encode())
            for name, type_ in groups[group]:
                self.entries.append(TocEntry(len(self.entries), group, name, type_))
        self.crc = crc
        self.by_name = {e.complete_name: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def item(self, ident: int) -> TocEntry | None:
        return self.entries[ident] if 0 <= ident < len(self.entries) else None


# ----------------------------------------------------------------------------- the peer

@dataclass
class PeerEvent:
    """Something the peer received: ``kind`` is "param" (name, value), "arm" (value True/False,
    name "supervisor" or "platform"), "setpoint" (name "position" with value (x, y, z, yaw_deg),
    "stop", or "type<N>" with the raw payload), "notify_setpoint_stop" (value: remain-valid ms),
    "rpyt" (value (roll, pitch, yawrate, thrust)) or "localization"."""
    t: float  # s since the peer started (time.monotonic)
    kind: str
    name: str | None
    value: Any


@dataclass
class KinematicState:
    """The stand-in state behind the logs (not a vehicle model: see the module docstring)."""
    position: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    armed: bool = False
    target: tuple[float, float, float] | None = None
    target_t: float = -math.inf
    stopped: bool = True
    reset_t: float = -math.inf

    def variance(self, t: float) -> float:
        return VARIANCE_SETTLED_M2 + (VARIANCE_RESET_M2 - VARIANCE_SETTLED_M2) * math.exp(
            -max(0.0, t - self.reset_t) / VARIANCE_DECAY_S)

    def step(self, t: float, dt: float) -> None:
        fresh = self.target is not None and not self.stopped and t - self.target_t < COMMANDER_TIMEOUT_S
        if self.armed and fresh:
            goal = list(self.target)
        else:  # no control: back to the ground where it is
            goal = [self.position[0], self.position[1], 0.0]
        k = 1.0 - math.exp(-dt / POSITION_LAG_S)
        for i in range(3):
            self.position[i] += (goal[i] - self.position[i]) * k
        self.position[2] = max(0.0, self.position[2])


@dataclass
class _LogBlock:
    block_id: int
    variables: list[tuple[TocEntry, int]] = field(default_factory=list)  # (entry, fetch type)
    period_s: float = 0.0
    running: bool = False
    next_t: float = 0.0

    def size(self) -> int:
        return sum(struct.calcsize(LOG_FORMATS[fetch]) for _, fetch in self.variables)


class CrazyflieLinkPeer:
    """A UDP server thread that answers cflib as the firmware would (module docstring).

    ``start_position``: where the estimate starts (m, world), e.g. off the origin as with a
    Lighthouse system. ``param_values``: initial values by complete name (default 0; ``deck.bcFlow2`` 1, as with a
    Flow deck v2 mounted). ``log_values``: values or ``callable(state) -> value`` for log
    variables the kinematic stand-in does not produce (default 0).
    ``fail_after_arming_s`` with ``failure`` "silent" (no more answers or log data, while what
    the client sends is still received and recorded: a link that just goes quiet) or "close"
    (socket closed: the client's sends are refused): the link dies that long after the first
    arming request. ``app_channel_handler(payload)``: called on the peer's thread with each
    app-channel packet (none: they are dropped, as by a firmware without an app using it).
    ``app_packets`` / ``app_bytes`` count app-channel packets and their CRTP bytes (header
    included) in each direction: {"in": ..., "out": ...}.
    """

    def __init__(self, app_source: Path = APP_SOURCE, *, host: str = "127.0.0.1", port: int = 0,
                 param_values: dict[str, float] | None = None,
                 log_values: dict[str, float | Callable[[KinematicState], float]] | None = None,
                 start_position: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 fail_after_arming_s: float | None = None, failure: str = "silent",
                 app_channel_handler: Callable[[bytes], None] | None = None):
        if failure not in ("silent", "close"):
            raise ValueError(f"failure must be silent or close, got {failure!r}")
        app_params, app_logs = app_declarations(app_source)
        self.param_toc = Toc(list(STOCK_PARAMS) + app_params, PARAM_GROUP, PARAM_START)
        self.log_toc = Toc(list(STOCK_LOGS) + app_logs, LOG_GROUP, LOG_START)
        values = {"deck.bcFlow2": 1}
        values.update(param_values or {})
        unknown = set(values) - set(self.param_toc.by_name)
        if unknown:
            raise KeyError(f"no such params in the TOC: {sorted(unknown)}")
        self.param_values: dict[str, float] = {e.complete_name: values.get(e.complete_name, 0)
                                               for e in self.param_toc.entries}
        self.log_values = dict(log_values or {})
        self.state = KinematicState(position=[float(v) for v in start_position])
        self.events: list[PeerEvent] = []
        self.fail_after_arming_s = fail_after_arming_s
        self.failure = failure
        self.failed_at: float | None = None
        self._fail_at: float | None = None
        self._blocks: dict[int, _LogBlock] = {}
        self._client: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._silent = False
        self._t0 = time.monotonic()
        self._last_step = 0.0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # room for a burst of packets while this thread waits for a CPU (capped by the OS)
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        except OSError:
            pass
        self._socket.bind((host, port))
        self.address = self._socket.getsockname()
        self._thread = threading.Thread(target=self._run, name="CrazyflieLinkPeer", daemon=True)
        self.app_channel_handler = app_channel_handler
        self.app_packets = {"in": 0, "out": 0}
        self.connections = 0  # cflib connection setups seen (each starts with a version request)
        self.app_bytes = {"in": 0, "out": 0}

    # -- lifetime

    @property
    def uri(self) -> str:
        return f"udp://{self.address[0]}:{self.address[1]}"

    def start(self) -> "CrazyflieLinkPeer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        try:
            self._socket.close()
        except OSError:
            pass

    def __enter__(self) -> "CrazyflieLinkPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def go_silent(self) -> None:
        """Stop answering and logging from now on; what arrives is still recorded."""
        self._silent = True
        self.failed_at = self.now()

    def events_of(self, kind: str, name: str | None = None) -> list[PeerEvent]:
        with self._lock:
            return [e for e in self.events if e.kind == kind and (name is None or e.name == name)]

    # -- the server loop

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.now()
            if self._fail_at is not None and now >= self._fail_at and self.failed_at is None:
                if self.failure == "close":
                    self.failed_at = now
                    self._socket.close()
                    return
                self.go_silent()
            due = [b.next_t for b in self._blocks.values() if b.running]
            wait = min([0.01] + [d - now for d in due])
            self._socket.settimeout(max(0.0005, wait))
            try:
                datagram, address = self._socket.recvfrom(64)
            except socket.timeout:
                datagram = None
            except OSError:
                if self._stop.is_set():
                    return
                continue  # e.g. ICMP port unreachable from a client that closed its socket
            now = self.now()
            self._advance(now)
            if datagram:  # heard and recorded even when silent (only the answers are lost)
                self._client = address
                self._handle(datagram[0], datagram[1:], now)
            if not self._silent:
                self._send_due_logs(now)

    def _advance(self, now: float) -> None:
        dt = now - self._last_step
        if dt > 0:
            self.state.step(now, dt)
            self._last_step = now

    def _send(self, port: int, channel: int, data: bytes) -> None:
        if self._client is None or self._silent:
            return
        header = (port & 0x0F) << 4 | 3 << 2 | (channel & 0x03)
        try:
            self._socket.sendto(bytes([header]) + bytes(data[:CRTP_MAX_DATA_SIZE]), self._client)
        except OSError:
            pass  # the client is gone; a radio would just lose the packet

    def _record(self, t: float, kind: str, name: str | None, value: Any) -> None:
        with self._lock:
            self.events.append(PeerEvent(t, kind, name, value))

    def _handle(self, header: int, data: bytes, t: float) -> None:
        port, channel = header >> 4 & 0x0F, header & 0x03
        if header == 0xFF and not data:  # null packet (cflib's UDP scan probe)
            self._send(PORT_LINK, 3, b"")
            return
        handler = {PORT_LINK: self._link, PORT_PLATFORM: self._platform,
                   PORT_SUPERVISOR: self._supervisor, PORT_MEM: self._mem,
                   PORT_PARAM: self._param, PORT_LOG: self._log,
                   PORT_COMMANDER: self._commander, PORT_COMMANDER_GENERIC: self._commander_generic,
                   PORT_LOCALIZATION: self._localization}.get(port)
        if handler is not None and (data or port == PORT_LINK):
            handler(channel, data, t)

    # -- link, platform, supervisor, mem

    def _link(self, channel: int, data: bytes, t: float) -> None:
        if channel == 0:  # echo
            self._send(PORT_LINK, 0, data)
        elif channel == 1:  # source: the magic string cflib checks before asking the version
            self._send(PORT_LINK, 1, b"Bitcraze Crazyflie".ljust(CRTP_MAX_DATA_SIZE, b"\0"))

    def send_app(self, data: bytes) -> None:
        """Send bytes on the app channel, cut into packets of at most 30 bytes (the app's
        appchannelSendDataPacketBlock calls)."""
        for start in range(0, len(data), CRTP_MAX_DATA_SIZE):
            packet = bytes(data[start:start + CRTP_MAX_DATA_SIZE])
            self.app_packets["out"] += 1
            self.app_bytes["out"] += len(packet) + 1
            self._send(PORT_PLATFORM, PLATFORM_CHANNEL_APP, packet)

    def _platform(self, channel: int, data: bytes, t: float) -> None:
        if channel == PLATFORM_CHANNEL_APP:
            self.app_packets["in"] += 1
            self.app_bytes["in"] += len(data) + 1
            if self.app_channel_handler is not None:
                self.app_channel_handler(bytes(data))
        elif channel == 1:  # version commands
            if data[0] == 0:
                self.connections += 1
                self._send(PORT_PLATFORM, 1, struct.pack("<Bi", 0, CRTP_PROTOCOL_VERSION))
            elif data[0] == 1:
                self._send(PORT_PLATFORM, 1, b"\x01" + FIRMWARE_VERSION.encode())
            elif data[0] == 2:
                self._send(PORT_PLATFORM, 1, b"\x02" + DEVICE_TYPE.encode())
        elif channel == 0 and data[0] == 1:  # deprecated arming request
            armed = self._arm(bool(data[1]) if len(data) > 1 else None, "platform", t)
            self._send(PORT_PLATFORM, 0, bytes([1, len(data) > 1, armed]))

    def _arm(self, do_arm: bool | None, via: str, t: float) -> bool:
        if do_arm is not None:
            self._record(t, "arm", via, do_arm)
            self.state.armed = do_arm
            if do_arm and self.fail_after_arming_s is not None and self._fail_at is None:
                self._fail_at = t + self.fail_after_arming_s
        return self.state.armed

    def _bitfield(self) -> int:
        armed = self.state.armed
        flying = armed and self.state.position[2] > 0.05
        return 1 | armed << 1 | armed << 3 | flying << 4

    def _supervisor(self, channel: int, data: bytes, t: float) -> None:
        command = data[0]
        if channel == 1 and command == 0x01:  # CMD_ARM_SYSTEM
            armed = self._arm(bool(data[1]) if len(data) > 1 else False, "supervisor", t)
            self._send(PORT_SUPERVISOR, 1, bytes([0x80 | command, 1, armed]))
        elif channel == 0 and command == 0x0C:  # CMD_GET_STATE_BITFIELD
            self._send(PORT_SUPERVISOR, 0, bytes([0x80 | command]) + struct.pack("<H", self._bitfield()))

    def _mem(self, channel: int, data: bytes, t: float) -> None:
        if channel == 0 and data[0] == 1:  # CMD_INFO_NBR: no memories
            self._send(PORT_MEM, 0, bytes([1, 0]))

    # -- params

    def _param_bytes(self, entry: TocEntry) -> bytes:
        fmt = "<" + PARAM_FORMATS[entry.type & 0x0F]
        value = self.param_values[entry.complete_name]
        return struct.pack(fmt, value if fmt[-1] in "efd" else int(value))

    def _param(self, channel: int, data: bytes, t: float) -> None:
        toc = self.param_toc
        if channel == 0:
            if data[0] == 3:  # CMD_TOC_INFO_V2
                self._send(PORT_PARAM, 0, struct.pack("<BHI", 3, len(toc), toc.crc))
            elif data[0] == 2 and len(data) >= 3:  # CMD_TOC_ITEM_V2
                ident = struct.unpack_from("<H", data, 1)[0]
                entry = toc.item(ident)
                if entry is None:
                    self._send(PORT_PARAM, 0, b"\x02")
                else:
                    self._send(PORT_PARAM, 0, struct.pack("<BHB", 2, ident, _type_byte(entry.type))
                               + entry.group.encode() + b"\0" + entry.name.encode() + b"\0")
        elif channel == 1 and len(data) >= 2:  # read: [id] -> [id, status, value]
            ident = struct.unpack_from("<H", data)[0]
            entry = toc.item(ident)
            if entry is None:
                self._send(PORT_PARAM, 1, data[:2] + bytes([ENOENT]))
            else:
                self._send(PORT_PARAM, 1, data[:2] + b"\0" + self._param_bytes(entry))
        elif channel == 2 and len(data) >= 3:  # write: [id, value] -> echo
            ident = struct.unpack_from("<H", data)[0]
            entry = toc.item(ident)
            if entry is None:
                self._send(PORT_PARAM, 2, data[:2] + bytes([ENOENT]))
                return
            if entry.type & PARAM_RONLY:
                return  # the firmware ignores it without an answer
            self._write_param(entry, data[2:], t)
            self._send(PORT_PARAM, 2, data[:2] + self._param_bytes(entry))
        elif channel == 3:
            self._param_misc(data, t)

    def _write_param(self, entry: TocEntry, raw: bytes, t: float) -> None:
        fmt = "<" + PARAM_FORMATS[entry.type & 0x0F]
        value = struct.unpack_from(fmt, raw.ljust(struct.calcsize(fmt), b"\0"))[0]
        self.param_values[entry.complete_name] = value
        self._record(t, "param", entry.complete_name, value)
        if entry.complete_name == "kalman.resetEstimation" and value:
            self.state.reset_t = t

    def _param_misc(self, data: bytes, t: float) -> None:
        command = data[0]
        if command in (7, 8) and len(data) >= 3:  # extended type / default value, v2 replies
            entry = self.param_toc.item(struct.unpack_from("<H", data, 1)[0])
            if entry is None:
                self._send(PORT_PARAM, 3, data[:3] + bytes([ENOENT]))
            elif command == 7:
                self._send(PORT_PARAM, 3, data[:3] + bytes([0, entry.type >> 8 & 0xFF]))
            else:
                self._send(PORT_PARAM, 3, data[:3] + b"\0" + struct.pack(
                    "<" + PARAM_FORMATS[entry.type & 0x0F], 0))
        elif command == 0:  # set by name: [0, group\0name\0, type, value] -> [0, group\0name\0, error]
            parts = data[1:].split(b"\0", 2)
            if len(parts) < 3 or not parts[2]:
                return
            group, name, rest = parts[0].decode(), parts[1].decode(), parts[2]
            entry = self.param_toc.by_name.get(f"{group}.{name}")
            head = data[:len(data) - len(rest)]
            if entry is None:
                error = ENOENT
            elif rest[0] != entry.type & ~(PARAM_CORE | PARAM_RONLY | PARAM_EXTENDED) & 0xFF:
                error = 22  # EINVAL
            elif entry.type & PARAM_RONLY:
                error = 13  # EACCES
            else:
                self._write_param(entry, rest[1:], t)
                error = 0
            self._send(PORT_PARAM, 3, head + bytes([error]))

    # -- log

    def _log_value(self, entry: TocEntry) -> float:
        name = entry.complete_name
        s = self.state
        if entry.group == "stateEstimate" and entry.name in ("x", "y", "z"):
            return s.position["xyz".index(entry.name)]
        if entry.group == "kalman" and entry.name in ("varPX", "varPY", "varPZ"):
            return s.variance(self.now())
        value = self.log_values.get(name, 0.0)
        return float(value(s) if callable(value) else value)

    def _log(self, channel: int, data: bytes, t: float) -> None:
        toc = self.log_toc
        if channel == 0:
            if data[0] == 3:  # CMD_GET_INFO_V2
                self._send(PORT_LOG, 0, struct.pack("<BHIBB", 3, len(toc), toc.crc,
                                                    LOG_MAX_BLOCKS, LOG_MAX_OPS))
            elif data[0] == 2 and len(data) >= 3:  # CMD_GET_ITEM_V2
                ident = struct.unpack_from("<H", data, 1)[0]
                entry = toc.item(ident)
                if entry is None:
                    self._send(PORT_LOG, 0, b"\x02")
                else:
                    self._send(PORT_LOG, 0, struct.pack("<BHB", 2, ident, entry.type & LOG_TYPE_MASK)
                               + entry.group.encode() + b"\0" + entry.name.encode() + b"\0")
        elif channel == 1:
            command = data[0]
            block_id = data[1] if len(data) > 1 else 0
            result = self._log_control(command, block_id, data, t)
            self._send(PORT_LOG, 1, bytes([command, block_id, result]))

    def _log_control(self, command: int, block_id: int, data: bytes, t: float) -> int:
        blocks = self._blocks
        if command == 5:  # reset
            blocks.clear()
            return 0
        if command in (6, 7):  # create / append, v2: [cmd, id, (fetch type, var id u16)...]
            if command == 6:
                if block_id in blocks:
                    return EEXIST
                if len(blocks) >= LOG_MAX_BLOCKS:
                    return ENOMEM
                blocks[block_id] = _LogBlock(block_id)
            block = blocks.get(block_id)
            if block is None:
                return ENOENT
            for offset in range(2, len(data) - 2, 3):
                fetch, ident = struct.unpack_from("<BH", data, offset)
                entry = self.log_toc.item(ident)
                if entry is None or fetch & LOG_TYPE_MASK not in LOG_FORMATS:
                    return ENOENT  # memory variables (id 0xFFFF) are not supported here
                if block.size() + struct.calcsize(LOG_FORMATS[fetch & LOG_TYPE_MASK]) > LOG_MAX_LEN:
                    return E2BIG
                block.variables.append((entry, fetch & LOG_TYPE_MASK))
            return 0
        block = blocks.get(block_id)
        if command in (3, 8):  # start: period in 10 ms units / (v2) u16 ms
            if block is None:
                return ENOENT
            period_ms = data[2] * 10 if command == 3 else struct.unpack_from("<H", data, 2)[0]
            block.period_s = period_ms / 1000.0
            block.running = period_ms > 0
            block.next_t = t + block.period_s
            if period_ms == 0:
                self._send_block(block, t)  # single shot
            return 0
        if command == 4:  # stop
            if block is None:
                return ENOENT
            block.running = False
            return 0
        if command == 2:  # delete
            return 0 if blocks.pop(block_id, None) is not None else ENOENT
        return ENOEXEC

    def _send_block(self, block: _LogBlock, t: float) -> None:
        timestamp_ms = int(t * 1000) & 0xFFFFFF
        payload = bytes([block.block_id]) + struct.pack("<I", timestamp_ms)[:3]
        for entry, fetch in block.variables:
            value = self._log_value(entry)
            fmt = LOG_FORMATS[fetch]
            if fmt in "fe":
                payload += struct.pack("<" + fmt, value)
            else:  # the firmware casts the stored value to the fetch type's integer
                bits = 8 * struct.calcsize(fmt)
                as_int = int(value) & ((1 << bits) - 1)
                payload += struct.pack("<" + fmt.upper(), as_int)
        self._send(PORT_LOG, 2, payload)

    def _send_due_logs(self, now: float) -> None:
        for block in list(self._blocks.values()):
            if block.running and now >= block.next_t:
                self._send_block(block, now)
                block.next_t += block.period_s
                if block.next_t < now:  # fell behind (a busy machine): no burst
                    block.next_t = now + block.period_s

    # -- commanders

    def _commander(self, channel: int, data: bytes, t: float) -> None:
        if channel == 0 and len(data) >= 14:  # roll, pitch, yawrate, thrust
            roll, pitch, yawrate, thrust = struct.unpack_from("<fffH", data)
            self._record(t, "rpyt", None, (roll, pitch, yawrate, thrust))
            if thrust == 0:
                self.state.stopped = True

    def _commander_generic(self, channel: int, data: bytes, t: float) -> None:
        if channel == 0:
            kind = data[0]
            if kind == 7 and len(data) >= 17:  # position: x, y, z (m), yaw (deg)
                x, y, z, yaw = struct.unpack_from("<ffff", data, 1)
                self._record(t, "setpoint", "position", (x, y, z, yaw))
                self.state.target, self.state.target_t, self.state.stopped = (x, y, z), t, False
            elif kind == 0:
                self._record(t, "setpoint", "stop", None)
                self.state.stopped = True
            else:
                self._record(t, "setpoint", f"type{kind}", bytes(data[1:]))
        elif channel == 1 and data[0] == 0 and len(data) >= 5:  # notify setpoint stop
            self._record(t, "notify_setpoint_stop", None, struct.unpack_from("<I", data, 1)[0])

    def _localization(self, channel: int, data: bytes, t: float) -> None:
        self._record(t, "localization", str(channel), bytes(data))
