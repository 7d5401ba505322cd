"""A TCP proxy that injects link faults between a bridge client and QEMU's serial port.

    with FaultProxy(board_port, to_board=[Corrupt(1e-3, seed=1)]) as proxy:
        client = BridgeClient(proxy.url)

Faults are small objects applied to each chunk of bytes in one direction (``to_board``:
client -> QEMU, ``to_host``: QEMU -> client). Each sees the stream in order and may change,
drop or add bytes; ``Disconnect`` closes the connection. Random faults take a seed, so a
failing run can be repeated.
"""
from __future__ import annotations

import random
import select
import socket
import threading


class Fault:
    """Base class: passes bytes through unchanged."""

    disconnect = False  # set by a fault to make the proxy close both sides

    def __call__(self, data: bytes) -> bytes:
        return data


class Corrupt(Fault):
    """Flip one random bit of a byte: each byte with probability ``p``, and/or every
    ``every``-th byte (deterministic), after the first ``after_bytes``. A flip can create or
    destroy a 0x00 delimiter, splitting or merging frames, as on a real line."""

    def __init__(self, p: float = 0.0, seed: int = 0, *, every: int = 0, after_bytes: int = 0):
        self.p, self.every, self.rng, self.after = p, every, random.Random(seed), after_bytes
        self.seen = self.count = 0

    def _hit(self) -> bool:
        self.seen += 1
        if self.seen <= self.after:
            return False
        return bool(self.every and self.seen % self.every == 0) or self.rng.random() < self.p

    def __call__(self, data: bytes) -> bytes:
        out = bytearray(data)
        for i in range(len(out)):
            if self._hit():
                out[i] ^= 1 << self.rng.randrange(8)
                self.count += 1
        return bytes(out)


class Drop(Corrupt):
    """Drop a byte: each with probability ``p``, and/or every ``every``-th one."""

    def __call__(self, data: bytes) -> bytes:
        keep = bytearray()
        for b in data:
            if self._hit():
                self.count += 1
            else:
                keep.append(b)
        return bytes(keep)


class Damage(Fault):
    """A noisy line: each byte, with probability ``p`` (after the first ``after_bytes``), is
    damaged in one of ``kinds``, chosen at random: ``"flip"`` (one random bit), ``"drop"``
    (lost) or ``"duplicate"`` (sent twice). Counts per kind in :attr:`counts`."""

    KINDS = ("flip", "drop", "duplicate")

    def __init__(self, p: float, seed: int = 0, *, kinds=KINDS, after_bytes: int = 0):
        unknown = set(kinds) - set(self.KINDS)
        if unknown or not kinds:
            raise ValueError(f"damage kinds must be some of {self.KINDS}, got {kinds!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"damage probability must be in [0, 1], got {p!r}")
        self.p, self.kinds, self.rng, self.after = p, tuple(kinds), random.Random(seed), after_bytes
        self.seen = 0
        self.counts = {kind: 0 for kind in self.kinds}

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            self.seen += 1
            if self.seen <= self.after or self.rng.random() >= self.p:
                out.append(b)
                continue
            kind = self.kinds[self.rng.randrange(len(self.kinds))]
            self.counts[kind] += 1
            if kind == "flip":
                out.append(b ^ (1 << self.rng.randrange(8)))
            elif kind == "duplicate":
                out += bytes((b, b))
        return bytes(out)


class DuplicateFrames(Fault):
    """Send every ``every``-th complete frame (bytes up to a 0x00 delimiter) twice."""

    def __init__(self, every: int = 1):
        self.every, self.count, self._n = every, 0, 0
        self._pending = bytearray()

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            self._pending.append(b)
            if b == 0:
                segment = bytes(self._pending)
                self._pending.clear()
                out += segment
                if len(segment) > 1:
                    self._n += 1
                    if self._n % self.every == 0:
                        out += segment
                        self.count += 1
        return bytes(out)


class Blackhole(Fault):
    """Forward the first ``after_bytes`` bytes, then swallow everything (a line gone dead)."""

    def __init__(self, after_bytes: int):
        self.after, self.seen = after_bytes, 0

    def __call__(self, data: bytes) -> bytes:
        keep = max(0, min(len(data), self.after - self.seen))
        self.seen += len(data)
        return data[:keep]


class Disconnect(Fault):
    """Forward ``after_bytes`` bytes, then drop the connection (once; later connections pass)."""

    def __init__(self, after_bytes: int):
        self.after, self.seen, self.fired = after_bytes, 0, False

    def __call__(self, data: bytes) -> bytes:
        if self.fired:
            return data
        keep = max(0, min(len(data), self.after - self.seen))
        self.seen += len(data)
        if self.seen >= self.after:
            self.fired = True
            self.disconnect = True
        return data[:keep]


class FaultProxy:
    """Listen on a free local port; for each client open a fresh connection to the board."""

    def __init__(self, upstream_port: int, *, to_board: list[Fault] | None = None,
                 to_host: list[Fault] | None = None, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.to_board = list(to_board or [])
        self.to_host = list(to_host or [])
        self.bytes_to_board = 0
        self.bytes_to_host = 0
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            client, _ = self._listener.accept()
            self.connections += 1
            try:
                board = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, board):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._pump(client, board)
            finally:
                client.close()
                board.close()

    def _pump(self, client: socket.socket, board: socket.socket) -> None:
        routes = {client: (board, self.to_board, "bytes_to_board"),
                  board: (client, self.to_host, "bytes_to_host")}
        while not self._stop.is_set():
            ready, _, _ = select.select([client, board], [], [], 0.05)
            for src in ready:
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return  # one side closed: close the other too
                dst, faults, counter = routes[src]
                for fault in faults:
                    data = fault(data)
                setattr(self, counter, getattr(self, counter) + len(data))
                if data:
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                if any(f.disconnect for f in faults):
                    for f in faults:
                        f.disconnect = False
                    return
