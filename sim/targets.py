"""Reference trajectories for the per-environment targets of ``VecEnv``.

A ``VecEnv`` takes a desired position and velocity per environment (``env.target_position``,
``env.target_velocity``, world frame, m and m/s); the observation and reward use the errors to
them, so one hover policy can hold any point or follow a moving reference.
"""
from __future__ import annotations

import math

import numpy as np


def figure_eight(t: np.ndarray | float, scale: float = 0.5, period: float = 5.5,
                 center: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    """A figure-eight (Lissajous 1:2) in the x-y plane: position and velocity at times ``t``.

    ``x = scale sin(2 pi t / period)``, ``y = scale / 2 sin(4 pi t / period)``, z constant:
    one lap per ``period`` seconds, ``scale`` metres from the centre along x. Returns
    ``(position, velocity)``, each shaped ``t.shape + (3,)`` (float64).
    """
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"figure_eight: scale must be a finite number >= 0 m, got {scale}")
    if not (period > 0 and math.isfinite(period)):
        raise ValueError(f"figure_eight: period must be > 0 s, got {period}")
    t = np.asarray(t, dtype=np.float64)
    omega = 2.0 * math.pi / period
    position = np.zeros(t.shape + (3,))
    velocity = np.zeros(t.shape + (3,))
    position[..., 0] = center[0] + scale * np.sin(omega * t)
    position[..., 1] = center[1] + 0.5 * scale * np.sin(2.0 * omega * t)
    position[..., 2] = center[2]
    velocity[..., 0] = scale * omega * np.cos(omega * t)
    velocity[..., 1] = scale * omega * np.cos(2.0 * omega * t)
    return position, velocity
