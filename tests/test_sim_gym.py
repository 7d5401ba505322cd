import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")  # a dev dependency; installed by .ci/run
from gymnasium.utils.env_checker import check_env  # noqa: E402

from nanofly.sim.gym_env import ENV_ID, HoverEnv, HoverVectorEnv  # noqa: E402


def test_single_env_passes_gymnasium_check_env():
    env = gym.make("nanofly.sim.gym_env:nanofly/Hover-v0", history_length=8)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert obs.shape == (18 + 32,) and "privileged_obs" in info


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


def test_vector_env_registered_and_steps():
    assert ENV_ID in gym.registry
    envs = gym.make_vec(ENV_ID, num_envs=6, vectorization_mode="vector_entry_point")
    obs, info = envs.reset(seed=2)
    assert obs.shape == (6, 146) and envs.single_action_space.shape == (4,)
    obs, r, term, trunc, info = envs.step(envs.action_space.sample())
    assert r.shape == (6,) and info["privileged_obs"].shape == (6, 28)
    assert isinstance(envs.unwrapped, HoverVectorEnv)
