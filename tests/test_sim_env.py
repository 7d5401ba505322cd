import math
from pathlib import Path

import numpy as np
import pytest

from nanofly.policy.observation import observation_layout
from nanofly.sim import MDPConfig, RewardWeights, VecEnv
from nanofly.sim import dynamics as dyn
from nanofly.sim.env import PRIVILEGED_LAYOUT, recompute_rewards
from nanofly.sim.presets import crazyflie_paper


def quiet(n, **kw):
    kw = {"observation_noise": False, "disturbance": False, **kw}
    return VecEnv(n, seed=0, **kw)


def test_observation_layout_and_sizes():
    env = VecEnv(5, seed=0)
    obs, info = env.reset()
    assert obs.shape == (5, 146) and obs.dtype == np.float32
    assert info["privileged_obs"].shape == (5, 28)
    assert sum(s for _, s in observation_layout(32)) == 146
    assert sum(s for _, s in PRIVILEGED_LAYOUT) == 28
    assert VecEnv(2, history_length=16).observation_dim == 82
    env0 = VecEnv(2, history_length=0)
    assert env0.reset()[0].shape == (2, 18)
    env0.step(np.zeros((2, 4), np.float32))
    # rotation matrix block is orthonormal (noise-free privileged copy)
    R = info["privileged_obs"][:, 3:12].reshape(-1, 3, 3)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-5)


def test_observation_matches_reference_simulator(golden):
    # The golden observations use a 16-action history and no noise, p_des = v_des = 0.
    states = golden["paper__hoversin__states"]
    actions = golden["paper__hoversin__actions"]
    ref_obs = golden["paper__hoversin__observations"]
    env = quiet(1, history_length=16, termination_position=100.0, episode_steps=1000)
    obs, _ = env.set_states(states[:1], action_history=crazyflie_paper.hover_action)
    assert np.allclose(obs[0], ref_obs[0], atol=1e-6)
    for k in range(60):
        obs, *_ = env.step(actions[k:k + 1])
        assert np.allclose(obs[0, 18:], ref_obs[k + 1, 18:], atol=0)  # history: exact
        assert np.allclose(obs[0, :18], ref_obs[k + 1, :18], atol=1e-4)


@pytest.mark.parametrize("n", [16, 37, 1000])
def test_internal_block_layout_agrees_with_step_api(n):
    """Bit for bit: the environment must run the same compiled RK4 as ``dynamics.step`` (a
    copy of the kernel inlined into another one once differed by 1 ulp in some lanes, enough
    to change every trained policy)."""
    rng = np.random.default_rng(3)
    env = quiet(n, termination_position=100.0)
    env.reset()
    for t in range(20):
        before = env.states
        a = (rng.uniform(-1, 1, (n, 4)) if t % 2 else
             np.clip(env.hover_action + 0.3 * rng.standard_normal((n, 4)), -1, 1)).astype(np.float32)
        env.step(a)
        assert np.array_equal(env.states, dyn.step(before, a, env.params, env.config.dt))


def test_observation_noise_statistics():
    env = VecEnv(4096, seed=1, disturbance=False)
    env.reset()
    a = np.full((4096, 4), env.hover_action, np.float32)
    diffs = []
    for _ in range(10):
        obs, _, _, _, info = env.step(a)
        diffs.append(obs[:, :18] - info["privileged_obs"][:, :18])
    d = np.concatenate(diffs)
    expected = np.array([0.001] * 3 + [0.001] * 9 + [0.002] * 3 + [0.002] * 3)
    assert np.allclose(d.std(axis=0), expected, rtol=0.03)
    assert np.all(np.abs(d.mean(axis=0)) < 4 * expected / math.sqrt(len(d)) + 1e-9)
    corr = np.corrcoef((d / expected).T)
    assert np.abs(corr - np.eye(18)).max() < 0.03
    # standardized noise is Gaussian-shaped: ~68.3% within 1 sigma, ~95.4% within 2
    z = np.abs(d / expected)
    assert abs((z < 1).mean() - 0.6827) < 0.01 and abs((z < 2).mean() - 0.9545) < 0.005


