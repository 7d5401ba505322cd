import numpy as np
import pytest

from nanofly.sim import dynamics as dyn
from nanofly.sim.presets import crazyflie_l2f, crazyflie_paper

PRESETS = {"paper": crazyflie_paper, "l2f_default": crazyflie_l2f}


def rollout(params, s0, actions, dtype=np.float32, **kw):
    s = s0[None].astype(dtype)
    out = [s[0]]
    for a in actions:
        s = dyn.step(s, a[None], params, 0.01, **kw)
        out.append(s[0])
    return np.array(out)


@pytest.mark.parametrize("key", ["paper", "l2f_default"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_golden_trajectory(golden, key, dtype):
    ref = golden[f"{key}__hoversin__states"]
    actions = golden[f"{key}__hoversin__actions"]
    ours = rollout(PRESETS[key], ref[0], actions, dtype)
    assert ours.dtype == dtype
    scale = np.abs(ref[:, :3]).max()
    assert scale > 1.0  # the run flies metres: a relative bound means something
    assert np.abs(ours[:, :3] - ref[:, :3]).max() < 1e-4 * scale
    assert np.abs(ours[:, 3:7] - ref[:, 3:7]).max() <= 5e-4
    rel_rotor = np.abs(ours[:, 13:] - ref[:, 13:]) / np.abs(ref[:, 13:])
    assert rel_rotor.max() <= 1e-5


@pytest.mark.parametrize("params", [crazyflie_paper, crazyflie_l2f], ids=lambda p: p.name)
def test_hover_action_holds_position_for_5_s(params):
    s = dyn.hover_state(params)[None]
    a = np.full((1, 4), params.hover_action, np.float32)
    for _ in range(500):
        s = dyn.step(s, a, params)
    assert np.abs(s[0, :3]).max() < 1e-3
    assert np.abs(s[0, 7:13]).max() < 1e-3


def test_zero_thrust_is_free_fall():
    p = crazyflie_paper  # c0 = 0: rotors at speed 0 give no thrust
    s = np.zeros((1, 17), np.float64)
    s[0, 3] = 1.0
    a = -np.ones((1, 4))
    for _ in range(100):
        s = dyn.step(s, a, p)
    assert s[0, 2] == pytest.approx(-0.5 * 9.81 * 1.0**2, rel=1e-9)
    assert s[0, 9] == pytest.approx(-9.81, rel=1e-9)
    assert np.allclose(s[0, 13:], 0.0)


@pytest.mark.parametrize("params", [crazyflie_paper, crazyflie_l2f], ids=lambda p: p.name)
def test_yaw_command_spins_the_right_way(params):
    # Rotors 1 and 3 have +z reaction torque: speeding them up (and slowing 0, 2) yaws +z.
    s = dyn.hover_state(params)[None]
    h = params.hover_action
    a = np.array([[h - 0.1, h + 0.1, h - 0.1, h + 0.1]], np.float32)
    for _ in range(20):
        s = dyn.step(s, a, params)
    assert s[0, 12] > 0.1  # yaw rate, rad/s
    assert abs(s[0, 10]) < 1e-3 and abs(s[0, 11]) < 1e-3
    s2 = dyn.step(dyn.hover_state(params)[None], a[:, ::-1].copy(), params)
    assert s2[0, 12] < 0


def test_thrust_follows_body_z_axis():
    p = crazyflie_paper
    angle = 0.5  # rad, roll about body x
    s = dyn.hover_state(p, dtype=np.float64)[None]
    s[0, 3:7] = [np.cos(angle / 2), np.sin(angle / 2), 0.0, 0.0]
    s1 = dyn.step(s, np.full((1, 4), p.hover_action), p, 1e-4)
    accel = s1[0, 7:10] / 1e-4
    body_z_world = np.array([0.0, -np.sin(angle), np.cos(angle)])
    expected = body_z_world * 9.81 + np.array([0, 0, -9.81])
    assert np.allclose(accel, expected, atol=1e-3)


def test_disturbance_force_and_torque_accelerate_as_expected():
    p = crazyflie_paper
    s = dyn.hover_state(p, dtype=np.float64)[None]
    a = np.full((1, 4), p.hover_action)
    force = np.array([[0.01, -0.02, 0.005]])
    s1 = dyn.step(s, a, p, 0.01, disturbance_force=force)
    assert np.allclose(s1[0, 7:10] / 0.01, force[0] / p.mass, rtol=1e-6)
    torque = np.array([[1e-6, 0.0, -2e-6]])
    s2 = dyn.step(s, a, p, 0.001, disturbance_torque=torque)
    assert np.allclose(s2[0, 10:13] / 0.001, torque[0] / p.inertia_diagonal(), rtol=1e-3, atol=1e-6)


def test_quaternion_stays_unit_and_rotors_clamped():
    rng = np.random.default_rng(0)
    p = crazyflie_l2f
    s = np.tile(dyn.hover_state(p), (64, 1))
    for _ in range(300):
        s = dyn.step(s, rng.uniform(-1, 1, (64, 4)).astype(np.float32), p)
        assert np.allclose(np.linalg.norm(s[:, 3:7], axis=1), 1.0, atol=1e-6)
        assert s[:, 13:].min() >= p.rotor_speed_min and s[:, 13:].max() <= p.rotor_speed_max


def test_rotor_lag_uses_rising_and_falling_time_constants():
    p = crazyflie_l2f  # tau rising 0.055 s, falling 0.249 s
    s = dyn.hover_state(p, dtype=np.float64)[None]
    up = dyn.step(s, np.full((1, 4), p.hover_action + 0.2), p, 0.001)
    down = dyn.step(s, np.full((1, 4), p.hover_action - 0.2), p, 0.001)
    rate_up = (up[0, 13] - s[0, 13]) / 0.001
    rate_down = (down[0, 13] - s[0, 13]) / 0.001
    err = 0.1  # set point offset in throttle units: 0.2 action = 0.1 throttle
    assert rate_up == pytest.approx(err / p.rotor_time_constant_rising, rel=2e-2)
    assert rate_down == pytest.approx(-err / p.rotor_time_constant_falling, rel=2e-2)


def test_bad_inputs_are_refused_clearly():
    p = crazyflie_paper
    s = np.tile(dyn.hover_state(p), (2, 1))
    a = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"shape \(N, 17\)"):
        dyn.step(s[:, :16], a, p)
    with pytest.raises(TypeError, match="float32 or float64"):
        dyn.step(s.astype(np.int32), a, p)
    bad = s.copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="row 1, column 4"):
        dyn.step(bad, a, p)
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        dyn.step(s, a[:1], p)
    nan_a = a.copy()
    nan_a[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dyn.step(s, nan_a, p)
    with pytest.raises(ValueError, match="dt"):
        dyn.step(s, a, p, dt=0.0)
    with pytest.raises(ValueError, match="disturbance_force"):
        dyn.step(s, a, p, disturbance_force=np.zeros((3, 3)))


def test_out_of_range_actions_are_clipped():
    p = crazyflie_paper
    s = np.tile(dyn.hover_state(p), (2, 1))
    big = dyn.step(s, np.array([[5.0] * 4, [-7.0] * 4]), p)
    clipped = dyn.step(s, np.array([[1.0] * 4, [-1.0] * 4]), p)
    assert np.array_equal(big, clipped)
    assert np.all(np.isfinite(big))


def test_batch_rows_are_independent_and_padding_is_harmless():
    # 37 environments (not a multiple of the 16-lane block) give the same result row by row
    rng = np.random.default_rng(1)
    p = crazyflie_paper
    s = np.tile(dyn.hover_state(p), (37, 1))
    s[:, 7:13] += rng.normal(0, 0.5, (37, 6)).astype(np.float32)
    a = rng.uniform(-1, 1, (37, 4)).astype(np.float32)
    batch = dyn.step(s, a, p)
    single = np.concatenate([dyn.step(s[i:i + 1], a[i:i + 1], p) for i in range(37)])
    assert np.array_equal(batch, single)
