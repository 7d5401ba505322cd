"""The Stable-Baselines3 adapter over nanofly's VecEnv (the sb3 extra, part of dev)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor  # noqa: E402
from stable_baselines3.common.vec_env.base_vec_env import VecEnv as SB3VecEnv  # noqa: E402

from nanofly.sim.env import VecEnv  # noqa: E402
from nanofly.sim.gym_env import HoverEnv  # noqa: E402
from nanofly.sim.sb3_vec_env import HoverSB3VecEnv  # noqa: E402


def first_episode_side_by_side(actions: np.ndarray, **vec_env_kwargs) -> bool:
    """Step the adapter and DummyVecEnv([HoverEnv]) (one vehicle, seed 7) with the same actions
    until the episode ends, checking that SB3 gets the same arrays from both; returns the
    end's TimeLimit.truncated. (Later episodes start from other draws: the VecEnv's same-step
    reset and HoverEnv's reset() take different random streams.)"""
    adapter = HoverSB3VecEnv(1, **vec_env_kwargs)
    dummy = DummyVecEnv([lambda: HoverEnv(**vec_env_kwargs)])
    for venv in (adapter, dummy):
        venv.seed(7)
    np.testing.assert_array_equal(adapter.reset(), dummy.reset())
    for action in actions:
        obs_a, rew_a, done_a, infos_a = adapter.step(action[None])
        obs_d, rew_d, done_d, infos_d = dummy.step(action[None])
        np.testing.assert_array_equal(rew_a, rew_d)
        np.testing.assert_array_equal(done_a, done_d)
        if done_a[0]:
            np.testing.assert_array_equal(infos_a[0]["terminal_observation"],
                                          infos_d[0]["terminal_observation"])
            assert infos_a[0]["TimeLimit.truncated"] == infos_d[0]["TimeLimit.truncated"]
            assert not np.array_equal(obs_a[0], infos_a[0]["terminal_observation"])  # reset
            return infos_a[0]["TimeLimit.truncated"]
        np.testing.assert_array_equal(obs_a, obs_d)
        assert "terminal_observation" not in infos_a[0]
    raise AssertionError("the episode did not end")


def test_adapter_gives_sb3_what_dummy_vec_env_over_the_gymnasium_env_gives():
    random_actions = np.random.default_rng(0).uniform(-1, 1, (30, 4)).astype(np.float32)
    assert first_episode_side_by_side(random_actions, episode_steps=20) is True
    full_thrust = np.ones((300, 4), np.float32)  # climbs out of the 0.6 m box
    assert first_episode_side_by_side(full_thrust, guidance_probability=1.0,
                                      disturbance=False) is False


def test_adapter_is_an_sb3_vec_env_with_the_hover_spaces_and_no_nans():
    envs = VecCheckNan(VecMonitor(HoverSB3VecEnv(16, seed=1, episode_steps=30)),
                       raise_exception=True)
    assert isinstance(envs.unwrapped, SB3VecEnv) and envs.num_envs == 16
    assert envs.observation_space.shape == (146,) and envs.action_space.shape == (4,)
    obs = envs.reset()
    assert obs.shape == (16, 146) and obs.dtype == np.float32
    kept = obs.copy()
    episodes = 0
    for _ in range(40):
        obs, rewards, dones, infos = envs.step(np.stack([envs.action_space.sample()
                                                         for _ in range(16)]))
        assert obs.shape == (16, 146) and rewards.shape == dones.shape == (16,)
        assert len(infos) == 16
        episodes += sum("episode" in info for info in infos)  # VecMonitor saw the ends
    assert episodes >= 16
    assert not np.array_equal(kept, obs)  # returned arrays are the caller's, not env buffers


def test_adapter_attributes_methods_seed_and_render():
    vec = VecEnv(4, seed=3)
    envs = HoverSB3VecEnv(vec, render_mode="rgb_array")
    assert envs.get_attr("num_envs") == [4, 4, 4, 4]
    assert envs.get_attr("config", indices=[1])[0].episode_steps == 500
    assert envs.env_is_wrapped(VecMonitor) == [False] * 4
    assert envs.has_attr("reward_weights") and not envs.has_attr("no_such_attribute")
    with pytest.raises(ValueError, match="indices=None"):
        envs.set_attr("copy_outputs", True, indices=[0])
    envs.set_attr("copy_outputs", True)
    assert vec.copy_outputs is True
    first = envs.reset()
    envs.seed(3)  # SB3 seeds at the next reset: back to the start of seed 3's streams
    np.testing.assert_array_equal(envs.reset(), first)
    envs.step(np.zeros((4, 4), np.float32))
    assert envs.env_method("seed", 5) == [None] * 4
    tiled = envs.render()
    assert tiled.dtype == np.uint8 and tiled.ndim == 3 and tiled.shape[2] == 3
    with pytest.raises(ValueError, match="render_mode"):
        HoverSB3VecEnv(2, render_mode="human")


def test_missing_stable_baselines3_names_the_extra():
    code = ("import sys; sys.modules['stable_baselines3'] = None\n"
            "import nanofly.sim.sb3_vec_env")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'nanofly[sb3]'" in result.stderr


def load_example():
    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "sb3_ppo.py"
    spec = importlib.util.spec_from_file_location("sb3_ppo_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sb3_ppo_example_trains_saves_and_evaluates_with_a_tiny_budget(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3-log"))  # else SB3 logs into /tmp
    example = load_example()
    out = tmp_path / "ppo"
    assert example.main(["--total-timesteps", "256", "--num-envs", "4", "--n-steps", "64",
                         "--eval-episodes", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["timesteps"] >= 256 and summary["episodes"] == 4
    assert 0 < summary["mean_episode_s"] <= 5.0
    assert (out / "ppo_hover.zip").is_file()
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == summary


def test_sb3_ppo_example_refuses_a_zero_budget(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(["--total-timesteps", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