def test_initial_state_distribution_bounds():
    env = VecEnv(8192, seed=2)
    env.reset()
    s = env.states
    p, q, v, w = s[:, :3], s[:, 3:7], s[:, 7:10], s[:, 10:13]
    assert np.abs(p).max() <= 0.2 + 1e-6 and np.abs(p).max() > 0.19
    assert np.abs(v).max() <= 1.0 + 1e-6 and np.abs(w).max() <= 1.0 + 1e-6
    angle = 2 * np.arccos(np.clip(np.abs(q[:, 0]), 0, 1))
    assert angle.max() <= math.pi / 2 + 1e-5 and angle.max() > 1.4
    tilt = np.arccos(np.clip(1 - 2 * (q[:, 1] ** 2 + q[:, 2] ** 2), -1, 1))
    assert tilt.max() <= math.pi / 2 + 1e-5
    guided = np.all(p == 0, axis=1) & (q[:, 0] == 1)
    assert abs(guided.mean() - 0.1) < 0.015
    assert np.allclose(s[:, 13:], 21702 / 2)
    obs = env.obs
    assert np.allclose(obs[:, 18:], 0.0)  # history starts at the normalized initial rotor speed


def test_termination_truncation_and_autoreset():
    env = quiet(2, episode_steps=5)
    env.reset()
    s = np.tile(dyn.hover_state(env.params), (2, 1))
    s[1, 0] = 0.7  # beyond the 0.6 m box
    env.set_states(s, action_history=env.hover_action)
    a = np.full((2, 4), env.hover_action, np.float32)
    obs, r, term, trunc, info = env.step(a)
    assert list(term) == [False, True] and not trunc.any()
    assert r[1] == env.reward_weights.termination_penalty
    assert info["_final_obs"][1] and not info["_final_obs"][0]
    assert info["final_obs"][1, 0] == pytest.approx(0.7, abs=1e-3)
    assert abs(obs[1, 0]) <= 0.2  # already the next episode
    assert env.episode_step.tolist() == [1, 0]
    for k in range(4):
        obs, r, term, trunc, info = env.step(a)
    assert trunc[0] and not term[0] and info["_final_obs"][0]
    assert env.episode_step[0] == 0


def test_same_seed_same_numbers_different_seed_different():
    def run(seed, threads=1, n=64):
        env = VecEnv(n, seed=seed, threads=threads)
        rng = np.random.default_rng(0)
        obs, _ = env.reset()
        out = [obs.copy()]
        for _ in range(60):
            obs, r, *_ = env.step(rng.uniform(-1, 1, (n, 4)).astype(np.float32))
            out.append(obs.copy())
            out.append(r.copy())
        return out

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # results do not depend on the number of threads (4100: the chunks split at a block
    # boundary, the last block has padding lanes)
    big1, big2 = run(5, 1, 4100), run(5, 2, 4100)
    assert all(np.array_equal(x, y) for x, y in zip(big1, big2))


def test_reset_without_seed_starts_new_episodes():
    env = VecEnv(8, seed=3)
    first = env.reset()[0].copy()
    second = env.reset()[0].copy()
    again = env.reset(seed=3)[0].copy()
    assert not np.array_equal(first, second)
    assert np.array_equal(first, again)


def test_reward_recomputation_matches_simulator_and_curriculum_weights():
    rng = np.random.default_rng(0)
    env = VecEnv(256, seed=4)
    env.reset()
    nxt, acts, terms, rewards = [], [], [], []
    for _ in range(80):
        a = np.clip(env.hover_action + 0.3 * rng.standard_normal((256, 4)), -1, 1).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        priv = np.where(info["_final_obs"][:, None], info["final_privileged_obs"],
                        info["privileged_obs"])
        nxt.append(priv.copy()); acts.append(a); terms.append(term.copy()); rewards.append(r.copy())
    nxt, acts, terms, rewards = map(np.concatenate, (nxt, acts, terms, rewards))
    assert terms.any()
    again = recompute_rewards(nxt, acts, terms, env.reward_weights, env.hover_action)
    assert np.allclose(again, rewards, atol=1e-5)
    new_w = RewardWeights(position=20.0, linear_velocity=0.5, action=0.3)
    changed = recompute_rewards(nxt, acts, terms, new_w, env.hover_action)
    assert not np.allclose(changed, rewards)
    env.reward_weights = new_w  # takes effect in the running simulator
    obs, r, term, trunc, info = env.step(acts[:256])
    priv = np.where(info["_final_obs"][:, None], info["final_privileged_obs"], info["privileged_obs"])
    assert np.allclose(r, recompute_rewards(priv, acts[:256], term, new_w, env.hover_action), atol=1e-5)
    # strided views of packed rows (as the trainer's replay buffer holds them), written in place
    packed = np.zeros((len(nxt), 40), np.float32)
    packed[:, 0:28], packed[:, 28:32], packed[:, 32] = nxt, acts, terms
    recompute_rewards(packed[:, 0:28], packed[:, 28:32], packed[:, 32], new_w, env.hover_action,
                      out=packed[:, 33])
    np.testing.assert_array_equal(packed[:, 33], changed)
    with pytest.raises(ValueError, match="shapes"):
        recompute_rewards(nxt, acts[:, :3], terms, new_w, env.hover_action)
    for bad_out in (packed[:-1, 33], packed[:, 33].astype(np.float64)):  # short, wrong dtype
        with pytest.raises(ValueError, match="out must be"):
            recompute_rewards(nxt, acts, terms, new_w, env.hover_action, out=bad_out)


