"""Gymnasium adapters for the hover MDP, registered as ``nanofly/Hover-v0``.

``HoverEnv`` is a ``gymnasium.Env`` with one vehicle (for Stable-Baselines3 and friends);
``HoverVectorEnv`` is a ``gymnasium.vector.VectorEnv`` over ``VecEnv`` (same-step autoreset:
the last observation of a finished episode is in ``info["final_obs"]``). Use them with::

    import gymnasium as gym
    env = gym.make("nanofly.sim.gym_env:nanofly/Hover-v0")          # imports and registers
    envs = gym.make_vec("nanofly.sim.gym_env:nanofly/Hover-v0", num_envs=64,
                        vectorization_mode="vector_entry_point")

Keyword arguments go to ``VecEnv`` (``preset=``, ``history_length=``, ...).
"""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from .env import VecEnv

ENV_ID = "nanofly/Hover-v0"


def _spaces(observation_dim: int):
    # Unbounded observations: noise can push rotation-matrix entries past +-1.
    observation = spaces.Box(-np.inf, np.inf, shape=(observation_dim,), dtype=np.float32)
    action = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    return observation, action


class HoverEnv(gymnasium.Env):
    """One quadrotor in the hover MDP. Episodes end by termination (0.6 m box) or truncation
    (500 steps) from the MDP itself; call ``reset()`` after either."""

    metadata = {"render_modes": []}

    def __init__(self, **vec_env_kwargs: Any):
        vec_env_kwargs.setdefault("copy_outputs", True)
        self._env = VecEnv(1, **vec_env_kwargs)
        self.observation_space, self.action_space = _spaces(self._env.observation_dim)
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self._env.reset(seed=seed)
        self._done = False
        return obs[0], {"privileged_obs": info["privileged_obs"][0]}

    def step(self, action):
        if self._done:
            raise RuntimeError("episode is over: call reset()")
        action = np.asarray(action, dtype=np.float32).reshape(1, 4)
        obs, reward, terminated, truncated, info = self._env.step(action)
        if info["_final_obs"][0]:  # the VecEnv already reset; report the episode's last state
            self._done = True
            return (info["final_obs"][0], float(reward[0]), bool(terminated[0]),
                    bool(truncated[0]), {"privileged_obs": info["final_privileged_obs"][0]})
        return (obs[0], float(reward[0]), False, False,
                {"privileged_obs": info["privileged_obs"][0]})


class HoverVectorEnv(VectorEnv):
    """``num_envs`` quadrotors stepped together by one ``VecEnv`` (same-step autoreset)."""

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, **vec_env_kwargs: Any):
        vec_env_kwargs.setdefault("copy_outputs", True)
        self._env = VecEnv(num_envs, **vec_env_kwargs)
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _spaces(self._env.observation_dim)
        self.observation_space = spaces.Box(-np.inf, np.inf, (num_envs, self._env.observation_dim),
                                            np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (num_envs, 4), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random_seed = seed
        return self._env.reset(seed=seed)

    def step(self, actions):
        return self._env.step(np.asarray(actions, dtype=np.float32))

    @property
    def vec_env(self) -> VecEnv:
        return self._env


def register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=HoverEnv, vector_entry_point=HoverVectorEnv)


register()
