"""Observations for int8 calibration and for the accuracy figures in manifest.json.

Real ones come from the simulator: the policy flies ``nanofly.sim.VecEnv`` (with exploration
noise, so states off the policy's own path are covered too) and observations are sampled from
the rollouts. ``synthetic_observations`` exists for unit tests only, and every array it makes is
labelled "synthetic" wherever it is recorded.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nanofly.policy.observation import STATE_DIM, state_slice


class CalibrationUnavailable(RuntimeError):
    """The simulator cannot provide observations for this policy."""


def _actor_forward(actor):
    import torch

    def forward(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.from_numpy(np.ascontiguousarray(obs, np.float32))).numpy()
    return forward


def _make_env(num_envs: int, seed: int, payload: dict[str, Any], obs_dim: int):
    """The simulator the policy trained in: the vehicle parameters stored in the policy file and
    its observation layout (``nanofly.train.evaluate.policy_mdp``, which raises
    ``PolicyFileError`` when they are invalid: never another vehicle in their place)."""
    try:
        from nanofly.sim import VecEnv
        from nanofly.train.evaluate import policy_mdp
    except ImportError as exc:  # the simulator stage is missing or broken
        raise CalibrationUnavailable(f"nanofly.sim.VecEnv is not importable ({exc})") from exc
    vehicle, mdp = policy_mdp(payload)
    env = VecEnv(num_envs, vehicle, seed=seed, config=mdp)
    if env.observation_dim != obs_dim:  # policy_mdp checked the payload's own layer sizes
        raise CalibrationUnavailable(f"the simulator's observation has {env.observation_dim} "
                                     f"values, the policy takes {obs_dim}")
    return env


def collect_calibration_observations(policy, n: int, seed: int, *, num_envs: int = 64,
                                     exploration_std: float = 0.1,
                                     payload: dict[str, Any] | None = None) -> np.ndarray:
    """``n`` actor observations (float32, (n, obs_dim)) from closed-loop simulator rollouts.

    ``policy``: a policy.pt path, or an ``Actor`` with its policy file's ``payload``. The
    simulator flies the vehicle whose parameters the policy file stores, with the policy's
    observation layout. The policy acts with Gaussian exploration noise (std
    ``exploration_std`` on the normalized action, as in training); episodes reset
    automatically; observations are drawn at random from ``~2 n`` collected ones. Raises
    ``CalibrationUnavailable`` without a usable simulator and ``PolicyFileError`` (a
    ``ValueError``) when the stored vehicle or observation layout is invalid.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not hasattr(policy, "forward"):
        from nanofly.policy.actor import load_policy
        policy, payload = load_policy(policy)
    elif payload is None:
        raise ValueError("an Actor needs its policy file's payload (vehicle, observation "
                         "layout): collect_calibration_observations(actor, ..., payload=...)")
    forward = _actor_forward(policy)
    obs_dim = policy.layer_sizes[0]
    num_envs = max(1, min(num_envs, n))
    env = _make_env(num_envs, seed, payload, obs_dim)
    rng = np.random.default_rng(seed)
    steps = max(1, math.ceil(2 * n / num_envs))
    collected = np.empty((steps * num_envs, obs_dim), np.float32)
    try:
        obs, _ = env.reset(seed=seed)
        for t in range(steps):
            collected[t * num_envs:(t + 1) * num_envs] = obs
            action = forward(obs) + exploration_std * rng.standard_normal((num_envs, 4))
            obs, *_ = env.step(np.clip(action, -1, 1).astype(np.float32))
    finally:
        getattr(env, "close", lambda: None)()
    if not np.isfinite(collected).all():
        raise CalibrationUnavailable("the simulator produced non-finite observations")
    pick = rng.choice(len(collected), size=n, replace=len(collected) < n)
    return collected[np.sort(pick)]


def synthetic_observations(n: int, dim: int, seed: int) -> np.ndarray:
    """FOR UNIT TESTS ONLY: observations shaped like the hover MDP's (position error, rotation
    matrix, velocities, action history) without a simulator. Never used by ``nanofly export``
    unless passed in explicitly, and then labelled "synthetic" in the manifest."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, dim))
    if dim >= STATE_DIM:
        obs[:, state_slice("position_error")] = rng.uniform(-0.3, 0.3, (n, 3))
        q = rng.standard_normal((n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, x, y, z = q.T
        obs[:, state_slice("rotation_matrix")] = np.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1)
        obs[:, state_slice("linear_velocity_error")] = rng.uniform(-1, 1, (n, 3))
        obs[:, state_slice("angular_velocity")] = rng.uniform(-2, 2, (n, 3))
        obs[:, STATE_DIM:] = np.clip(0.334 + 0.3 * rng.standard_normal((n, dim - STATE_DIM)), -1, 1)
    return obs.astype(np.float32)
