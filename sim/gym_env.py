"""Gymnasium adapters for the hover MDP, registered as ``nanofly/Hover-v0``.

``HoverEnv`` is a ``gymnasium.Env`` with one vehicle (for Stable-Baselines3 and friends);
``HoverVectorEnv`` is a ``gymnasium.vector.VectorEnv`` over ``VecEnv`` (same-step autoreset:
the last observation of a finished episode is in ``info["final_obs"]``). Use them with::

    import gymnasium as gym
    env = gym.make("nanofly.sim.gym_env:nanofly/Hover-v0")          # imports and registers
    envs = gym.make_vec("nanofly.sim.gym_env:nanofly/Hover-v0", num_envs=64,
                        vectorization_mode="vector_entry_point")

Keyword arguments go to ``VecEnv`` (``preset=``, ``history_length=``, ...). The registration's
``max_episode_steps`` is the MDP's episode length (``MDPConfig.episode_steps``, 500 steps of
10 ms); if you change ``episode_steps``, pass the same ``max_episode_steps`` to ``gym.make``.

``render_mode="rgb_array"`` returns an ``(H, W, 3)`` uint8 frame drawn with numpy: a top view
(x right, y up) and a side view (x right, z up) of the vehicle around its target, framed by the
termination box. ``render_mode="human"`` shows the same frames in a matplotlib window.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from .env import MDPConfig, VecEnv

ENV_ID = "nanofly/Hover-v0"
RENDER_PANEL_PX = 240  # each of the two views is this many pixels square
# The vehicle is drawn this many times its size: at true scale a Crazyflie's arms are ~8 px
# in a view spanning the 1.2 m termination box, too small to read the attitude.
RENDER_VEHICLE_SCALE = 3.0
RENDER_VIEW_MARGIN = 1.2  # a view spans this times the termination box, so a crash stays in view
_BACKGROUND, _GRID, _BORDER = (250, 250, 250), (225, 225, 225), (120, 120, 120)
_TARGET, _ARM, _BODY, _THRUST = (220, 40, 40), (40, 40, 40), (20, 20, 20), (40, 160, 60)
_FRONT_ROTOR, _BACK_ROTOR = (30, 110, 220), (150, 150, 150)


def single_spaces(observation_dim: int):
    """The observation and action spaces of one vehicle (shared with the SB3 adapter)."""
    # Unbounded observations: noise can push rotation-matrix entries past +-1.
    observation = spaces.Box(-np.inf, np.inf, shape=(observation_dim,), dtype=np.float32)
    action = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    return observation, action


def _line(img, x0, y0, x1, y1, color, width=2):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    for d in range(width):
        _plot(img, xs + d % 2, ys + d // 2, color)


def _plot(img, xs, ys, color):
    keep = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[keep], xs[keep]] = color


def _disc(img, x, y, radius, color):
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dx * dx + dy * dy <= radius * radius
    _plot(img, int(round(x)) + dx[inside], int(round(y)) + dy[inside], color)


def render_frame(position_error_m: np.ndarray, rotation: np.ndarray, rotor_positions_m: np.ndarray,
                 half_extent_m: float, panel_px: int = RENDER_PANEL_PX) -> np.ndarray:
    """One ``(panel_px, 2 * panel_px, 3)`` uint8 frame: the top view (x right, y up) beside the
    side view (x right, z up), each centred on the target (red cross), spanning
    ``+-RENDER_VIEW_MARGIN * half_extent_m`` with the box ``+-half_extent_m`` drawn (the
    termination box: episodes end where the vehicle crosses it).

    ``position_error_m``: vehicle position minus target (3,); ``rotation``: body-to-world
    rotation matrix (3, 3); ``rotor_positions_m``: (4, 3) body-frame rotor positions (the front
    rotors, x > 0, are drawn blue). The green line is the thrust axis (body z)."""
    img = np.empty((panel_px, 2 * panel_px, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    px_per_m = panel_px / (2.0 * RENDER_VIEW_MARGIN * half_extent_m)
    centre = (panel_px - 1) / 2.0
    world_rotors = rotor_positions_m @ rotation.T * RENDER_VEHICLE_SCALE
    arm_length = float(np.max(np.linalg.norm(rotor_positions_m, axis=1))) * RENDER_VEHICLE_SCALE
    thrust_axis = rotation[:, 2] * 1.5 * arm_length
    rotor_radius = max(2.0, 0.25 * arm_length * px_per_m)
    for panel, vertical in enumerate((1, 2)):  # top view: y up; side view: z up
        view = img[:, panel * panel_px:(panel + 1) * panel_px]

        def to_px(point):
            return centre + point[0] * px_per_m, centre - point[vertical] * px_per_m

        for tick in np.arange(-half_extent_m, half_extent_m + 1e-9, 0.1):  # 10 cm grid
            k = int(round(centre + tick * px_per_m))
            view[:, k] = _GRID
            view[k, :] = _GRID
        low, high = (int(round(centre + side * half_extent_m * px_per_m)) for side in (-1, 1))
        view[low:high + 1, [low, high]] = _BORDER
        view[[low, high], low:high + 1] = _BORDER
        view[:, -1] = _BORDER  # separates the two views
        _line(view, centre - 8, centre, centre + 8, centre, _TARGET)
        _line(view, centre, centre - 8, centre, centre + 8, _TARGET)
        body = np.asarray(position_error_m, dtype=np.float64)
        bx, by = to_px(body)
        # Draw the rotors farther from the viewer first so the nearer ones stay visible.
        depth_axis = 2 if vertical == 1 else 1
        order = np.argsort(world_rotors[:, depth_axis] * (1 if vertical == 1 else -1))
        for k in order:
            rx, ry = to_px(body + world_rotors[k])
            _line(view, bx, by, rx, ry, _ARM)
            front = rotor_positions_m[k, 0] > 0
            _disc(view, rx, ry, rotor_radius, _FRONT_ROTOR if front else _BACK_ROTOR)
        tx, ty = to_px(body + thrust_axis)
        _line(view, bx, by, tx, ty, _THRUST)
        _disc(view, bx, by, 2.5, _BODY)
    return img


def render_frames(privileged_obs: np.ndarray, env: VecEnv) -> list[np.ndarray]:
    """``render_frame`` of each row of (N, 28) privileged observations of ``env`` (their first
    values are the noise-free position error and rotation matrix)."""
    rotors = np.asarray(env.params.rotor_positions)
    return [render_frame(row[0:3], row[3:12].reshape(3, 3), rotors, env.config.termination_position)
            for row in np.reshape(privileged_obs, (-1, privileged_obs.shape[-1]))]


def frames_to_render(render_mode: str | None, privileged_obs: np.ndarray | None,
                     env: VecEnv) -> list[np.ndarray] | None:
    """What ``render()`` shows: ``render_frames`` of the latest privileged observations, or None
    (with a warning) without a render mode."""
    if render_mode is None:
        gymnasium.logger.warn("render() called without a render_mode: pass "
                              "render_mode='rgb_array' when making the environment")
        return None
    if privileged_obs is None:
        raise RuntimeError("nothing to render before reset()")
    return render_frames(privileged_obs, env)


def _check_render_mode(render_mode, metadata) -> None:
    if render_mode is not None and render_mode not in metadata["render_modes"]:
        raise ValueError(f"render_mode must be one of {metadata['render_modes']} or None, "
                         f"got {render_mode!r}")


class HoverEnv(gymnasium.Env):
    """One quadrotor in the hover MDP. Episodes end by termination (0.6 m box) or truncation
    (500 steps) from the MDP itself; call ``reset()`` after either."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 100}

    def __init__(self, render_mode: str | None = None, **vec_env_kwargs: Any):
        _check_render_mode(render_mode, self.metadata)
        vec_env_kwargs.setdefault("copy_outputs", True)
        self._env = VecEnv(1, **vec_env_kwargs)
        self.observation_space, self.action_space = single_spaces(self._env.observation_dim)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self._env.config.dt)}
        self._done = True
        self._privileged_obs = None  # the state shown by render() (noise-free)
        self._figure = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self._env.reset(seed=seed)
        self._done = False
        self._privileged_obs = info["privileged_obs"][0]
        if self.render_mode == "human":
            self.render()
        return obs[0], {"privileged_obs": self._privileged_obs}

    def step(self, action):
        if self._done:
            raise RuntimeError("episode is over: call reset()")
        action = np.asarray(action, dtype=np.float32).reshape(1, 4)
        obs, reward, terminated, truncated, info = self._env.step(action)
        if info["_final_obs"][0]:  # the VecEnv already reset; report the episode's last state
            self._done = True
            self._privileged_obs = info["final_privileged_obs"][0]
            result = (info["final_obs"][0], float(reward[0]), bool(terminated[0]),
                      bool(truncated[0]), {"privileged_obs": self._privileged_obs})
        else:
            self._privileged_obs = info["privileged_obs"][0]
            result = (obs[0], float(reward[0]), False, False,
                      {"privileged_obs": self._privileged_obs})
        if self.render_mode == "human":
            self.render()
        return result

    def render(self):
        """The current frame (``rgb_array``), or draw it in a matplotlib window (``human``)."""
        frames = frames_to_render(self.render_mode, self._privileged_obs, self._env)
        if frames is None:
            return None
        if self.render_mode == "rgb_array":
            return frames[0]
        self._show(frames[0])
        return None

    def _show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self._figure is None or not plt.fignum_exists(self._figure.number):
            self._figure, axes = plt.subplots(figsize=(frame.shape[1] / 100, frame.shape[0] / 100))
            axes.set_axis_off()
            axes.set_title("nanofly hover: top view | side view", fontsize=8)
            self._image = axes.imshow(frame)
            plt.show(block=False)
        self._image.set_data(frame)
        self._figure.canvas.draw_idle()
        plt.pause(1.0 / self.metadata["render_fps"])

    def close(self):
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None


