"""Stable-Baselines3 ``VecEnv`` over nanofly's fast ``VecEnv`` (all vehicles in one kernel call).

SB3's usual path, ``make_vec_env(...)`` -> ``DummyVecEnv``, steps one Python ``gymnasium.Env``
per vehicle; this adapter steps them all at once and hands SB3 the arrays it expects::

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from nanofly.sim.sb3_vec_env import HoverSB3VecEnv

    envs = VecMonitor(HoverSB3VecEnv(16, seed=0))   # VecMonitor: episode returns in the logs
    PPO("MlpPolicy", envs).learn(100_000)

SB3's conventions: ``step`` returns ``(obs, rewards, dones, infos)`` with ``dones = terminated
or truncated``; a finished episode is reset in the same step, its last observation is in
``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]`` says whether it was
cut by the time limit (not terminated). ``seed(s)`` applies at the next ``reset()`` (nanofly
seeds all vehicles from one seed, the first of SB3's per-env seeds). Every vehicle shares one
configuration, so ``set_attr`` and ``env_method`` act on all of them at once.

Needs the ``sb3`` extra: ``pip install 'nanofly[sb3]'``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv as _SB3VecEnv
except ImportError as error:  # the core package does not depend on SB3
    raise ImportError(
        "nanofly.sim.sb3_vec_env needs Stable-Baselines3, which is not installed: "
        "pip install 'nanofly[sb3]' (or pip install 'stable-baselines3>=2.3')") from error

from .env import VecEnv
from .gym_env import frames_to_render, single_spaces


class HoverSB3VecEnv(_SB3VecEnv):
    """SB3 ``VecEnv`` over ``nanofly.sim.env.VecEnv``.

    ``env``: the number of vehicles (a ``VecEnv`` is built with ``vec_env_kwargs``: ``seed=``,
    ``preset=``, ``history_length=``, ...) or an existing ``VecEnv`` to wrap.
    ``render_mode``: None or ``"rgb_array"`` (``render()`` tiles one frame per vehicle)."""

    def __init__(self, env: VecEnv | int = 16, render_mode: str | None = None,
                 **vec_env_kwargs: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if isinstance(env, VecEnv):
            if vec_env_kwargs:
                raise ValueError("pass VecEnv keyword arguments only with a number of vehicles, "
                                 f"not with an existing VecEnv (got {sorted(vec_env_kwargs)})")
            self.vec_env = env
        else:
            self.vec_env = VecEnv(env, **vec_env_kwargs)
        self.render_mode = render_mode  # read by SB3's VecEnv.__init__ through get_attr
        observation_space, action_space = single_spaces(self.vec_env.observation_dim)
        super().__init__(self.vec_env.num_envs, observation_space, action_space)
        self._actions: np.ndarray | None = None
        self._privileged_obs: np.ndarray | None = None  # the states render() shows

    # -- stepping -------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        seed = self._seeds[0]
        obs, info = self.vec_env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._privileged_obs = info["privileged_obs"]
        self.reset_infos = [{} for _ in range(self.num_envs)]
        # The VecEnv overwrites its buffers in the next step; SB3 keeps the arrays it is given.
        return np.array(obs, dtype=np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async(actions)")
        actions = np.asarray(self._actions, dtype=np.float32).reshape(self.num_envs, 4)
        self._actions = None
        obs, reward, terminated, truncated, info = self.vec_env.step(actions)
        self._privileged_obs = info["privileged_obs"]
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = np.array(info["final_obs"][i])
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return (np.array(obs, dtype=np.float32), np.array(reward, dtype=np.float32), dones.copy(),
                infos)

    def close(self) -> None:
        self.vec_env.close()

    # -- attributes and methods (one configuration for all vehicles) -------------------------
    def _target(self, name: str):
        """The adapter for its own attributes (``render_mode``), else the nanofly VecEnv."""
        return self if name in ("render_mode",) else self.vec_env

    def _all_indices(self, indices, what: str) -> list[int]:
        chosen = list(self._get_indices(indices))
        if sorted(chosen) != list(range(self.num_envs)) and what != "get":
            raise ValueError(f"{what}: nanofly's VecEnv runs all {self.num_envs} vehicles with one "
                             "configuration; call it with indices=None (all vehicles)")
        return chosen

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        value = getattr(self._target(attr_name), attr_name)
        return [value for _ in self._all_indices(indices, "get")]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self._all_indices(indices, "set_attr")
        setattr(self._target(attr_name), attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        chosen = self._all_indices(indices, "env_method")
        result = getattr(self.vec_env, method_name)(*method_args, **method_kwargs)
        return [result for _ in chosen]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]  # no gymnasium wrappers inside

    def get_images(self) -> list[np.ndarray]:
        return frames_to_render(self.render_mode, self._privileged_obs, self.vec_env)
