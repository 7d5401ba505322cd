"""How big each CHUNK of an upload is, and how long to wait for its reply, on a link that may
damage bytes.

A frame is accepted only if every one of its bytes arrives intact (COBS + CRC-32), so on a line
that damages a fraction *p* of bytes an *n*-byte frame and its reply get through with
probability about ``(1 - p) ** (n + 30)``: at p = 0.5 % a 2 KB chunk almost never does, a
128-byte one about half the time. :class:`ChunkSizeController` therefore adapts the chunk
size the way TCP adapts its window (additive increase, multiplicative decrease): it starts at
the largest size (a clean link never leaves it), halves on every lost or damaged exchange down
to a floor, and grows by a fixed step after every chunk that got through. On a damaged link
it settles where a step up is about as likely to be undone by a loss as not, i.e. near
``sqrt(2 * step / p)`` bytes.

A lost frame is only noticed by its reply not coming, so on such a link the wait for a reply
decides the upload time as much as the chunk size. :class:`ReplyTimer` estimates it from the
round trips of the replies that did come (Jacobson's smoothed mean + 4 deviations, as TCP's
retransmission timer) and never waits longer than the client's own timeout. Unlike TCP it does
not double the wait after every loss: one frame is in flight at a time, so a loss is damage,
not congestion, and waiting longer would only slow a noisy link down. A reply that turns up
after its wait ended (a slow board) is a sample too: the time since its request was sent.
Both classes are pure: they see events, not the link.
"""
from __future__ import annotations

MIN_CHUNK_BYTES = 64      # floor of the adaptive chunk: 11 framing + 4 offset bytes are ~20 %
GROW_CHUNK_BYTES = 64     # added after each chunk that got through
# Shortest wait beyond the request's time on the wire (frame bytes / the client's slowest
# expected link rate, which already leaves a margin on every link but a real UART's, where
# the measured round trips decide).
MIN_REPLY_WAIT_S = 0.005
# A CHUNK's wait also covers this fraction of its estimated wire time again: a link's rate
# varies (QEMU takes in bytes more slowly on a busy host), and a full-size chunk resent for
# nothing costs 13 % of a 15 KB upload's bytes.
WIRE_MARGIN = 0.5
# Losses in a row at the floor before the board counts as not answering. A link that damages
# 0.5 % of bytes loses ~40 % of even the smallest chunk exchanges, so a few in a row are
# expected; 12 in a row happen once in ~10^5 chunks there, and almost always mean a dead link.
LOSSES_AT_FLOOR_LIMIT = 12


class ChunkSizeController:
    """Chunk size of an upload: starts at ``max_bytes``, halves on each loss (not below
    ``min_bytes``), grows by ``grow_bytes`` on each success (not above ``max_bytes``).

    ``min_bytes`` above ``max_bytes`` is lowered to it (a fixed chunk size)."""

    def __init__(self, max_bytes: int, *, min_bytes: int = MIN_CHUNK_BYTES,
                 grow_bytes: int = GROW_CHUNK_BYTES):
        if max_bytes < 1 or min_bytes < 1 or grow_bytes < 1:
            raise ValueError(f"chunk sizes must be >= 1 byte, got max {max_bytes}, min "
                             f"{min_bytes}, step {grow_bytes}")
        self.max_bytes = int(max_bytes)
        self.min_bytes = min(int(min_bytes), self.max_bytes)
        self.grow_bytes = int(grow_bytes)
        self.size = self.max_bytes
        self.smallest = self.size      # smallest size used so far
        self.successes = 0
        self.losses = 0
        self.shrinks = 0               # losses that made the chunk smaller
        self.losses_at_floor = 0       # losses in a row of chunks already at min_bytes
        self.bytes_acked = 0           # sum of the sizes of the chunks that got through

    def on_success(self, sent_bytes: int | None = None) -> None:
        """A chunk of ``sent_bytes`` (default: the current size) got its reply."""
        self.successes += 1
        self.bytes_acked += self.size if sent_bytes is None else int(sent_bytes)
        self.losses_at_floor = 0
        self.size = min(self.max_bytes, self.size + self.grow_bytes)

    def on_loss(self) -> None:
        """A chunk got no reply in time (lost or damaged on the way there or back)."""
        self.losses += 1
        if self.size <= self.min_bytes:
            self.losses_at_floor += 1
        else:
            self.shrinks += 1
        self.size = max(self.min_bytes, self.size // 2)
        self.smallest = min(self.smallest, self.size)

    def gave_up(self, limit: int = LOSSES_AT_FLOOR_LIMIT) -> bool:
        """True once ``limit`` chunks in a row were lost at the smallest size."""
        return self.losses_at_floor >= limit

    def as_dict(self) -> dict:
        mean = self.bytes_acked / self.successes if self.successes else None
        return {"chunk_bytes_max": self.max_bytes, "chunk_bytes_min": self.min_bytes,
                "chunk_bytes_smallest_used": self.smallest, "chunk_bytes_last": self.size,
                "chunk_bytes_mean": mean, "chunks_ok": self.successes,
                "chunks_lost": self.losses, "chunk_shrinks": self.shrinks}


class ReplyTimer:
    """How long to wait for a reply beyond the request's own time on the wire.

    Starts at ``initial_s``; each :meth:`sample` (a round trip minus the request's wire time,
    from a reply that answered its first attempt) updates the smoothed mean and deviation
    and sets the wait to ``mean + 4 * deviation``; :meth:`backoff` doubles it (a late reply
    whose round trip cannot be bounded).
    Always within [``min_s``, ``max_s``]."""

    def __init__(self, initial_s: float, *, min_s: float = MIN_REPLY_WAIT_S,
                 max_s: float | None = None):
        self.max_s = float(initial_s if max_s is None else max_s)
        self.min_s = min(float(min_s), self.max_s)
        self.wait_s = min(max(float(initial_s), self.min_s), self.max_s)
        self.mean_s: float | None = None
        self.deviation_s = 0.0

    def sample(self, excess_s: float) -> None:
        x = max(0.0, float(excess_s))
        if self.mean_s is None:
            self.mean_s, self.deviation_s = x, x / 2
        else:
            self.deviation_s = 0.75 * self.deviation_s + 0.25 * abs(self.mean_s - x)
            self.mean_s = 0.875 * self.mean_s + 0.125 * x
        self.wait_s = min(self.max_s, max(self.min_s, self.mean_s + 4 * self.deviation_s))

    def backoff(self) -> None:
        self.wait_s = min(self.max_s, 2 * self.wait_s)