def test_disturbance_statistics_in_privileged_observation():
    env = VecEnv(8192, seed=5)
    _, info = env.reset()
    force = info["privileged_obs"][:, 18:21]  # in units of the force std (m g / 20)
    torque = info["privileged_obs"][:, 21:24]  # in units of the torque std (m g / 10000)
    assert np.allclose(force.std(axis=0), 1.0, rtol=0.05)
    assert np.allclose(torque.std(axis=0), 1.0, rtol=0.05)
    assert np.abs(force.mean(axis=0)).max() < 0.05
    # the simulator applies them: force / mass in the dynamics parameters
    p = dyn.read_rows(env._blocks, env.num_envs, dyn.ROW_PARAMS, dyn.NUM_ENV_PARAMS)
    g = 9.81
    assert np.allclose(p[:, dyn.P_DIST_ACC:dyn.P_DIST_ACC + 3], force * (0.027 * g / 20) / 0.027, rtol=1e-4, atol=1e-6)
    expected_ang = torque * (0.027 * g / 10000) / np.array([3.85e-6, 3.85e-6, 5.9675e-6])
    assert np.allclose(p[:, dyn.P_DIST_ANG_ACC:dyn.P_DIST_ANG_ACC + 3], expected_ang, rtol=1e-4, atol=1e-4)
    assert np.all(VecEnv(4, disturbance=False).reset()[1]["privileged_obs"][:, 18:24] == 0)


def test_domain_randomization_ranges():
    env = VecEnv(2048, seed=6, randomize_mass=0.2, randomize_thrust=0.1)
    env.reset()
    p = dyn.read_rows(env._blocks, env.num_envs, dyn.ROW_PARAMS, dyn.NUM_ENV_PARAMS)
    mass = 1.0 / p[:, dyn.P_INV_MASS]
    assert mass.min() >= 0.027 * 0.8 - 1e-6 and mass.max() <= 0.027 * 1.2 + 1e-6
    assert mass.std() > 0.027 * 0.2 / 2  # roughly uniform over the range
    c2 = p[:, dyn.P_C2]
    assert c2.min() >= 3.16e-10 * 0.9 * (1 - 1e-6) and c2.max() <= 3.16e-10 * 1.1 * (1 + 1e-6)
    assert np.allclose(p[:, dyn.P_JXX], 3.85e-6)  # inertia not randomized here
    off = VecEnv(64, seed=6)
    off.reset()
    q = dyn.read_rows(off._blocks, 64, dyn.ROW_PARAMS, dyn.NUM_ENV_PARAMS)
    assert np.all(q[:, dyn.P_INV_MASS] == q[0, dyn.P_INV_MASS])


def test_targets_move_the_hover_point():
    env = quiet(3, guidance_probability=1.0, init_max_linear_velocity=0.0,
                init_max_angular_velocity=0.0, init_rotor_speed_normalized=crazyflie_paper.hover_action)
    env.target_position[:] = [[1.0, 2.0, 3.0], [0, 0, 0], [-1, 0, 0.5]]
    obs, _ = env.reset()
    assert np.allclose(env.states[:, :3], env.target_position)
    assert np.allclose(obs[:, :3], 0.0)
    a = np.full((3, 4), env.hover_action, np.float32)
    for _ in range(100):
        obs, r, term, trunc, _ = env.step(a)
    assert not term.any() and np.abs(obs[:, :3]).max() < 1e-3
    env.target_velocity[:] = [0.5, 0.0, 0.0]
    obs, *_ = env.step(a)
    assert np.allclose(obs[:, 12], -0.5, atol=1e-3)


def test_rotor_delay_ablation_sets_rotors_at_once():
    env = quiet(2, rotor_delay=False)
    env.reset()
    a = np.array([[0.5] * 4, [-0.2] * 4], np.float32)
    env.step(a)
    assert np.allclose(env.states[:, 13:], (a + 1) / 2 * 21702, rtol=1e-6)


