"""Counter-based random numbers for numba kernels.

Every draw is a pure function of (seed, counters), e.g. (seed, env, episode, draw index), so
results do not depend on the number of threads or on the order environments are processed in,
and nothing needs per-thread generator state. The mixer is SplitMix64's finalizer.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

_K1 = uint64(0x9E3779B97F4A7C15)
_K2 = uint64(0xC2B2AE3D27D4EB4F)
_K3 = uint64(0x165667B19E3779F9)
_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_S30 = uint64(30)
_S27 = uint64(27)
_S31 = uint64(31)
_S40 = uint64(40)
_INV_2_24 = 1.0 / 16777216.0


@njit(inline="always")
def mix64(x):
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(inline="always")
def hash4(seed, a, b, c):
    """A well-mixed uint64 from a seed and three non-negative integer counters."""
    return mix64(mix64(uint64(seed) ^ (uint64(a) * _K1)) ^ (uint64(b) * _K2) ^ (uint64(c) * _K3))


@njit(inline="always")
def uniform(seed, a, b, c):
    """Uniform float in [0, 1) with 24 random bits."""
    return float(hash4(seed, a, b, c) >> _S40) * _INV_2_24


@njit(inline="always")
def normal(seed, a, b, c):
    """Standard normal (Box-Muller on two counter-based uniforms; scalar, for rare draws)."""
    u1 = uniform(seed, a, b, c * 2) + 0.5 * _INV_2_24  # (0, 1): log stays finite
    u2 = uniform(seed, a, b, c * 2 + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def seed_to_uint64(seed: int) -> np.uint64:
    """Map any Python int seed to a well-mixed uint64."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.uint64(np.random.SeedSequence(int(seed) % (1 << 128)).generate_state(1, np.uint64)[0])
