"""The bridge protocol's byte stream over a Crazyflie's CRTP app channel, through cflib.

:class:`AppChannelPort` looks to :class:`~nanofly.firmware_bridge.client.BridgeClient` like a
pyserial port (``write``, ``read``, ``in_waiting``, ``close``), so the upload, its retries and
its errors are the serial path's. Each ``write`` is cut into CRTP packets of at most 30 bytes
sent with ``cf.appchannel.send_packet`` (CRTP port 13 "platform", channel 2: the firmware's
``platformservice.c`` hands those packets to ``app_channel.c``); what the app sends back arrives
through ``cf.appchannel.packet_received`` and is read as one byte stream. The app channel has no
framing of its own: packet boundaries carry no meaning, the bridge frames do (``protocol.py``).

Any cflib URI works: ``radio://0/80/2M/E7E7E7E7E7`` (Crazyradio), ``usb://0`` (USB cable),
``udp://127.0.0.1:PORT`` (``nanofly crazyflie sitl``).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

APP_CHANNEL_MTU = 30            # payload bytes of one CRTP packet (the firmware's APPCHANNEL_MTU)
CRTP_HEADER_BYTES = 1           # the port/channel byte in front of each packet on the air
CFLIB_SCHEMES = ("radio://", "usb://", "udp://", "debug://")

# Packets per second the link carries at least, to size reply timeouts: cflib's own system tests
# expect more than 450 packets/s over the radio and 1000 over USB; a radio at range or among
# other 2.4 GHz traffic loses some, hence the margin. UDP (the host stand-in) is not limited.
PACKETS_PER_S = {"radio://": 300.0, "usb://": 700.0, "udp://": 5000.0, "debug://": 5000.0}

# cflib's radio and USB drivers send one packet per radio/USB round trip, so a burst waits for
# the link; its UDP driver sends at once. A UDP peer (the stand-in) then sees bursts its socket
# buffer may not hold on a busy machine, so writes to udp:// are paced at its packet rate,
# in bursts of at most UDP_BURST_PACKETS.
UDP_BURST_PACKETS = 32

CONNECT_TIMEOUT_S = 20.0  # the first connection downloads the param/log tables (cached after)


def is_cflib_uri(url: str) -> bool:
    return str(url).startswith(CFLIB_SCHEMES)


def link_bytes_per_s(uri: str) -> float:
    """The slowest payload rate (bytes/s, host to Crazyflie) the timeouts assume for ``uri``."""
    for scheme, rate in PACKETS_PER_S.items():
        if uri.startswith(scheme):
            return rate * APP_CHANNEL_MTU
    raise ValueError(f"{uri!r} is not a cflib URI ({', '.join(CFLIB_SCHEMES)})")


def crtp_wire_bytes(payload_bytes: int) -> int:
    """Bytes a stream of ``payload_bytes`` takes on the CRTP link: full 30-byte packets plus one
    header byte each (what the radio carries, without its own preamble and CRC)."""
    packets = -(-payload_bytes // APP_CHANNEL_MTU)
    return payload_bytes + packets * CRTP_HEADER_BYTES


class AppChannelPort:
    """A cflib link used as a byte stream (module docstring). Raises ``ConnectionError`` (an
    ``OSError``) when cflib cannot connect or reports the link lost.

    ``packets_sent`` / ``packets_received`` / ``crtp_bytes_sent`` / ``crtp_bytes_received``
    count app-channel packets and their bytes with the CRTP header byte."""

    def __init__(self, uri: str, *, timeout: float = 0.02, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        if cflib_missing():
            raise ConnectionError(f"cflib is needed for {uri}; pip install cflib")
        self.uri = uri
        self.timeout = timeout
        self.packets_sent = self.packets_received = 0
        self.crtp_bytes_sent = self.crtp_bytes_received = 0
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._settled = threading.Event()
        self._failure: str | None = None
        self._lost: str | None = None
        self._connected = False
        self._paced = uri.startswith("udp://")
        self._packet_interval_s = 1.0 / PACKETS_PER_S["udp://"]
        self._next_send = 0.0
        cf = new_crazyflie()
        self._cf = cf
        cf.connected.add_callback(self._on_connected)
        cf.connection_failed.add_callback(self._on_failed)
        cf.connection_lost.add_callback(self._on_lost)
        cf.appchannel.packet_received.add_callback(self._on_packet)
        try:
            cf.open_link(uri)
        except Exception as exc:  # cflib raises plain Exceptions for bad URIs and missing dongles
            self._failure = str(exc)
            self._settled.set()
        if not self._settled.wait(connect_timeout_s) or not self._connected:
            reason = _first_line(self._failure) if self._failure else \
                f"no answer within {connect_timeout_s:.0f} s"
            self.close()
            raise ConnectionError(f"cannot connect to {uri}: {reason} (check the Crazyradio or USB "
                                  f"cable, the URI, and that the Crazyflie is on)")

    # cflib's callbacks (its own threads)
    def _on_connected(self, uri) -> None:
        self._connected = True
        self._settled.set()

    def _on_failed(self, uri, message) -> None:
        self._failure = message
        self._settled.set()

    def _on_lost(self, uri, message) -> None:
        with self._cond:
            self._lost = message or "cflib closed the link"
            self._cond.notify_all()

    def _on_packet(self, data) -> None:
        with self._cond:
            self._buffer += bytes(data)
            self.packets_received += 1
            self.crtp_bytes_received += len(data) + CRTP_HEADER_BYTES
            self._cond.notify_all()

    @property
    def crazyflie(self):
        """cflib's ``Crazyflie`` of this link (params, logs, arming on the same connection);
        None once closed."""
        return self._cf

    # the pyserial subset BridgeClient uses
    def _check(self) -> None:
        if self._cf is None:
            raise ConnectionError(f"{self.uri}: not connected")
        if self._lost is not None:
            raise ConnectionError(f"{self.uri}: link lost ({_first_line(self._lost)})")

    def write(self, data: bytes) -> int:
        self._check()
        data = bytes(data)
        for start in range(0, len(data), APP_CHANNEL_MTU):
            packet = data[start:start + APP_CHANNEL_MTU]
            if self._paced:
                now = time.monotonic()
                if self._next_send - now > UDP_BURST_PACKETS * self._packet_interval_s:
                    time.sleep(self._next_send - now - UDP_BURST_PACKETS * self._packet_interval_s)
                self._next_send = max(self._next_send, now) + self._packet_interval_s
            self._cf.appchannel.send_packet(packet)
            self.packets_sent += 1
            self.crtp_bytes_sent += len(packet) + CRTP_HEADER_BYTES
        return len(data)

    @property
    def in_waiting(self) -> int:
        self._check()
        return len(self._buffer)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes; waits at most ``timeout`` seconds for the first one."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while not self._buffer:
                self._check()
                left = deadline - time.monotonic()
                if left <= 0:
                    return b""
                self._cond.wait(left)
            out = bytes(self._buffer[:size])
            del self._buffer[:size]
            return out

    def close(self) -> None:
        cf, self._cf = self._cf, None
        if cf is not None:
            try:
                cf.close_link()
            except Exception:  # closing a link that never opened
                pass


def cflib_missing() -> bool:
    """True when cflib (the Crazyflie client library, PyPI) is not installed."""
    import importlib.util

    return importlib.util.find_spec("cflib") is None


def new_crazyflie():
    """A cflib Crazyflie with its drivers initialised and its TOC cache in nanofly's cache
    folder (the param/log tables then download once per firmware). cflib logs link errors with
    tracebacks; callers turn them into one line, so its logger gets a null handler."""
    import cflib.crtp
    from cflib.crazyflie import Crazyflie

    logging.getLogger("cflib").addHandler(logging.NullHandler())
    cflib.crtp.init_drivers()
    cache = Path.home() / ".cache" / "nanofly" / "cflib"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Crazyflie(rw_cache=str(cache))
    except OSError:
        return Crazyflie()


def _first_line(text) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
