import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")  # a dev dependency; installed by .ci/run
from gymnasium.utils.env_checker import check_env  # noqa: E402

from nanofly.sim.env import MDPConfig  # noqa: E402
from nanofly.sim.gym_env import (ENV_ID, RENDER_PANEL_PX, RENDER_VIEW_MARGIN,  # noqa: E402
                                 HoverEnv, HoverVectorEnv, render_frame)
from nanofly.sim.presets import get_preset  # noqa: E402

ENTRY = "nanofly.sim.gym_env:nanofly/Hover-v0"
BODY_COLOUR = (20, 20, 20)
ROTORS = np.asarray(get_preset("crazyflie_paper").rotor_positions)


def body_pixel_centres(frame):
    """(column, row) of the vehicle's body dot in the top and the side view."""
    mask = np.all(frame == BODY_COLOUR, axis=2)
    centres = []
    for panel in range(2):
        rows, cols = np.nonzero(mask[:, panel * RENDER_PANEL_PX:(panel + 1) * RENDER_PANEL_PX])
        assert rows.size, f"no body drawn in panel {panel}"
        centres.append((cols.mean(), rows.mean()))
    return centres


def test_single_env_passes_gymnasium_check_env_with_rendering():
    env = gym.make(ENTRY, history_length=8, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=1)
    assert obs.shape == (18 + 32,) and "privileged_obs" in info


def test_spec_max_episode_steps_is_the_mdp_episode_length():
    env = gym.make(ENTRY)
    assert env.spec.max_episode_steps == MDPConfig().episode_steps == 500
    assert env.unwrapped._env.config.episode_steps == env.spec.max_episode_steps
    short = gym.make(ENTRY, max_episode_steps=5, disturbance=False, guidance_probability=1.0)
    short.reset(seed=0)
    for step in range(1, 6):
        *_, terminated, truncated, _ = short.step(np.zeros(4, np.float32))
        assert not terminated and truncated == (step == 5)


def test_rgb_array_frame_places_the_vehicle_where_it_is():
    level = np.eye(3)
    half = 0.6
    px_per_m = RENDER_PANEL_PX / (2 * RENDER_VIEW_MARGIN * half)
    centre = (RENDER_PANEL_PX - 1) / 2
    frame = render_frame(np.array([0.3, -0.2, 0.1]), level, ROTORS, half)
    assert frame.shape == (RENDER_PANEL_PX, 2 * RENDER_PANEL_PX, 3) and frame.dtype == np.uint8
    (top_col, top_row), (side_col, side_row) = body_pixel_centres(frame)
    assert top_col == pytest.approx(centre + 0.3 * px_per_m, abs=1.5)
    assert top_row == pytest.approx(centre + 0.2 * px_per_m, abs=1.5)  # y up: -0.2 m is below
    assert side_col == pytest.approx(centre + 0.3 * px_per_m, abs=1.5)
    assert side_row == pytest.approx(centre - 0.1 * px_per_m, abs=1.5)  # z up


def test_rgb_array_frame_shows_the_attitude():
    at_target = np.zeros(3)
    level = render_frame(at_target, np.eye(3), ROTORS, 0.6)
    yawed = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    rolled = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 90 deg about x
    top, side = slice(0, RENDER_PANEL_PX), slice(RENDER_PANEL_PX, None)
    yaw_frame = render_frame(at_target, yawed, ROTORS, 0.6)
    roll_frame = render_frame(at_target, rolled, ROTORS, 0.6)
    assert not np.array_equal(level[:, top], yaw_frame[:, top])  # yaw shows from above
    assert not np.array_equal(level[:, side], roll_frame[:, side])  # roll shows from the side


def test_env_render_follows_the_episode_and_shows_its_last_state():
    env = gym.make(ENTRY, render_mode="rgb_array", disturbance=False, guidance_probability=1.0)
    env.reset(seed=4)
    first = env.render()
    full_up = np.ones(4, np.float32)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(full_up)
        if terminated or truncated:
            break
    assert terminated  # from level at the target, full thrust climbs out of the 0.6 m box
    last = env.render()
    assert not np.array_equal(first, last)
    np.testing.assert_array_equal(
        last, render_frame(info["privileged_obs"][0:3], info["privileged_obs"][3:12].reshape(3, 3),
                           ROTORS, 0.6))
    (_, _), (_, side_row) = body_pixel_centres(last)
    box_top_row = (RENDER_PANEL_PX - 1) / 2 - RENDER_PANEL_PX / (2 * RENDER_VIEW_MARGIN)
    assert side_row == pytest.approx(box_top_row, abs=4)  # it crossed the top of the box


def test_human_render_mode_draws_the_frames_in_a_matplotlib_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = HoverEnv(render_mode="human")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.zeros(4, np.float32))
    shown = plt.gcf().axes[0].images[0].get_array()
    expected = render_frame(info["privileged_obs"][0:3], info["privileged_obs"][3:12].reshape(3, 3),
                            ROTORS, 0.6)
    np.testing.assert_array_equal(np.asarray(shown), expected)
    env.close()
    assert not plt.get_fignums()


def test_bad_render_mode_is_refused():
    with pytest.raises(ValueError, match="render_mode must be one of"):
        HoverEnv(render_mode="ansi")


def test_sb3_make_vec_env_does_not_warn_and_renders():
    pytest.importorskip("stable_baselines3")  # the sb3 extra, part of dev
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    from stable_baselines3.common.env_util import make_vec_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        envs = make_vec_env(ENTRY, n_envs=2, seed=0)
        envs.reset()
        tiled = envs.render()
    assert not [str(w.message) for w in caught if "render" in str(w.message)]
    assert tiled.dtype == np.uint8 and tiled.shape[2] == 3
    sb3_check_env(HoverEnv(render_mode="rgb_array"), skip_render_check=False)


def test_single_env_episode_ends_and_requires_reset():
    env = HoverEnv(episode_steps=3, disturbance=False)
    env.reset(seed=0)
    a = np.zeros(4, np.float32)
    for _ in range(2):
        *_, term, trunc, _ = env.step(a)
    _, _, term, trunc, _ = env.step(a)
    assert term or trunc
    with pytest.raises(RuntimeError, match="reset"):
        env.step(a)


def test_vector_env_registered_steps_and_renders():
    assert ENV_ID in gym.registry
    envs = gym.make_vec(ENV_ID, num_envs=6, vectorization_mode="vector_entry_point",
                        render_mode="rgb_array")
    assert envs.unwrapped.vec_env.config.episode_steps == 500  # the spec's max_episode_steps
    obs, info = envs.reset(seed=2)
    assert obs.shape == (6, 146) and envs.single_action_space.shape == (4,)
    obs, r, term, trunc, info = envs.step(envs.action_space.sample())
    assert r.shape == (6,) and info["privileged_obs"].shape == (6, 28)
    assert isinstance(envs.unwrapped, HoverVectorEnv)
    frames = envs.render()
    assert len(frames) == 6 and frames[0].shape == (RENDER_PANEL_PX, 2 * RENDER_PANEL_PX, 3)
    short = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point",
                         max_episode_steps=7)
    assert short.unwrapped.vec_env.config.episode_steps == 7
