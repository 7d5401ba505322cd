"""``VecEnv``: N quadrotors in the reference hover MDP, stepped together.

The MDP is the one of "Learning to Fly in Seconds" (docs/mdp.md): random initial states with
"guidance", a constant random disturbance force and torque per episode, Gaussian observation
noise, an action history in the observation, the squared reward with weights that can change
while running (curriculum), termination when the position error leaves a 0.6 m box, truncation
after 500 steps, automatic reset.

API (Gymnasium vector style, "same-step" autoreset): ``reset() -> (obs, info)`` and
``step(actions) -> (obs, reward, terminated, truncated, info)``. When an episode ends in a step,
the returned ``obs`` row is already the first observation of the next episode and the last one is
in ``info["final_obs"]`` (rows where ``info["_final_obs"]`` is True), as Gymnasium does.
``info["privileged_obs"]`` is the critic's observation.

Arrays returned by ``reset``/``step`` are buffers owned by the environment and overwritten by the
next call (no allocation per step); copy them if you keep them, or pass ``copy_outputs=True``.
Do not write into the returned observation: its action-history part is the environment's
history (kept in place because at large N the step is bound by memory traffic).

Observation (actor): the contract of ``nanofly.policy.observation``, ``STATE_DIM + ACTION_DIM *
history_length`` values::

    [p - p_target (3) | R(q) row-major (9) | v - v_target (3) | w body (3) | last actions, newest
     first (4 * history_length)]

with Gaussian noise on the state part. Privileged observation (28 values): the same state part
without noise, the disturbance force (world frame) and torque (body frame) in units of
their configured standard deviations (so that the critic sees O(1) inputs), and the rotor speeds
normalized to [-1, 1].
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange
from numba import types as nb_types

from nanofly.policy.observation import (DEFAULT_HISTORY_LENGTH, STATE_DIM, STATE_PARTS,
                                        observation_dim)

from . import dynamics as dyn
from .cpu import call_kernel, copy_into, kernel_address, prefetch_for_read, prefetch_for_write
from .presets import VehicleParams, get_preset
from .rng import hash4, normal, seed_to_uint64, uniform

STATE_PART = STATE_DIM  # the observation's state part: values before the action history
PRIVILEGED_DIM = STATE_PART + 6 + 4
NOISE_POOL_SIZE = 1 << 16
HISTORY_SLACK = 32  # steps between moves of the observation windows (ObservationWindows)


@dataclass
class RewardWeights:
    """The squared reward ``-scale * (position |p_err|^2 + orientation (1 - qw^2) +
    linear_velocity |v_err|^2 + angular_velocity |w|^2 + action |a - a_hover|^2) + constant``;
    a terminated step gets ``termination_penalty`` instead. Defaults: the paper's initial
    (curriculum start) weights."""

    scale: float = 0.5
    constant: float = 2.0
    position: float = 5.0
    orientation: float = 5.0
    linear_velocity: float = 0.01
    angular_velocity: float = 0.0
    action: float = 0.01
    termination_penalty: float = 0.0
    # Clip the reward of non-terminated steps at 0 from below (the reference's reward
    # functions have this switch): with a 0 termination penalty, a negative reward would make
    # crashing look better than flying on.
    non_negative: bool = False

    def as_array(self) -> np.ndarray:
        values = np.array(dataclasses.astuple(self), dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"reward weights must be finite, got {self}")
        return values


# The evaluation metric of the reference: the curriculum's target weights.
TARGET_REWARD_WEIGHTS = RewardWeights(position=40.0, orientation=5.0, linear_velocity=1.0,
                                      action=1.0)


@dataclass
class MDPConfig:
    """The hover MDP (defaults: the paper's). Lengths in m, angles in rad, times in s."""

    dt: float = 0.01  # control period and RK4 step, s
    episode_steps: int = 500  # truncation
    # past actions in the actor observation (0: ablation "no history")
    history_length: int = DEFAULT_HISTORY_LENGTH
    # Initial state distribution.
    guidance_probability: float = 0.1  # start exactly on target, level
    init_max_position: float = 0.2  # uniform per axis around the target, m
    init_max_angle: float = math.pi / 2  # uniform over rotations within this angle of level
    init_max_linear_velocity: float = 1.0  # uniform per axis, m/s
    init_max_angular_velocity: float = 1.0  # uniform per axis, rad/s
    init_rotor_speed_normalized: float = 0.0  # in [-1, 1]; 0 is the middle of the speed range
    # Disturbance: constant per episode, Gaussian per axis.
    disturbance: bool = True
    disturbance_force_std_per_weight: float = 1.0 / 20.0  # force std = this * m g, N
    disturbance_torque_std_per_weight: float = 1.0 / 10000.0  # torque std = this * m g, N m
    # Observation noise (Gaussian std), on the actor observation only.
    observation_noise: bool = True
    noise_position: float = 0.001  # m
    noise_orientation: float = 0.001  # per rotation-matrix entry
    noise_linear_velocity: float = 0.002  # m/s
    noise_angular_velocity: float = 0.002  # rad/s
    # Termination thresholds (per axis, on the error to the target).
    termination_position: float = 0.6  # m
    termination_linear_velocity: float = 1000.0  # m/s (effectively off, as in the paper)
    termination_angular_velocity: float = 1000.0  # rad/s
    rotor_delay: bool = True  # False: rotors reach the set point instantly (ablation)
    # Domain randomization: relative half-ranges, factor ~ U(1 - r, 1 + r) per episode (0: off).
    randomize_mass: float = 0.0
    randomize_inertia: float = 0.0  # independent factor per principal axis
    randomize_thrust: float = 0.0  # one factor on all thrust coefficients
    randomize_rotor_time_constants: float = 0.0  # one factor on rising and falling

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"MDPConfig.{name}: {why} (got {getattr(self, name)!r})")

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f.name, "must be a finite number")
            if value < 0:
                fail(f.name, "must be >= 0")
        if self.dt <= 0:
            fail("dt", "must be > 0 s")
        if int(self.episode_steps) != self.episode_steps or self.episode_steps < 1:
            fail("episode_steps", "must be a positive integer")
        if int(self.history_length) != self.history_length:
            fail("history_length", "must be an integer")
        if self.guidance_probability > 1:
            fail("guidance_probability", "must be in [0, 1]")
        if self.init_max_angle > math.pi:
            fail("init_max_angle", "must be in [0, pi] rad")
        if not -1 <= self.init_rotor_speed_normalized <= 1:
            fail("init_rotor_speed_normalized", "must be in [-1, 1]")
        for name in ("randomize_mass", "randomize_inertia", "randomize_thrust",
                     "randomize_rotor_time_constants"):
            if getattr(self, name) >= 1:
                fail(name, "relative half-range must be < 1 (parameters must stay positive)")
        if self.termination_position <= 0:
            fail("termination_position", "must be > 0 m")

    @property
    def observation_dim(self) -> int:
        return observation_dim(self.history_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The critic's observation: the actor's state part without noise, then what only the simulator
# knows. (``observation_layout``: the actor's, from nanofly.policy.observation.)
PRIVILEGED_LAYOUT = [(part.name, part.size) for part in STATE_PARTS] + [
    ("disturbance_force_in_std", 3), ("disturbance_torque_in_std", 3),
    ("rotor_speed_normalized", 4)]


# Indices into the float64 ``cfg`` array the kernels take (one array instead of 30 arguments).
(CFG_NOISE_P, CFG_NOISE_R, CFG_NOISE_V, CFG_NOISE_W, CFG_TERM_P, CFG_TERM_V, CFG_TERM_W,
 CFG_EPISODE_STEPS, CFG_GUIDANCE, CFG_INIT_P, CFG_INIT_ANGLE, CFG_INIT_V, CFG_INIT_W,
 CFG_INIT_ROTOR, CFG_DIST_F_STD, CFG_DIST_T_STD, CFG_DR_MASS, CFG_DR_INERTIA, CFG_DR_THRUST,
 CFG_DR_TAU, CFG_SMIN, CFG_SMAX, CFG_HOVER_ACTION, CFG_ROTOR_DELAY, CFG_MASS, CFG_JXX, CFG_JYY,
 CFG_JZZ, CFG_C0, CFG_C1, CFG_C2, CFG_TAU_RISE, CFG_TAU_FALL, NUM_CFG) = range(34)

# Reward weight indices (RewardWeights field order).
W_SCALE, W_CONSTANT, W_P, W_Q, W_V, W_W, W_A, W_TERM, W_NON_NEGATIVE = range(9)

# Draw indices for the per-episode random numbers (hash counter c); orientation tries use 100+.
_D_GUIDE, _D_POS, _D_VEL, _D_ANGVEL, _D_DR, _D_FORCE, _D_TORQUE, _D_ORI = 0, 1, 4, 7, 10, 14, 20, 100


@njit(cache=True)
def _first_non_finite(actions):
    """The first row of (N, 4) ``actions`` holding NaN or Inf, or -1."""
    for i in range(actions.shape[0]):
        for k in range(4):
            if not math.isfinite(actions[i, k]):
                return i
    return -1


@njit(cache=True)
def _write_actions(actions, blocks, rotor_delay, smin, smax, clipped):
    """Clip (N, 4) actions to [-1, 1] and write them into the blocks. (A pass of its own:
    done per piece inside the step kernel it was slower.)"""
    half_span = (smax - smin) * 0.5
    for i in range(actions.shape[0]):
        o = (i // dyn.BLOCK) * (dyn.BLOCK_ROWS * dyn.BLOCK) + (i % dyn.BLOCK)
        for k in range(4):
            a = min(max(actions[i, k], -1.0), 1.0)
            clipped[i, k] = a
            blocks[o + (dyn.ROW_ACTION + k) * dyn.BLOCK] = a
            if not rotor_delay:  # ablation: the rotor is at its set point at once
                blocks[o + (dyn.ROW_STATE + dyn.S_ROTOR_SPEED + k) * dyn.BLOCK] = (
                    smin + (a + 1.0) * half_span)


@njit(cache=True)
def _reset_env(i, blocks, cfg, seed, episode, target_p, target_v):
    """Draw episode ``episode[i]``'s initial state, vehicle parameters and disturbance."""
    e = episode[i]
    o = (i // dyn.BLOCK) * (dyn.BLOCK_ROWS * dyn.BLOCK) + (i % dyn.BLOCK)
    B = dyn.BLOCK
    guided = uniform(seed, i, e, _D_GUIDE) < cfg[CFG_GUIDANCE]
    qw, qx, qy, qz = 1.0, 0.0, 0.0, 0.0
    for k in range(3):
        offset = 0.0
        if not guided:
            offset = (2.0 * uniform(seed, i, e, _D_POS + k) - 1.0) * cfg[CFG_INIT_P]
        blocks[o + (dyn.S_POSITION + k) * B] = target_p[i, k] + offset
        blocks[o + (dyn.S_VELOCITY + k) * B] = target_v[i, k] + (
            2.0 * uniform(seed, i, e, _D_VEL + k) - 1.0) * cfg[CFG_INIT_V]
        blocks[o + (dyn.S_ANGULAR_VELOCITY + k) * B] = (
            2.0 * uniform(seed, i, e, _D_ANGVEL + k) - 1.0) * cfg[CFG_INIT_W]
    if not guided and cfg[CFG_INIT_ANGLE] > 0.0:
        # Uniform rotation (Shoemake), rejected until within the maximum angle of level.
        cos_half_max = math.cos(0.5 * cfg[CFG_INIT_ANGLE])
        # A try is accepted when |w| = a |sin(2 pi u2)| >= cos(max / 2): tries that cannot be
        # (a too small) skip the trigonometry, and x, y, z are computed for the accepted try
        # only. Same draws and formulas as computing everything each try (resets are the
        # costly part of a step at high termination rates: ~5 tries of 2 sincos each).
        for t in range(10000):
            u1 = uniform(seed, i, e, _D_ORI + 3 * t)
            a = math.sqrt(1.0 - u1)
            if a < cos_half_max:
                continue
            u2 = uniform(seed, i, e, _D_ORI + 3 * t + 1)
            cw = a * math.sin(2.0 * math.pi * u2)
            if abs(cw) >= cos_half_max:  # rotation angle 2 acos(|w|) <= max angle
                u3 = uniform(seed, i, e, _D_ORI + 3 * t + 2)
                b = math.sqrt(u1)
                cx = a * math.cos(2.0 * math.pi * u2)
                cy = b * math.sin(2.0 * math.pi * u3)
                cz = b * math.cos(2.0 * math.pi * u3)
                if cw < 0.0:  # q and -q are the same rotation; keep w >= 0
                    cw, cx, cy, cz = -cw, -cx, -cy, -cz
                qw, qx, qy, qz = cw, cx, cy, cz
                break
    blocks[o + dyn.S_QUATERNION * B] = qw
    blocks[o + (dyn.S_QUATERNION + 1) * B] = qx
    blocks[o + (dyn.S_QUATERNION + 2) * B] = qy
    blocks[o + (dyn.S_QUATERNION + 3) * B] = qz
    smin = cfg[CFG_SMIN]
    smax = cfg[CFG_SMAX]
    rotor = smin + (cfg[CFG_INIT_ROTOR] + 1.0) * 0.5 * (smax - smin)
    for k in range(4):
        blocks[o + (dyn.S_ROTOR_SPEED + k) * B] = rotor
        blocks[o + (dyn.ROW_ACTION + k) * B] = cfg[CFG_INIT_ROTOR]
    # Vehicle parameters for this episode (domain randomization factors are 1 when off).
    f_mass = 1.0 + cfg[CFG_DR_MASS] * (2.0 * uniform(seed, i, e, _D_DR) - 1.0)
    f_thrust = 1.0 + cfg[CFG_DR_THRUST] * (2.0 * uniform(seed, i, e, _D_DR + 1) - 1.0)
    f_tau = 1.0 + cfg[CFG_DR_TAU] * (2.0 * uniform(seed, i, e, _D_DR + 2) - 1.0)
    mass = cfg[CFG_MASS] * f_mass
    p = o + dyn.ROW_PARAMS * B
    blocks[p + dyn.P_C0 * B] = cfg[CFG_C0] * f_thrust
    blocks[p + dyn.P_C1 * B] = cfg[CFG_C1] * f_thrust
    blocks[p + dyn.P_C2 * B] = cfg[CFG_C2] * f_thrust
    blocks[p + dyn.P_INV_MASS * B] = 1.0 / mass
    inertia = (cfg[CFG_JXX], cfg[CFG_JYY], cfg[CFG_JZZ])
    for k in range(3):
        j = inertia[k] * (1.0 + cfg[CFG_DR_INERTIA] * (2.0 * uniform(seed, i, e, _D_DR + 3 + k) - 1.0))
        blocks[p + (dyn.P_JXX + k) * B] = j
        blocks[p + (dyn.P_INV_JXX + k) * B] = 1.0 / j
        force = normal(seed, i, e, _D_FORCE + k) * cfg[CFG_DIST_F_STD]
        torque = normal(seed, i, e, _D_TORQUE + k) * cfg[CFG_DIST_T_STD]
        blocks[p + (dyn.P_DIST_ACC + k) * B] = force / mass
        blocks[p + (dyn.P_DIST_ANG_ACC + k) * B] = torque / j
    blocks[p + dyn.P_INV_TAU_RISING * B] = 1.0 / (cfg[CFG_TAU_RISE] * f_tau)
    blocks[p + dyn.P_INV_TAU_FALLING * B] = 1.0 / (cfg[CFG_TAU_FALL] * f_tau)
    if cfg[CFG_ROTOR_DELAY] == 0.0:
        blocks[p + dyn.P_INV_TAU_RISING * B] = 0.0
        blocks[p + dyn.P_INV_TAU_FALLING * B] = 0.0


@njit(inline="always")
def _noise_window(seed, step_index, i, stream):
    """Start of env i's observation-noise window in the Gaussian pool at this step."""
    return np.int64(hash4(seed, step_index, i, stream) & np.uint64(NOISE_POOL_SIZE - 1))


@njit(cache=True)
def _observe(i, blocks, cfg, seed, step_index, stream, target_p, target_v, noise_pool, ob, pr,
             episode_constants):
    """Write env i's privileged observation ``pr`` and the first 18 (noisy) values of its actor
    observation ``ob`` (the action history part is maintained by the callers); returns
    (pos error^2, 1 - qw^2, vel error^2, angvel^2, out of bounds) for reward and termination."""
    B = dyn.BLOCK
    o = (i // B) * (dyn.BLOCK_ROWS * B) + (i % B)
    row_p = o + dyn.S_POSITION * B
    px = blocks[row_p] - target_p[i, 0]
    py = blocks[row_p + B] - target_p[i, 1]
    pz = blocks[row_p + 2 * B] - target_p[i, 2]
    row_q = o + dyn.S_QUATERNION * B
    qw = blocks[row_q]
    qx = blocks[row_q + B]
    qy = blocks[row_q + 2 * B]
    qz = blocks[row_q + 3 * B]
    row_v = o + dyn.S_VELOCITY * B
    vx = blocks[row_v] - target_v[i, 0]
    vy = blocks[row_v + B] - target_v[i, 1]
    vz = blocks[row_v + 2 * B] - target_v[i, 2]
    row_w = o + dyn.S_ANGULAR_VELOCITY * B
    wx = blocks[row_w]
    wy = blocks[row_w + B]
    wz = blocks[row_w + 2 * B]
    one = np.float32(1.0)
    two = np.float32(2.0)
    r00 = one - two * (qy * qy + qz * qz)
    r01 = two * (qx * qy - qw * qz)
    r02 = two * (qx * qz + qw * qy)
    r10 = two * (qx * qy + qw * qz)
    r11 = one - two * (qx * qx + qz * qz)
    r12 = two * (qy * qz - qw * qx)
    r20 = two * (qx * qz - qw * qy)
    r21 = two * (qy * qz + qw * qx)
    r22 = one - two * (qx * qx + qy * qy)
    pr[0] = px
    pr[1] = py
    pr[2] = pz
    pr[3] = r00
    pr[4] = r01
    pr[5] = r02
    pr[6] = r10
    pr[7] = r11
    pr[8] = r12
    pr[9] = r20
    pr[10] = r21
    pr[11] = r22
    pr[12] = vx
    pr[13] = vy
    pr[14] = vz
    pr[15] = wx
    pr[16] = wy
    pr[17] = wz
    if episode_constants:
        # Disturbance force and torque in units of their standard deviation (O(1) inputs for
        # the critic; raw torques are ~1e-5 N m). Constant per episode: written at resets only.
        p = o + dyn.ROW_PARAMS * B
        f_scale = 0.0 if cfg[CFG_DIST_F_STD] == 0.0 else 1.0 / (cfg[CFG_DIST_F_STD] * blocks[p + dyn.P_INV_MASS * B])
        t_scale = 0.0 if cfg[CFG_DIST_T_STD] == 0.0 else 1.0 / cfg[CFG_DIST_T_STD]
        for k in range(3):
            pr[STATE_PART + k] = blocks[p + (dyn.P_DIST_ACC + k) * B] * f_scale
            pr[STATE_PART + 3 + k] = blocks[p + (dyn.P_DIST_ANG_ACC + k) * B] * blocks[p + (dyn.P_JXX + k) * B] * t_scale
    smin = cfg[CFG_SMIN]
    scale = 2.0 / (cfg[CFG_SMAX] - smin)
    for k in range(4):
        pr[STATE_PART + 6 + k] = (blocks[o + (dyn.S_ROTOR_SPEED + k) * B] - smin) * scale - 1.0
    # Actor observation: the same state part plus noise from a window of the Gaussian pool at a
    # counter-based random offset (exact Gaussian samples, no transcendental calls per step).
    # (indexed from w, not sliced: a slice is a new array whose reference count numba updates
    # with an atomic call per env, which cost more than the rest of this function)
    w = _noise_window(seed, step_index, i, stream)
    sp = np.float32(cfg[CFG_NOISE_P])
    sr = np.float32(cfg[CFG_NOISE_R])
    sv = np.float32(cfg[CFG_NOISE_V])
    sw = np.float32(cfg[CFG_NOISE_W])
    for k in range(3):
        ob[k] = pr[k] + sp * noise_pool[w + k]
        ob[12 + k] = pr[12 + k] + sv * noise_pool[w + 12 + k]
        ob[15 + k] = pr[15 + k] + sw * noise_pool[w + 15 + k]
    for k in range(3, 12):
        ob[k] = pr[k] + sr * noise_pool[w + k]
    out_of_bounds = not (abs(px) <= cfg[CFG_TERM_P] and abs(py) <= cfg[CFG_TERM_P]
                         and abs(pz) <= cfg[CFG_TERM_P]
                         and abs(vx) <= cfg[CFG_TERM_V] and abs(vy) <= cfg[CFG_TERM_V]
                         and abs(vz) <= cfg[CFG_TERM_V]
                         and abs(wx) <= cfg[CFG_TERM_W] and abs(wy) <= cfg[CFG_TERM_W]
                         and abs(wz) <= cfg[CFG_TERM_W])  # NaN compares False: terminates
    # 1 - qw^2 from the trace of R (trace = 4 qw^2 - 1), as recompute_rewards does.
    orientation_error = (np.float32(3.0) - (r00 + r11 + r22)) * np.float32(0.25)
    return (px * px + py * py + pz * pz, orientation_error, vx * vx + vy * vy + vz * vz,
            wx * wx + wy * wy + wz * wz, out_of_bounds)


# The same function inlined into the per-step kernel (a call with ~60 machine-word arguments
# costs as much as the body); the other callers use the compiled function, which keeps the
# cold compile time down.
_observe_inlined = njit(inline="always")(_observe.py_func)


@njit(inline="always")
def _fill_history(ob, value):
    for k in range(STATE_PART, ob.shape[0]):
        ob[k] = value


# Each env writes 22 values of its observation row and its 28-value privileged row; at large N
# these lines are not in any cache, and the hardware prefetchers do not follow the observation
# windows (rows ~1 KB apart, a start that moves every step), so each write stalled on memory.
PREFETCH_ENVS_AHEAD = 8


@njit(cache=True, _nrt=False)
def _post_step_range(first, last, blocks, cfg, weights, seed, step_index, clipped, step_count,
                     episode, target_p, target_v, noise_pool, obs_store, base, priv, reward,
                     terminated, truncated, final_obs, final_priv, done):
    """Everything after the dynamics for envs [first, last): action history, observations,
    reward, termination, truncation and automatic reset.

    The actor observation of env i is the window ``obs_store[i, base:base + obs_dim]``; the
    caller has already moved ``base`` 4 values down, so the previous window's first 18 + 4 * (H -
    1) values are now at [base + 22, ...): the history is in place and only the newest action
    and the 18 state values are written (the step is bound by memory traffic at large N)."""
    init_action = np.float32(cfg[CFG_INIT_ROTOR])
    hover = np.float32(cfg[CFG_HOVER_ACTION])
    obs_dim = final_obs.shape[1]
    for i in range(first, last):
        ahead = i + PREFETCH_ENVS_AHEAD
        if ahead < last:  # the rows written below, a few envs ahead (see PREFETCH_ENVS_AHEAD)
            prefetch_for_write(obs_store, ahead, base)
            prefetch_for_write(obs_store, ahead, base + 11)
            prefetch_for_write(obs_store, ahead, base + STATE_PART + 3)
            prefetch_for_write(priv, ahead, 0)
            prefetch_for_write(priv, ahead, 14)
            prefetch_for_write(priv, ahead, PRIVILEGED_DIM - 1)
            w_ahead = _noise_window(seed, step_index, ahead, 0)
            prefetch_for_read(noise_pool, w_ahead)
            prefetch_for_read(noise_pool, w_ahead + STATE_PART - 1)
        ob = obs_store[i, base:base + obs_dim]
        pr = priv[i]
        a0 = clipped[i, 0]
        a1 = clipped[i, 1]
        a2 = clipped[i, 2]
        a3 = clipped[i, 3]
        if obs_dim > STATE_PART:
            ob[STATE_PART] = a0
            ob[STATE_PART + 1] = a1
            ob[STATE_PART + 2] = a2
            ob[STATE_PART + 3] = a3
        step_count[i] += 1
        e_p, e_q, e_v, e_w, oob = _observe_inlined(i, blocks, cfg, seed, step_index, 0,
                                                  target_p, target_v, noise_pool, ob, pr, False)
        d0 = a0 - hover
        d1 = a1 - hover
        d2 = a2 - hover
        d3 = a3 - hover
        e_a = d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
        term = oob
        trunc = (not term) and step_count[i] >= cfg[CFG_EPISODE_STEPS]
        terminated[i] = term
        truncated[i] = trunc
        if term:
            reward[i] = weights[W_TERM]
        else:
            r = weights[W_CONSTANT] - weights[W_SCALE] * (
                weights[W_P] * e_p + weights[W_Q] * e_q + weights[W_V] * e_v
                + weights[W_W] * e_w + weights[W_A] * e_a)
            if weights[W_NON_NEGATIVE] != 0.0 and r < 0.0:
                r = 0.0
            reward[i] = r
        done[i] = term or trunc
        if term or trunc:
            # copy loops, not slice assignments: numba compiles a formatted shape-mismatch
            # error into every slice assignment (seconds of cold compile)
            copy_into(final_obs[i], ob)
            copy_into(final_priv[i], pr)
            episode[i] += 1
            step_count[i] = 0
            _reset_env(i, blocks, cfg, seed, episode, target_p, target_v)
            _fill_history(ob, init_action)
            _observe(i, blocks, cfg, seed, step_index, 1, target_p, target_v, noise_pool, ob, pr,
                     True)


@njit(inline="always")
def _rewind_rows(first, last, obs_store, old_base, new_base, obs_dim):
    """Move the observation windows of rows [first, last) from ``old_base`` to ``new_base``
    (> old_base) in pieces no longer than the distance, from the top down, so that no piece
    overlaps itself (memmove order; each piece is a vectorized copy)."""
    gap = new_base - old_base
    for i in range(first, last):
        row = obs_store[i]
        hi = obs_dim
        while hi > 0:
            lo = max(hi - gap, 0)
            copy_into(row[new_base + lo:new_base + hi], row[old_base + lo:old_base + hi])
            hi = lo


@functools.lru_cache(maxsize=None)
def _dynamics_kernel_address() -> int:
    """The machine code of ``dynamics.step_block_range`` for float32 blocks, which the step
    kernels call through ``call_kernel``: the same code as ``dynamics.step`` and
    ``dynamics.step_blocks`` run, so all agree bit for bit."""
    array = nb_types.Array(nb_types.float32, 1, "C")
    return kernel_address(dyn.step_block_range, array, array)


# Environments per piece of a step: the dynamics of a piece's blocks, the window move and the
# observation of its rows run back to back while those blocks and rows are in the L2 cache
# (~80 KB of blocks). The dynamics run as a call to the same compiled kernel as
# ``dynamics.step_blocks`` (inlined into this kernel, the fastmath RK4 compiled to different
# instructions and moved results by 1 ulp, which changes every trained policy).
STEP_PIECE_ENVS = 512


@njit(cache=True)
def _step_pieces(first, last, rewind_from, dynamics_kernel, consts, blocks, cfg, weights, seed,
                 step_index, clipped, step_count, episode, target_p, target_v, noise_pool,
                 obs_store, base, priv, reward, terminated, truncated, final_obs, final_priv, done):
    """One step of envs [first, last) (``first`` a multiple of the block size; ``last`` too
    unless it is the last env), in pieces of STEP_PIECE_ENVS: the dynamics of the piece's blocks
    (their actions already written by ``_write_actions``), the observation windows moved back to
    the top if ``rewind_from`` >= 0 (from there to ``base`` + 4), then ``_post_step_range``.
    ``dynamics_kernel`` is ``_dynamics_kernel_address()``."""
    obs_dim = final_obs.shape[1]
    block_size = dyn.BLOCK_ROWS * dyn.BLOCK
    for p0 in range(first, last, STEP_PIECE_ENVS):
        p1 = min(p0 + STEP_PIECE_ENVS, last)
        b0 = p0 // dyn.BLOCK
        b1 = (p1 + dyn.BLOCK - 1) // dyn.BLOCK  # the last block may hold padding lanes
        call_kernel(dynamics_kernel, blocks[b0 * block_size:b1 * block_size], consts)
        if rewind_from >= 0:
            _rewind_rows(p0, p1, obs_store, rewind_from, base + 4, obs_dim)
        _post_step_range(p0, p1, blocks, cfg, weights, seed, step_index, clipped, step_count,
                         episode, target_p, target_v, noise_pool, obs_store, base, priv, reward,
                         terminated, truncated, final_obs, final_priv, done)


@njit(cache=True, parallel=True)
def _step_parallel(num_chunks, n, rewind_from, dynamics_kernel, consts, blocks, cfg, weights,
                   seed, step_index, clipped, step_count, episode, target_p, target_v,
                   noise_pool, obs_store, base, priv, reward, terminated, truncated, final_obs,
                   final_priv, done):
    num_blocks = (n + dyn.BLOCK - 1) // dyn.BLOCK
    for c in prange(num_chunks):  # chunks of whole blocks
        first = ((num_blocks * c) // num_chunks) * dyn.BLOCK
        last = min(((num_blocks * (c + 1)) // num_chunks) * dyn.BLOCK, n)
        _step_pieces(first, last, rewind_from, dynamics_kernel, consts, blocks, cfg, weights,
                     seed, step_index, clipped, step_count, episode, target_p, target_v,
                     noise_pool, obs_store, base, priv, reward, terminated, truncated, final_obs,
                     final_priv, done)


@njit(cache=True)
def _reset_all(blocks, cfg, seed, step_index, episode, step_count, target_p, target_v,
               noise_pool, obs_store, base, obs_dim, priv):
    init_action = np.float32(cfg[CFG_INIT_ROTOR])
    for i in range(obs_store.shape[0]):
        ob = obs_store[i, base:base + obs_dim]
        step_count[i] = 0
        _reset_env(i, blocks, cfg, seed, episode, target_p, target_v)
        _fill_history(ob, init_action)
        _observe(i, blocks, cfg, seed, step_index, 2, target_p, target_v, noise_pool, ob, priv[i],
                 True)


@njit(cache=True)
def _observe_all(blocks, cfg, seed, step_index, target_p, target_v, noise_pool, obs_store, base,
                 obs_dim, priv):
    for i in range(obs_store.shape[0]):
        _observe(i, blocks, cfg, seed, step_index, 3, target_p, target_v, noise_pool,
                 obs_store[i, base:base + obs_dim], priv[i], True)


@njit(cache=True)
def _recompute_rewards_kernel(p, actions, terminated, w, hover_action, out):
    # One pass over the rows (the trainer's are strided views of its replay rows). The sums
    # are in the order NumPy's einsum used here before (three terms left to right, four as
    # two pairs) and without fastmath (no fused multiply-add), so the rewards, and with them
    # every training run, are bit for bit what they were.
    three = np.float32(3.0)
    quarter = np.float32(0.25)
    zero = np.float32(0.0)
    for i in range(p.shape[0]):
        e_p = p[i, 0] * p[i, 0] + p[i, 1] * p[i, 1] + p[i, 2] * p[i, 2]
        e_q = (three - (p[i, 3] + p[i, 7] + p[i, 11])) * quarter
        e_v = p[i, 12] * p[i, 12] + p[i, 13] * p[i, 13] + p[i, 14] * p[i, 14]
        e_w = p[i, 15] * p[i, 15] + p[i, 16] * p[i, 16] + p[i, 17] * p[i, 17]
        d0 = actions[i, 0] - hover_action
        d1 = actions[i, 1] - hover_action
        d2 = actions[i, 2] - hover_action
        d3 = actions[i, 3] - hover_action
        e_a = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        r = w[W_CONSTANT] - w[W_SCALE] * (w[W_P] * e_p + w[W_Q] * e_q + w[W_V] * e_v
                                           + w[W_W] * e_w + w[W_A] * e_a)
        if w[W_NON_NEGATIVE] != zero and r < zero:
            r = zero
        out[i] = w[W_TERM] if terminated[i] != zero else r


def recompute_rewards(next_privileged_obs: np.ndarray, actions: np.ndarray,
                      terminated: np.ndarray, weights: RewardWeights,
                      hover_action: float, out: np.ndarray | None = None) -> np.ndarray:
    """Rewards of stored transitions under new weights (curriculum), from the privileged
    observation after each step; the same formula as the simulator's (float32). Arrays may be
    strided views (rows of a replay buffer); ``out``: where to write them (float32, n rows)."""
    p = np.asarray(next_privileged_obs, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    terminated = np.asarray(terminated, dtype=np.float32)
    n = p.shape[0]
    if p.ndim != 2 or p.shape[1] < STATE_PART or actions.shape != (n, 4) or terminated.shape != (n,):
        raise ValueError(f"recompute_rewards: shapes {p.shape}, {actions.shape}, "
                         f"{terminated.shape}; expected (n, 28), (n, 4), (n,)")
    if out is None:
        out = np.empty(n, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (n,)):
        raise ValueError(f"recompute_rewards: out must be a float32 array of shape ({n},), got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {np.shape(out)}")
    _recompute_rewards_kernel(p, actions, terminated, weights.as_array().astype(np.float32),
                              np.float32(hover_action), out)
    return out


class ObservationWindows:
    """The actor observations of N environments, each a window sliding down a longer row, so
    that the action history moves by one action per step without being copied.

    Row i of ``storage`` holds env i's observation at columns [base, base + obs_dim): the 18
    state values, then the past actions, newest first. Each step moves ``base`` one action
    (4 values) down (``advance``): the previous observation's state values and history are then
    at [base + 22, ...), where the new observation's history continues, and the step kernels
    write only the newest action and the 18 state values (``_post_step_range``). Every
    HISTORY_SLACK steps the windows reach the row start and are moved back to the top
    (``_rewind_rows``, inside the step kernels). Without a history the window stays put.
    """

    def __init__(self, num_envs: int, observation_dim: int, history_length: int):
        slack = HISTORY_SLACK if history_length else 0
        self.storage = np.zeros((num_envs, observation_dim + dyn.ACTION_DIM * slack), np.float32)
        self.top = dyn.ACTION_DIM * slack  # where the windows start after a reset or a move back
        self.base = self.top  # where they start now
        self._views = {
            b: np.lib.stride_tricks.as_strided(self.storage[:, b:],
                                               shape=(num_envs, observation_dim),
                                               strides=self.storage.strides, writeable=True)
            for b in range(0, self.top + 1, dyn.ACTION_DIM)}

    @property
    def current(self) -> np.ndarray:
        """The (N, obs_dim) observations now (a strided view of ``storage``)."""
        return self._views[self.base]

    def restart(self) -> None:
        """Windows at the top again (a reset rewrites every observation)."""
        self.base = self.top

    def advance(self) -> int:
        """Slide the windows one action down for the next step. Returns the column the step
        kernels must first move them back to the top from (``rewind_from``), or -1."""
        rewind_from = -1
        if self.top:
            if self.base == 0:  # the windows reached the row start: back to the top
                rewind_from, self.base = 0, self.top
            self.base -= dyn.ACTION_DIM
        return rewind_from


class VecEnv:
    """N quadrotors in the hover MDP (see the module docstring for the spaces).

    Parameters: ``num_envs``; ``preset`` (a name, a ``VehicleParams`` or a .toml path);
    ``seed``; ``config`` (an ``MDPConfig``) and/or keyword overrides of its fields;
    ``reward_weights``; ``threads`` for the numba kernels (1 = serial);
    ``copy_outputs`` to return fresh arrays instead of the reused buffers.
    """

    action_dim = 4
    privileged_dim = PRIVILEGED_DIM

    def __init__(self, num_envs: int, preset: str | VehicleParams = "crazyflie_paper", *,
                 seed: int = 0, config: MDPConfig | None = None,
                 reward_weights: RewardWeights | None = None, threads: int = 1,
                 copy_outputs: bool = False, **config_overrides: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = n = int(num_envs)
        self.params = get_preset(preset)
        config = dataclasses.replace(config or MDPConfig(), **config_overrides)
        config.validate()
        self.config = config
        self.threads = int(threads)
        self.copy_outputs = copy_outputs
        self.observation_dim = config.observation_dim
        self.hover_action = self.params.hover_action
        self._reward_weights = reward_weights or RewardWeights()
        self._weights = self._reward_weights.as_array()
        self._cfg = self._make_cfg()
        self._consts = dyn.make_consts(self.params, config.dt, np.float32)

        nb = dyn.num_blocks_for(n)
        self._blocks = np.zeros(nb * dyn.BLOCK_ROWS * dyn.BLOCK, dtype=np.float32)
        pad_params = dyn.env_param_values(self.params)
        # Padding lanes (N not a multiple of 16) hold a level vehicle; they are stepped (the
        # kernel works on whole blocks) but never observed.
        pad_lanes = dyn.lanes(self._blocks, dyn.ROW_STATE, dyn.STATE_DIM)
        pad_lanes[:] = dyn.hover_state(self.params)
        dyn.lanes(self._blocks, dyn.ROW_PARAMS, dyn.NUM_ENV_PARAMS)[:] = pad_params
        dyn.lanes(self._blocks, dyn.ROW_ACTION, dyn.ACTION_DIM)[:] = self.hover_action

        self._step_count = np.zeros(n, dtype=np.int64)
        self._episode = np.zeros(n, dtype=np.int64)
        self.target_position = np.zeros((n, 3), dtype=np.float32)  # m, world; edit in place
        self.target_velocity = np.zeros((n, 3), dtype=np.float32)  # m/s, world
        self._clipped = np.zeros((n, 4), dtype=np.float32)
        self._windows = ObservationWindows(n, self.observation_dim, config.history_length)
        self._priv = np.zeros((n, PRIVILEGED_DIM), dtype=np.float32)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._final_obs = np.zeros((n, self.observation_dim), dtype=np.float32)
        self._final_priv = np.zeros_like(self._priv)
        self._done = np.zeros(n, dtype=bool)
        self._info: dict[str, Any] = {}
        self._step_index = 0
        self._noise_pool = np.zeros(NOISE_POOL_SIZE + STATE_PART, dtype=np.float32)
        self._pool_generation = -1
        self._needs_reset = True
        self.seed(seed)

    # -- configuration --------------------------------------------------------------------
    def _make_cfg(self) -> np.ndarray:
        c, p = self.config, self.params
        cfg = np.zeros(NUM_CFG, dtype=np.float64)
        noise = 1.0 if c.observation_noise else 0.0
        cfg[CFG_NOISE_P] = noise * c.noise_position
        cfg[CFG_NOISE_R] = noise * c.noise_orientation
        cfg[CFG_NOISE_V] = noise * c.noise_linear_velocity
        cfg[CFG_NOISE_W] = noise * c.noise_angular_velocity
        cfg[CFG_TERM_P] = c.termination_position
        cfg[CFG_TERM_V] = c.termination_linear_velocity
        cfg[CFG_TERM_W] = c.termination_angular_velocity
        cfg[CFG_EPISODE_STEPS] = c.episode_steps
        cfg[CFG_GUIDANCE] = c.guidance_probability
        cfg[CFG_INIT_P] = c.init_max_position
        cfg[CFG_INIT_ANGLE] = c.init_max_angle
        cfg[CFG_INIT_V] = c.init_max_linear_velocity
        cfg[CFG_INIT_W] = c.init_max_angular_velocity
        cfg[CFG_INIT_ROTOR] = c.init_rotor_speed_normalized
        disturbance = 1.0 if c.disturbance else 0.0
        cfg[CFG_DIST_F_STD] = disturbance * c.disturbance_force_std_per_weight * p.weight
        cfg[CFG_DIST_T_STD] = disturbance * c.disturbance_torque_std_per_weight * p.weight
        cfg[CFG_DR_MASS] = c.randomize_mass
        cfg[CFG_DR_INERTIA] = c.randomize_inertia
        cfg[CFG_DR_THRUST] = c.randomize_thrust
        cfg[CFG_DR_TAU] = c.randomize_rotor_time_constants
        cfg[CFG_SMIN] = p.rotor_speed_min
        cfg[CFG_SMAX] = p.rotor_speed_max
        cfg[CFG_HOVER_ACTION] = p.hover_action
        cfg[CFG_ROTOR_DELAY] = 1.0 if c.rotor_delay else 0.0
        cfg[CFG_MASS] = p.mass
        cfg[CFG_JXX:CFG_JZZ + 1] = p.inertia_diagonal()
        cfg[CFG_C0:CFG_C2 + 1] = p.thrust_coefficients
        cfg[CFG_TAU_RISE] = p.rotor_time_constant_rising
        cfg[CFG_TAU_FALL] = p.rotor_time_constant_falling
        return cfg

    @property
    def reward_weights(self) -> RewardWeights:
        return self._reward_weights

    @reward_weights.setter
    def reward_weights(self, weights: RewardWeights) -> None:
        """Change the reward weights (takes effect from the next step; curriculum)."""
        self._weights[:] = weights.as_array()
        self._reward_weights = weights

    def seed(self, seed: int) -> None:
        """Reseed; takes effect at the next ``reset()``."""
        self._seed_value = int(seed)
        self._seed = seed_to_uint64(seed)
        self._pool_generation = -1
        self._needs_reset = True

    def _refresh_noise_pool(self) -> None:
        # The Gaussian pool is redrawn every episode length, from (seed, generation): windows
        # into it are the observation noise (see _observe).
        generation = self._step_index // self.config.episode_steps
        if generation != self._pool_generation:
            rng = np.random.default_rng([self._seed_value & 0xFFFFFFFF, generation, 7])
            pool = rng.standard_normal(NOISE_POOL_SIZE, dtype=np.float32)
            self._noise_pool[:NOISE_POOL_SIZE] = pool
            self._noise_pool[NOISE_POOL_SIZE:] = pool[:STATE_PART]
            self._pool_generation = generation

    # -- Gymnasium-style API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset every environment. Returns ``(obs, info)``."""
        if seed is not None or self._pool_generation < 0:
            if seed is not None:
                self.seed(seed)
            self._step_index = 0
            self._episode[:] = 0
        else:  # no new seed: continue the random streams with new episodes
            self._episode += 1
        self._windows.restart()
        self._refresh_noise_pool()
        _reset_all(self._blocks, self._cfg, self._seed, self._step_index, self._episode,
                   self._step_count, self.target_position, self.target_velocity,
                   self._noise_pool, self._windows.storage, self._windows.base,
                   self.observation_dim, self._priv)
        self._needs_reset = False
        self._done[:] = False
        self._info = {"privileged_obs": self._priv, "final_obs": self._final_obs,
                      "_final_obs": self._done, "final_privileged_obs": self._final_priv}
        return self._out(self.obs), self._out_info()

    @property
    def obs(self) -> np.ndarray:
        """The current (N, obs_dim) actor observation (a strided view of the env's storage)."""
        return self._windows.current

    def step(self, actions: np.ndarray):
        """Advance every environment by one control period with normalized actions (N, 4) in
        [-1, 1] (values outside are clipped; NaN/Inf raise ValueError and nothing is stepped).
        Returns ``(obs, reward, terminated, truncated, info)``."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after seed())")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, 4):
            raise ValueError(f"actions must have shape ({self.num_envs}, 4), got {actions.shape}")
        if actions.dtype != np.float32:
            if not np.issubdtype(actions.dtype, np.floating):
                raise TypeError(f"actions must be floating point, got {actions.dtype}")
            actions = actions.astype(np.float32)
        bad = _first_non_finite(actions)
        if bad >= 0:
            raise ValueError(f"actions of env {bad} are not finite: {actions[bad].tolist()}; "
                             "nothing was stepped")
        _write_actions(actions, self._blocks, self.config.rotor_delay,
                       np.float32(self.params.rotor_speed_min),
                       np.float32(self.params.rotor_speed_max), self._clipped)
        self._step_index += 1
        rewind_from = self._windows.advance()
        self._refresh_noise_pool()
        args = (rewind_from, _dynamics_kernel_address(), self._consts, self._blocks, self._cfg,
                self._weights, self._seed, self._step_index, self._clipped, self._step_count,
                self._episode, self.target_position, self.target_velocity, self._noise_pool,
                self._windows.storage, self._windows.base, self._priv, self._reward,
                self._terminated,
                self._truncated, self._final_obs, self._final_priv, self._done)
        if self.threads > 1 and self.num_envs >= 2048:
            _step_parallel(self.threads, self.num_envs, *args)
        else:
            _step_pieces(0, self.num_envs, *args)
        return (self._out(self.obs), self._out(self._reward), self._out(self._terminated),
                self._out(self._truncated), self._out_info())

    def _out(self, array: np.ndarray) -> np.ndarray:
        return array.copy() if self.copy_outputs else array

    def _out_info(self) -> dict[str, Any]:
        if self.copy_outputs:
            return {k: v.copy() for k, v in self._info.items()}
        return self._info

    # -- state access (tests, evaluation, tracking) ------------------------------------------
    @property
    def states(self) -> np.ndarray:
        """A copy of the (N, 17) simulator states."""
        return dyn.read_rows(self._blocks, self.num_envs, dyn.ROW_STATE, dyn.STATE_DIM)

    @property
    def episode_step(self) -> np.ndarray:
        """Steps taken in the current episode, per environment (a copy)."""
        return self._step_count.copy()

    def set_states(self, states: np.ndarray, action_history: float | np.ndarray | None = None,
                   disturbance_force: np.ndarray | None = None,
                   disturbance_torque: np.ndarray | None = None):
        """Put every environment into the given (N, 17) states, start new episodes there (the
        vehicle parameters stay as drawn) and return ``(obs, info)``. ``action_history`` fills
        the history (default: the action matching the initial rotor speed); the optional
        disturbances are world-frame force (N, 3) in N and body torque (N, 3) in N m."""
        if self._needs_reset:
            self.reset()
        states = dyn.check_states(states)
        if states.shape[0] != self.num_envs:
            raise ValueError(f"states must have {self.num_envs} rows, got {states.shape[0]}")
        dyn.write_rows(self._blocks, dyn.ROW_STATE, states.astype(np.float32),
                       dyn.hover_state(self.params))
        n = self.num_envs
        for value, row, name in ((disturbance_force, dyn.P_DIST_ACC, "disturbance_force"),
                                 (disturbance_torque, dyn.P_DIST_ANG_ACC, "disturbance_torque")):
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (n, 3) or not np.all(np.isfinite(value)):
                raise ValueError(f"{name} must be a finite ({n}, 3) array")
            cur = dyn.read_rows(self._blocks, n, dyn.ROW_PARAMS, dyn.NUM_ENV_PARAMS)
            if row == dyn.P_DIST_ACC:
                cur[:, row:row + 3] = value * cur[:, [dyn.P_INV_MASS]]
            else:
                cur[:, row:row + 3] = value * cur[:, dyn.P_INV_JXX:dyn.P_INV_JZZ + 1]
            dyn.write_rows(self._blocks, dyn.ROW_PARAMS, cur.astype(np.float32),
                           dyn.env_param_values(self.params))
        fill = self.config.init_rotor_speed_normalized if action_history is None else action_history
        self.obs[:, STATE_PART:] = np.float32(fill)
        self._step_count[:] = 0
        _observe_all(self._blocks, self._cfg, self._seed, self._step_index, self.target_position,
                     self.target_velocity, self._noise_pool, self._windows.storage,
                     self._windows.base,
                     self.observation_dim, self._priv)
        return self._out(self.obs), self._out_info()

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this environment exactly (checkpoints)."""
        return {"blocks": self._blocks.copy(), "obs_store": self._windows.storage.copy(),
                "base": self._windows.base, "step_count": self._step_count.copy(),
                "episode": self._episode.copy(), "step_index": self._step_index,
                "seed": self._seed_value, "weights": self._weights.copy(),
                "target_position": self.target_position.copy(),
                "target_velocity": self.target_velocity.copy(), "priv": self._priv.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output taken from an environment built the same way."""
        if (state["blocks"].shape != self._blocks.shape
                or state["obs_store"].shape != self._windows.storage.shape):
            raise ValueError("environment state does not match this environment's size/config")
        self.seed(int(state["seed"]))
        self._blocks[:] = state["blocks"]
        self._windows.storage[:] = state["obs_store"]
        self._windows.base = int(state["base"])
        self._step_count[:] = state["step_count"]
        self._episode[:] = state["episode"]
        self._step_index = int(state["step_index"])
        self.reward_weights = RewardWeights(*[float(w) for w in state["weights"]])
        self.target_position[:] = state["target_position"]
        self.target_velocity[:] = state["target_velocity"]
        self._priv[:] = state["priv"]
        self._refresh_noise_pool()
        self._needs_reset = False
        self._info = {"privileged_obs": self._priv, "final_obs": self._final_obs,
                      "_final_obs": self._done, "final_privileged_obs": self._final_priv}

    def close(self) -> None:
        pass