class HoverVectorEnv(VectorEnv):
    """``num_envs`` quadrotors stepped together by one ``VecEnv`` (same-step autoreset).
    ``render()`` (``render_mode="rgb_array"``) returns one frame per vehicle."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100,
                "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, render_mode: str | None = None,
                 max_episode_steps: int | None = None, **vec_env_kwargs: Any):
        _check_render_mode(render_mode, self.metadata)
        if max_episode_steps is not None:  # gym.make_vec passes the registration's
            steps = vec_env_kwargs.setdefault("episode_steps", max_episode_steps)
            if steps != max_episode_steps:
                raise ValueError(f"max_episode_steps={max_episode_steps} and episode_steps={steps} "
                                 "disagree: pass one of them")
        vec_env_kwargs.setdefault("copy_outputs", True)
        self._env = VecEnv(num_envs, **vec_env_kwargs)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self._env.config.dt)}
        self.single_observation_space, self.single_action_space = single_spaces(
            self._env.observation_dim)
        self.observation_space = spaces.Box(-np.inf, np.inf, (num_envs, self._env.observation_dim),
                                            np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (num_envs, 4), np.float32)
        self._privileged_obs = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random_seed = seed
        obs, info = self._env.reset(seed=seed)
        self._privileged_obs = info["privileged_obs"]
        return obs, info

    def step(self, actions):
        result = self._env.step(np.asarray(actions, dtype=np.float32))
        self._privileged_obs = result[4]["privileged_obs"]
        return result

    def render(self):
        frames = frames_to_render(self.render_mode, self._privileged_obs, self._env)
        return None if frames is None else tuple(frames)

    @property
    def vec_env(self) -> VecEnv:
        return self._env


def register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=HoverEnv, vector_entry_point=HoverVectorEnv,
                           max_episode_steps=MDPConfig().episode_steps)


register()
