"""The adaptive chunk size and reply wait of the upload (nanofly.firmware_bridge.chunking),
without a board: loss and success events, and a simulated line that damages each byte with a
given probability."""
from __future__ import annotations

import random

import pytest

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.chunking import (LOSSES_AT_FLOOR_LIMIT, ChunkSizeController,
                                              ReplyTimer)


def test_starts_at_the_largest_and_stays_there_without_losses():
    c = ChunkSizeController(2044)
    for _ in range(100):
        assert c.size == 2044
        c.on_success()
    assert c.smallest == 2044 and c.losses == 0 and c.bytes_acked == 100 * 2044


def test_shrinks_by_half_on_each_loss_down_to_the_floor_and_no_further():
    c = ChunkSizeController(2044, min_bytes=64)
    sizes = []
    for _ in range(10):
        c.on_loss()
        sizes.append(c.size)
    assert sizes == [1022, 511, 255, 127, 64, 64, 64, 64, 64, 64]
    assert c.shrinks == 5 and c.losses_at_floor == 5 and c.smallest == 64


def test_grows_back_by_the_step_up_to_the_maximum():
    c = ChunkSizeController(1000, min_bytes=64, grow_bytes=64)
    for _ in range(6):
        c.on_loss()
    assert c.size == 64
    for k in range(1, 16):
        c.on_success()
        assert c.size == min(1000, 64 + 64 * k)
    assert c.size == 1000
    c.on_success()
    assert c.size == 1000


def test_gives_up_only_after_losses_in_a_row_at_the_floor():
    c = ChunkSizeController(2044)
    for _ in range(5):          # 2044 -> 64: shrinking, not yet at the floor
        c.on_loss()
    for _ in range(LOSSES_AT_FLOOR_LIMIT - 1):
        c.on_loss()
        assert not c.gave_up()
    c.on_success()              # one reply resets the count
    c.on_loss()
    c.on_loss()                 # 128 -> 64 -> 64: only the second counts at the floor
    assert c.losses_at_floor == 1 and not c.gave_up()
    for _ in range(LOSSES_AT_FLOOR_LIMIT - 1):
        c.on_loss()
    assert c.gave_up() and c.gave_up(LOSSES_AT_FLOOR_LIMIT) and not c.gave_up(LOSSES_AT_FLOOR_LIMIT + 1)


def test_a_maximum_below_the_floor_is_a_fixed_size():
    c = ChunkSizeController(32, min_bytes=64)
    c.on_loss()
    assert c.size == 32 and c.min_bytes == 32 and c.losses_at_floor == 1
    c.on_success()
    assert c.size == 32
    with pytest.raises(ValueError):
        ChunkSizeController(0)


def simulate(byte_damage_p: float, model_bytes: int = 15_492, seed: int = 0,
             max_bytes: int = 2044, controller: ChunkSizeController | None = None):
    """Stop-and-wait upload over a line that damages each byte (request and reply frames, as
    the wire carries them) with probability ``byte_damage_p``: returns the controller and the
    bytes put on the wire."""
    rng = random.Random(seed)
    c = controller or ChunkSizeController(max_bytes)
    offset = wire = 0
    while offset < model_bytes:
        n = min(c.size, model_bytes - offset)
        frame_bytes = P.wire_bytes(4 + n) + P.wire_bytes(4)
        wire += frame_bytes
        if rng.random() < (1 - byte_damage_p) ** frame_bytes:
            c.on_success(n)
            offset += n
        else:
            c.on_loss()
        assert c.min_bytes <= c.size <= c.max_bytes
        if c.gave_up():
            break
    return c, wire


def test_on_a_damaged_line_it_settles_near_the_best_size_and_finishes():
    """0.5 % of bytes damaged: a fixed 2 KB chunk almost never gets through; the adaptive
    one finishes every time, with a mean chunk between the floor and 4x it, and spends at
    most 3.5 wire bytes per model byte."""
    fixed = ChunkSizeController(2044, min_bytes=2044)
    fixed, _ = simulate(0.005, controller=fixed)
    assert fixed.gave_up() and fixed.successes == 0
    for seed in range(20):
        c, wire = simulate(0.005, seed=seed)
        assert not c.gave_up()
        mean = c.bytes_acked / c.successes
        assert 64 <= mean <= 256, mean
        assert wire / 15_492 < 3.5, wire / 15_492


def test_on_a_clean_line_it_never_shrinks_and_the_overhead_stays_below_1_10():
    c, wire = simulate(0.0)
    assert c.losses == 0 and c.smallest == 2044
    assert wire / 15_492 < 1.10


def test_after_a_burst_of_losses_it_grows_back_to_the_maximum():
    c = ChunkSizeController(2044)
    for _ in range(8):
        c.on_loss()
    assert c.size == 64
    for _ in range((2044 - 64) // 64 + 1):
        c.on_success()
    assert c.size == 2044


def test_reply_timer_follows_round_trips_and_is_bounded():
    t = ReplyTimer(1.0, min_s=0.005)
    assert t.wait_s == 1.0                       # nothing measured: the client's timeout
    for _ in range(50):
        t.sample(0.010)
    assert 0.010 <= t.wait_s < 0.02              # steady round trips: mean + small deviation
    t.sample(-0.5)                               # faster than the wire estimate: counts as 0
    assert t.wait_s >= 0.005
    for _ in range(50):
        t.sample(0.0)
    assert t.wait_s == 0.005                     # never below the floor
    for _ in range(20):
        t.backoff()
    assert t.wait_s == 1.0                       # never above the client's timeout
    t.sample(0.0)
    assert t.wait_s < 1.0                        # a measured reply brings it back down
    jittery = ReplyTimer(1.0, min_s=0.005)
    for k in range(50):
        jittery.sample(0.005 if k % 2 else 0.045)
    assert jittery.wait_s > 0.045                # waits past the slow replies