def test_bad_actions_and_configs_are_refused():
    env = VecEnv(4, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((4, 4), np.float32))
    env.reset()
    before = env.states
    bad = np.zeros((4, 4), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="env 2"):
        env.step(bad)
    assert np.array_equal(env.states, before)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        env.step(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="floating"):
        env.step(np.zeros((4, 4), np.int64))
    env.step(np.full((4, 4), 10.0))  # clipped, documented
    assert np.all(np.isfinite(env.states))
    with pytest.raises(ValueError, match="history_length"):
        VecEnv(2, history_length=2.5)
    with pytest.raises(ValueError, match="guidance_probability"):
        VecEnv(2, guidance_probability=1.5)
    with pytest.raises(ValueError, match="randomize_mass"):
        VecEnv(2, randomize_mass=1.0)
    with pytest.raises(TypeError):
        VecEnv(2, no_such_option=1)
    with pytest.raises(ValueError, match="num_envs"):
        VecEnv(0)
    with pytest.raises(ValueError, match="finite"):
        env.reward_weights = RewardWeights(position=float("nan"))


def test_step_reuses_buffers():
    env = VecEnv(8, seed=0)
    env.reset()
    a = np.zeros((8, 4), np.float32)
    _, r1, t1, _, i1 = env.step(a)
    _, r2, t2, _, i2 = env.step(a)
    assert r1 is r2 and t1 is t2 and i1 is i2
    copied = VecEnv(8, seed=0, copy_outputs=True)
    copied.reset()
    assert copied.step(a)[1] is not copied.step(a)[1]


def test_config_defaults_are_the_paper_mdp():
    c = MDPConfig()
    assert (c.episode_steps, c.history_length, c.termination_position) == (500, 32, 0.6)
    assert c.guidance_probability == 0.1 and c.init_max_position == 0.2
    w = RewardWeights()
    assert (w.scale, w.constant, w.position, w.orientation, w.linear_velocity, w.action) == (
        0.5, 2.0, 5.0, 5.0, 0.01, 0.01)


def test_non_negative_reward_clips_at_zero_in_simulator_and_recomputation():
    # Large weights make far-off states negative; the non_negative switch clips them at 0
    # (terminated steps still get the termination penalty).
    harsh = RewardWeights(position=200.0, orientation=50.0, termination_penalty=-1.0)
    clipped = RewardWeights(position=200.0, orientation=50.0, termination_penalty=-1.0,
                            non_negative=True)
    rng = np.random.default_rng(1)
    out = {}
    for name, w in (("harsh", harsh), ("clipped", clipped)):
        env = VecEnv(512, seed=11, reward_weights=w)
        env.reset()
        a = np.clip(env.hover_action + 0.2 * rng.standard_normal((512, 4)), -1, 1).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        priv = np.where(info["_final_obs"][:, None], info["final_privileged_obs"],
                        info["privileged_obs"])
        out[name] = (r.copy(), term.copy())
        assert np.allclose(r, recompute_rewards(priv, a, term, w, env.hover_action), atol=1e-5)
        rng = np.random.default_rng(1)  # same actions for both
    r_harsh, term = out["harsh"]
    r_clip, term2 = out["clipped"]
    assert np.array_equal(term, term2)
    alive = ~term
    assert (r_harsh[alive] < 0).any()
    assert np.array_equal(r_clip[alive], np.maximum(r_harsh[alive], 0.0))
    assert np.all(r_clip[term] == -1.0)


def test_bench_sim_reports_speeds_and_the_reference():
    # bench/bench_sim.py's object: speeds keyed by env count, the thread count, and the
    # reference simulator either measured in the same run (l2f installed) or quoted and labelled.
    import importlib.util
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_sim.py"
    out = subprocess.run([sys.executable, str(script), "--envs", "1", "--envs", "16",
                          "--threads", "1", "--no-compile-times"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["threads"] == 1
    for key in ("dynamics_steps_per_s", "env_steps_per_s"):
        assert set(result[key]) == {"1", "16"} and all(v > 0 for v in result[key].values())
    if importlib.util.find_spec("l2f") is not None:
        assert "measured in this run" in result["reference"], result["reference"]
        assert set(result["ratio_vs_reference"]["env"]) == {"1", "16"}
    else:
        assert result["reference"].startswith("l2f not installed")
        assert result["reference_quoted"]["source"].endswith("(not measured in this run)")
