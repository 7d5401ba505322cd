"""Batched quadrotor dynamics: one classic RK4 step per call, as the reference simulator does it.

Two ways in, one kernel:

* ``step(states, actions, params, dt)``: the checked, convenient API over ``(N, 17)`` states.
* ``step_blocks(blocks, consts)``: the same kernel on the simulator's internal layout, which is
  what ``VecEnv`` uses. Environments are grouped in blocks of ``BLOCK`` (16) lanes stored as
  ``[block][row][lane]`` in one flat array (rows: state, action, per-env parameters), so the
  lane loop has compile-time strides and LLVM turns it into 16-wide SIMD (an (N, 17) layout
  does not vectorize; docs/history.md).

The model (tests/data/README.md, the reference's): rotor speeds are part of the RK4 state and follow a
first-order lag toward the set point ``min + (a + 1) / 2 * (max - min)``, with the rising or
falling time constant chosen inside every RK4 stage (written branch-free as
``max(e, 0) / tau_rising + min(e, 0) / tau_falling``); thrust ``c0 + c1 w + c2 w^2`` along body
+z; after the step rotor speeds are clamped to [min, max] and the quaternion is renormalized.
Optional per-environment disturbance force (world frame, N) and torque (body frame, N m).

Kernels take every constant from arrays of the state's dtype, so float32 stays float32 (a bare
Python float literal would promote the whole computation to float64).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .presets import VehicleParams

# Rows of the 17-value state: position (3, m, world frame), attitude quaternion (4, w x y z,
# body to world), linear velocity (3, m/s, world frame), angular velocity (3, rad/s, body
# frame), rotor speeds (4, the preset's unit).
S_POSITION, S_QUATERNION, S_VELOCITY, S_ANGULAR_VELOCITY, S_ROTOR_SPEED = 0, 3, 7, 10, 13
STATE_DIM = 17
ACTION_DIM = 4
BLOCK = 16  # environments per SIMD block (16 float32 lanes = one AVX-512 register)

# Per-environment parameter rows (relative to ROW_PARAMS).
P_C0, P_C1, P_C2 = 0, 1, 2  # thrust coefficients (N, N/unit, N/unit^2)
P_INV_MASS = 3  # 1/kg
P_JXX, P_JYY, P_JZZ = 4, 5, 6  # inertia diagonal, kg m^2
P_INV_JXX, P_INV_JYY, P_INV_JZZ = 7, 8, 9
P_INV_TAU_RISING, P_INV_TAU_FALLING = 10, 11  # 1/s
P_DIST_ACC = 12  # 12..14: disturbance force / mass, world frame, m/s^2
P_DIST_ANG_ACC = 15  # 15..17: J^-1 disturbance torque, body frame, rad/s^2
NUM_ENV_PARAMS = 18

# One block = BLOCK_ROWS rows of BLOCK lanes: state, then the action being applied, then the
# per-environment parameters. Keeping all three in ONE array matters: with separate arrays LLVM
# cannot rule out that the state stores alias the parameter loads and refuses to vectorize.
ROW_STATE = 0
ROW_ACTION = STATE_DIM
ROW_PARAMS = STATE_DIM + ACTION_DIM
BLOCK_ROWS = STATE_DIM + ACTION_DIM + NUM_ENV_PARAMS

# Shared constants (``consts`` array).
C_ROTOR_X = 0  # 0..3: rotor x positions, m
C_ROTOR_Y = 4  # 4..7: rotor y positions, m
C_YAW = 8  # 8..11: yaw direction * torque constant, m
C_GRAVITY = 12  # 12..14: m/s^2
C_SPEED_MIN, C_SPEED_MAX = 15, 16
C_DT, C_HALF_DT, C_SIXTH_DT, C_HALF, C_ONE, C_TWO, C_ZERO = 17, 18, 19, 20, 21, 22, 23
C_QUARTER, C_SUM_RX, C_SUM_RY, C_SUM_K = 24, 25, 26, 27  # sums of lever arms: 0 if symmetric
NUM_CONSTS = 28


def make_consts(params: VehicleParams, dt: float, dtype=np.float32) -> np.ndarray:
    """The shared-constant array for the kernel."""
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    c = np.zeros(NUM_CONSTS, dtype=np.float64)
    pos = np.asarray(params.rotor_positions, dtype=np.float64)
    c[C_ROTOR_X:C_ROTOR_X + 4] = pos[:, 0]
    c[C_ROTOR_Y:C_ROTOR_Y + 4] = pos[:, 1]
    c[C_YAW:C_YAW + 4] = np.asarray(params.rotor_yaw_directions) * params.rotor_torque_constant
    c[C_GRAVITY:C_GRAVITY + 3] = params.gravity
    c[C_SPEED_MIN] = params.rotor_speed_min
    c[C_SPEED_MAX] = params.rotor_speed_max
    c[C_DT], c[C_HALF_DT], c[C_SIXTH_DT] = dt, dt / 2, dt / 6
    c[C_HALF], c[C_ONE], c[C_TWO], c[C_ZERO] = 0.5, 1.0, 2.0, 0.0
    c[C_QUARTER] = 0.25
    c[C_SUM_RX] = c[C_ROTOR_X:C_ROTOR_X + 4].sum()
    c[C_SUM_RY] = c[C_ROTOR_Y:C_ROTOR_Y + 4].sum()
    c[C_SUM_K] = c[C_YAW:C_YAW + 4].sum()
    return c.astype(dtype)


def env_param_values(params: VehicleParams) -> np.ndarray:
    """The per-environment parameter vector (NUM_ENV_PARAMS,) for a vehicle, float64,
    without disturbance."""
    v = np.zeros(NUM_ENV_PARAMS)
    v[P_C0:P_C2 + 1] = params.thrust_coefficients
    v[P_INV_MASS] = 1.0 / params.mass
    j = params.inertia_diagonal()
    v[P_JXX:P_JZZ + 1] = j
    v[P_INV_JXX:P_INV_JZZ + 1] = 1.0 / j
    v[P_INV_TAU_RISING] = 1.0 / params.rotor_time_constant_rising
    v[P_INV_TAU_FALLING] = 1.0 / params.rotor_time_constant_falling
    return v


@njit(inline="always")
def _derivative(state, setpoints, env, shared):
    """Time derivative of the 17 state values (tuples keep the argument count small enough
    for numba's IR inliner, which is what makes the four RK4 stages one straight-line body)."""
    px, py, pz, qw, qx, qy, qz, vx, vy, vz, wx, wy, wz, r0, r1, r2, r3 = state
    s0, s1, s2, s3 = setpoints
    (c0, c1, c2, inv_m, jxx, jyy, jzz, ijxx, ijyy, ijzz, inv_rise, inv_fall,
     dax, day, daz, dwx, dwy, dwz) = env
    (rx0, rx1, rx2, rx3, ry0, ry1, ry2, ry3, k0, k1, k2, k3, gx, gy, gz, half, two, zero,
     quarter, sum_rx, sum_ry, sum_k) = shared
    # Rotor thrusts (N) from the current (stage) rotor speeds.
    f0 = c0 + (c1 + c2 * r0) * r0
    f1 = c0 + (c1 + c2 * r1) * r1
    f2 = c0 + (c1 + c2 * r2) * r2
    f3 = c0 + (c1 + c2 * r3) * r3
    fz = f0 + f1 + f2 + f3
    # Body torques: r x (0, 0, f) = (ry f, -rx f, 0), plus the rotors' yaw reaction torques.
    # Summed over deviations from the mean thrust (+ mean * sum of the lever arms, which is
    # zero for a symmetric frame): with fused multiply-adds the plain sum leaves a rounding
    # residue at equal thrusts that makes a float32 hover drift millimetres in seconds.
    fm = fz * quarter
    g0 = f0 - fm
    g1 = f1 - fm
    g2 = f2 - fm
    g3 = f3 - fm
    tx = (ry0 * g0 + ry1 * g1 + ry2 * g2 + ry3 * g3) + sum_ry * fm
    ty = -(rx0 * g0 + rx1 * g1 + rx2 * g2 + rx3 * g3) - sum_rx * fm
    tz = (k0 * g0 + k1 * g1 + k2 * g2 + k3 * g3) + sum_k * fm
    # World-frame linear acceleration: R(q) e_z * fz / m + g + disturbance.
    a_total = fz * inv_m
    dvx = two * (qx * qz + qw * qy) * a_total + gx + dax
    dvy = two * (qy * qz - qw * qx) * a_total + gy + day
    dvz = (half + half - two * (qx * qx + qy * qy)) * a_total + gz + daz
    # q' = 0.5 q (x) (0, w)
    dqw = half * (-qx * wx - qy * wy - qz * wz)
    dqx = half * (qw * wx + qy * wz - qz * wy)
    dqy = half * (qw * wy - qx * wz + qz * wx)
    dqz = half * (qw * wz + qx * wy - qy * wx)
    # w' = J^-1 (tau - w x J w) + J^-1 tau_disturbance (diagonal J).
    hx = jxx * wx
    hy = jyy * wy
    hz = jzz * wz
    dwx_ = ijxx * (tx - (wy * hz - wz * hy)) + dwx
    dwy_ = ijyy * (ty - (wz * hx - wx * hz)) + dwy
    dwz_ = ijzz * (tz - (wx * hy - wy * hx)) + dwz
    # Rotor lag, rising or falling time constant chosen per stage, without a branch.
    e0 = s0 - r0
    e1 = s1 - r1
    e2 = s2 - r2
    e3 = s3 - r3
    dr0 = max(e0, zero) * inv_rise + min(e0, zero) * inv_fall
    dr1 = max(e1, zero) * inv_rise + min(e1, zero) * inv_fall
    dr2 = max(e2, zero) * inv_rise + min(e2, zero) * inv_fall
    dr3 = max(e3, zero) * inv_rise + min(e3, zero) * inv_fall
    return (vx, vy, vz, dqw, dqx, dqy, dqz, dvx, dvy, dvz, dwx_, dwy_, dwz_, dr0, dr1, dr2, dr3)


@njit(cache=True, fastmath=True, error_model="numpy")
def step_block_range(blocks, consts):
    """RK4-step every block of ``blocks`` in place (the loop starts at 0: a loop from a
    runtime start lets numba emit negative-index wraparound, which blocks vectorization).

    ``states`` flat [block][17][BLOCK], ``actions`` flat [block][4][BLOCK] (normalized, already
    clipped to [-1, 1]), ``params`` flat [block][NUM_ENV_PARAMS][BLOCK], ``consts`` as
    ``make_consts``. Every index below is (block offset) + row * BLOCK + lane with BLOCK a
    compile-time constant, which is what lets LLVM vectorize the lane loop.
    """
    rx0 = consts[C_ROTOR_X]
    rx1 = consts[C_ROTOR_X + 1]
    rx2 = consts[C_ROTOR_X + 2]
    rx3 = consts[C_ROTOR_X + 3]
    ry0 = consts[C_ROTOR_Y]
    ry1 = consts[C_ROTOR_Y + 1]
    ry2 = consts[C_ROTOR_Y + 2]
    ry3 = consts[C_ROTOR_Y + 3]
    k0 = consts[C_YAW]
    k1 = consts[C_YAW + 1]
    k2 = consts[C_YAW + 2]
    k3 = consts[C_YAW + 3]
    gx = consts[C_GRAVITY]
    gy = consts[C_GRAVITY + 1]
    gz = consts[C_GRAVITY + 2]
    smin = consts[C_SPEED_MIN]
    smax = consts[C_SPEED_MAX]
    dt = consts[C_DT]
    hdt = consts[C_HALF_DT]
    sdt = consts[C_SIXTH_DT]
    half = consts[C_HALF]
    one = consts[C_ONE]
    two = consts[C_TWO]
    zero = consts[C_ZERO]
    span_half = (smax - smin) * half
    shared = (rx0, rx1, rx2, rx3, ry0, ry1, ry2, ry3, k0, k1, k2, k3, gx, gy, gz, half, two, zero,
              consts[C_QUARTER], consts[C_SUM_RX], consts[C_SUM_RY], consts[C_SUM_K])
    for b in range(blocks.shape[0] // (BLOCK_ROWS * BLOCK)):
        so = b * (BLOCK_ROWS * BLOCK)
        ao = so + ROW_ACTION * BLOCK
        po = so + ROW_PARAMS * BLOCK
        for l in range(BLOCK):
            # Set points (preset unit) held through the step.
            s0 = smin + (blocks[ao + 0 * BLOCK + l] + one) * span_half
            s1 = smin + (blocks[ao + 1 * BLOCK + l] + one) * span_half
            s2 = smin + (blocks[ao + 2 * BLOCK + l] + one) * span_half
            s3 = smin + (blocks[ao + 3 * BLOCK + l] + one) * span_half
            c0 = blocks[po + P_C0 * BLOCK + l]
            c1 = blocks[po + P_C1 * BLOCK + l]
            c2 = blocks[po + P_C2 * BLOCK + l]
            inv_m = blocks[po + P_INV_MASS * BLOCK + l]
            jxx = blocks[po + P_JXX * BLOCK + l]
            jyy = blocks[po + P_JYY * BLOCK + l]
            jzz = blocks[po + P_JZZ * BLOCK + l]
            ijxx = blocks[po + P_INV_JXX * BLOCK + l]
            ijyy = blocks[po + P_INV_JYY * BLOCK + l]
            ijzz = blocks[po + P_INV_JZZ * BLOCK + l]
            inv_rise = blocks[po + P_INV_TAU_RISING * BLOCK + l]
            inv_fall = blocks[po + P_INV_TAU_FALLING * BLOCK + l]
            dax = blocks[po + P_DIST_ACC * BLOCK + l]
            day = blocks[po + (P_DIST_ACC + 1) * BLOCK + l]
            daz = blocks[po + (P_DIST_ACC + 2) * BLOCK + l]
            dwx = blocks[po + P_DIST_ANG_ACC * BLOCK + l]
            dwy = blocks[po + (P_DIST_ANG_ACC + 1) * BLOCK + l]
            dwz = blocks[po + (P_DIST_ANG_ACC + 2) * BLOCK + l]

            sp = (s0, s1, s2, s3)
            env = (c0, c1, c2, inv_m, jxx, jyy, jzz, ijxx, ijyy, ijzz, inv_rise, inv_fall,
                   dax, day, daz, dwx, dwy, dwz)
            px = blocks[so + S_POSITION * BLOCK + l]
            py = blocks[so + (S_POSITION + 1) * BLOCK + l]
            pz = blocks[so + (S_POSITION + 2) * BLOCK + l]
            qw = blocks[so + S_QUATERNION * BLOCK + l]
            qx = blocks[so + (S_QUATERNION + 1) * BLOCK + l]
            qy = blocks[so + (S_QUATERNION + 2) * BLOCK + l]
            qz = blocks[so + (S_QUATERNION + 3) * BLOCK + l]
            vx = blocks[so + S_VELOCITY * BLOCK + l]
            vy = blocks[so + (S_VELOCITY + 1) * BLOCK + l]
            vz = blocks[so + (S_VELOCITY + 2) * BLOCK + l]
            wx = blocks[so + S_ANGULAR_VELOCITY * BLOCK + l]
            wy = blocks[so + (S_ANGULAR_VELOCITY + 1) * BLOCK + l]
            wz = blocks[so + (S_ANGULAR_VELOCITY + 2) * BLOCK + l]
            r0 = blocks[so + S_ROTOR_SPEED * BLOCK + l]
            r1 = blocks[so + (S_ROTOR_SPEED + 1) * BLOCK + l]
            r2 = blocks[so + (S_ROTOR_SPEED + 2) * BLOCK + l]
            r3 = blocks[so + (S_ROTOR_SPEED + 3) * BLOCK + l]

            (k1_0, k1_1, k1_2, k1_3, k1_4, k1_5, k1_6, k1_7, k1_8, k1_9, k1_10, k1_11, k1_12,
             k1_13, k1_14, k1_15, k1_16) = _derivative(
                (px, py, pz, qw, qx, qy, qz, vx, vy, vz, wx, wy, wz, r0, r1, r2, r3), sp, env, shared)
            (k2_0, k2_1, k2_2, k2_3, k2_4, k2_5, k2_6, k2_7, k2_8, k2_9, k2_10, k2_11, k2_12,
             k2_13, k2_14, k2_15, k2_16) = _derivative((
                px + hdt * k1_0, py + hdt * k1_1, pz + hdt * k1_2,
                qw + hdt * k1_3, qx + hdt * k1_4, qy + hdt * k1_5, qz + hdt * k1_6,
                vx + hdt * k1_7, vy + hdt * k1_8, vz + hdt * k1_9,
                wx + hdt * k1_10, wy + hdt * k1_11, wz + hdt * k1_12,
                r0 + hdt * k1_13, r1 + hdt * k1_14, r2 + hdt * k1_15, r3 + hdt * k1_16,
                ), sp, env, shared)
            (k3_0, k3_1, k3_2, k3_3, k3_4, k3_5, k3_6, k3_7, k3_8, k3_9, k3_10, k3_11, k3_12,
             k3_13, k3_14, k3_15, k3_16) = _derivative((
                px + hdt * k2_0, py + hdt * k2_1, pz + hdt * k2_2,
                qw + hdt * k2_3, qx + hdt * k2_4, qy + hdt * k2_5, qz + hdt * k2_6,
                vx + hdt * k2_7, vy + hdt * k2_8, vz + hdt * k2_9,
                wx + hdt * k2_10, wy + hdt * k2_11, wz + hdt * k2_12,
                r0 + hdt * k2_13, r1 + hdt * k2_14, r2 + hdt * k2_15, r3 + hdt * k2_16,
                ), sp, env, shared)
            (k4_0, k4_1, k4_2, k4_3, k4_4, k4_5, k4_6, k4_7, k4_8, k4_9, k4_10, k4_11, k4_12,
             k4_13, k4_14, k4_15, k4_16) = _derivative((
                px + dt * k3_0, py + dt * k3_1, pz + dt * k3_2,
                qw + dt * k3_3, qx + dt * k3_4, qy + dt * k3_5, qz + dt * k3_6,
                vx + dt * k3_7, vy + dt * k3_8, vz + dt * k3_9,
                wx + dt * k3_10, wy + dt * k3_11, wz + dt * k3_12,
                r0 + dt * k3_13, r1 + dt * k3_14, r2 + dt * k3_15, r3 + dt * k3_16,
                ), sp, env, shared)

            qw = qw + sdt * (k1_3 + two * (k2_3 + k3_3) + k4_3)
            qx = qx + sdt * (k1_4 + two * (k2_4 + k3_4) + k4_4)
            qy = qy + sdt * (k1_5 + two * (k2_5 + k3_5) + k4_5)
            qz = qz + sdt * (k1_6 + two * (k2_6 + k3_6) + k4_6)
            inv_norm = one / np.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
            blocks[so + S_POSITION * BLOCK + l] = px + sdt * (k1_0 + two * (k2_0 + k3_0) + k4_0)
            blocks[so + (S_POSITION + 1) * BLOCK + l] = (
                py + sdt * (k1_1 + two * (k2_1 + k3_1) + k4_1))
            blocks[so + (S_POSITION + 2) * BLOCK + l] = (
                pz + sdt * (k1_2 + two * (k2_2 + k3_2) + k4_2))
            blocks[so + S_QUATERNION * BLOCK + l] = qw * inv_norm
            blocks[so + (S_QUATERNION + 1) * BLOCK + l] = qx * inv_norm
            blocks[so + (S_QUATERNION + 2) * BLOCK + l] = qy * inv_norm
            blocks[so + (S_QUATERNION + 3) * BLOCK + l] = qz * inv_norm
            blocks[so + S_VELOCITY * BLOCK + l] = vx + sdt * (k1_7 + two * (k2_7 + k3_7) + k4_7)
            blocks[so + (S_VELOCITY + 1) * BLOCK + l] = (
                vy + sdt * (k1_8 + two * (k2_8 + k3_8) + k4_8))
            blocks[so + (S_VELOCITY + 2) * BLOCK + l] = (
                vz + sdt * (k1_9 + two * (k2_9 + k3_9) + k4_9))
            blocks[so + S_ANGULAR_VELOCITY * BLOCK + l] = (
                wx + sdt * (k1_10 + two * (k2_10 + k3_10) + k4_10))
            blocks[so + (S_ANGULAR_VELOCITY + 1) * BLOCK + l] = (
                wy + sdt * (k1_11 + two * (k2_11 + k3_11) + k4_11))
            blocks[so + (S_ANGULAR_VELOCITY + 2) * BLOCK + l] = (
                wz + sdt * (k1_12 + two * (k2_12 + k3_12) + k4_12))
            blocks[so + S_ROTOR_SPEED * BLOCK + l] = min(max(
                r0 + sdt * (k1_13 + two * (k2_13 + k3_13) + k4_13), smin), smax)
            blocks[so + (S_ROTOR_SPEED + 1) * BLOCK + l] = min(max(
                r1 + sdt * (k1_14 + two * (k2_14 + k3_14) + k4_14), smin), smax)
            blocks[so + (S_ROTOR_SPEED + 2) * BLOCK + l] = min(max(
                r2 + sdt * (k1_15 + two * (k2_15 + k3_15) + k4_15), smin), smax)
            blocks[so + (S_ROTOR_SPEED + 3) * BLOCK + l] = min(max(
                r3 + sdt * (k1_16 + two * (k2_16 + k3_16) + k4_16), smin), smax)


@njit(cache=True, parallel=True)
def _step_blocks_parallel(blocks, consts, num_chunks):
    # Each chunk calls the serial kernel on a block range: inlining the lane loop into the
    # prange body lost vectorization, a call keeps it.
    num_blocks = blocks.shape[0] // (BLOCK_ROWS * BLOCK)
    for c in prange(num_chunks):
        first = (num_blocks * c) // num_chunks
        last = (num_blocks * (c + 1)) // num_chunks
        step_block_range(blocks[first * BLOCK_ROWS * BLOCK:last * BLOCK_ROWS * BLOCK], consts)


# Below this many blocks a parallel region costs more than it saves.
PARALLEL_MIN_BLOCKS = 64


def step_blocks(blocks: np.ndarray, consts: np.ndarray, threads: int = 1) -> None:
    """In-place RK4 step of every block of a flat block array (see ``step_block_range``)."""
    num_blocks = blocks.shape[0] // (BLOCK_ROWS * BLOCK)
    if threads > 1 and num_blocks >= PARALLEL_MIN_BLOCKS:
        _step_blocks_parallel(blocks, consts, threads)
    else:
        step_block_range(blocks, consts)


# ---------------------------------------------------------------------------------------------
# Conversions between (N, k) rows and the block layout.

def num_blocks_for(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


def lanes(blocks: np.ndarray, first_row: int, num_rows: int) -> np.ndarray:
    """A (num_blocks, BLOCK, num_rows) view of rows [first_row, first_row + num_rows) of every
    block: ``lanes(...)[b, l]`` belongs to environment ``b * BLOCK + l``. Writes go through."""
    nb = blocks.shape[0] // (BLOCK_ROWS * BLOCK)
    return blocks.reshape(nb, BLOCK_ROWS, BLOCK)[:, first_row:first_row + num_rows, :].transpose(0, 2, 1)


def write_rows(blocks: np.ndarray, first_row: int, rows: np.ndarray, fill=None) -> None:
    """Write (N, k) per-environment rows into the blocks; padding lanes get ``fill`` (k,)."""
    n, k = rows.shape
    view = lanes(blocks, first_row, k)
    full, rest = divmod(n, BLOCK)
    view[:full] = rows[:full * BLOCK].reshape(full, BLOCK, k)
    if rest:
        view[full, :rest] = rows[full * BLOCK:]
        view[full, rest:] = 0 if fill is None else fill


def read_rows(blocks: np.ndarray, n: int, first_row: int, k: int) -> np.ndarray:
    """Copy rows [first_row, first_row + k) of the first ``n`` environments out as (n, k)."""
    view = lanes(blocks, first_row, k)
    return view.reshape(view.shape[0] * BLOCK, k)[:n].copy()


def make_blocks(states: np.ndarray, actions: np.ndarray, env_params: np.ndarray,
                pad_state: np.ndarray, pad_params: np.ndarray) -> np.ndarray:
    """Pack (N, 17) states, (N, 4) actions and (N, NUM_ENV_PARAMS) parameters into blocks."""
    n = states.shape[0]
    blocks = np.zeros(num_blocks_for(n) * BLOCK_ROWS * BLOCK, dtype=states.dtype)
    write_rows(blocks, ROW_STATE, states, pad_state)
    write_rows(blocks, ROW_ACTION, actions, np.zeros(ACTION_DIM))
    write_rows(blocks, ROW_PARAMS, env_params, pad_params)
    return blocks


HOVER_PAD_STATE = np.array([0, 0, 0, 1, 0, 0, 0] + [0] * 10, dtype=np.float64)


def check_states(states: np.ndarray, name: str = "states") -> np.ndarray:
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[1] != STATE_DIM:
        raise ValueError(f"{name} must have shape (N, {STATE_DIM}) "
                         f"[p(3) q(4, w x y z) v(3) w(3) rotor speeds(4)], got {states.shape}")
    if states.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {states.dtype}")
    if not np.all(np.isfinite(states)):
        bad = np.argwhere(~np.isfinite(states))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at row {bad[0]}, column {bad[1]})")
    return states


def check_actions(actions: np.ndarray, n: int, dtype) -> np.ndarray:
    """Validate (N, 4) normalized actions; NaN/Inf is an error, out-of-range is clipped to
    [-1, 1] (documented clamp: the set point of a rotor cannot leave its speed range)."""
    actions = np.asarray(actions)
    if actions.shape != (n, ACTION_DIM):
        raise ValueError(f"actions must have shape ({n}, {ACTION_DIM}), got {actions.shape}")
    if not np.issubdtype(actions.dtype, np.floating):
        raise TypeError(f"actions must be floating point, got {actions.dtype}")
    if not np.all(np.isfinite(actions)):
        bad = np.argwhere(~np.isfinite(actions))[0]
        raise ValueError(f"actions contain NaN or Inf (first at row {bad[0]}, rotor {bad[1]})")
    return np.clip(actions, -1.0, 1.0).astype(dtype, copy=False)


def step(states: np.ndarray, actions: np.ndarray, params: VehicleParams, dt: float = 0.01, *,
         disturbance_force: np.ndarray | None = None,
         disturbance_torque: np.ndarray | None = None) -> np.ndarray:
    """One RK4 step of ``dt`` seconds for a batch; returns new ``(N, 17)`` states.

    ``states``: (N, 17) float32 or float64, ``[p | q (w x y z) | v | w (body) | rotor speeds]``.
    ``actions``: (N, 4) normalized in [-1, 1] (clipped; NaN raises).
    ``disturbance_force``: optional (N, 3) world-frame force in N; ``disturbance_torque``:
    optional (N, 3) body-frame torque in N m. The computation runs in the dtype of ``states``.
    """
    states = check_states(states)
    n = states.shape[0]
    dtype = states.dtype
    actions = check_actions(actions, n, dtype)
    per_env = np.broadcast_to(env_param_values(params), (n, NUM_ENV_PARAMS)).copy()
    for name, value, row, scale in (
            ("disturbance_force", disturbance_force, P_DIST_ACC, np.full(3, 1.0 / params.mass)),
            ("disturbance_torque", disturbance_torque, P_DIST_ANG_ACC,
             1.0 / params.inertia_diagonal())):
        if value is None:
            continue
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (n, 3):
            raise ValueError(f"{name} must have shape ({n}, 3), got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} contains NaN or Inf")
        per_env[:, row:row + 3] = value * scale
    blocks = make_blocks(states, actions, per_env.astype(dtype), HOVER_PAD_STATE.astype(dtype),
                         env_param_values(params).astype(dtype))
    step_blocks(blocks, make_consts(params, dt, dtype))
    return read_rows(blocks, n, ROW_STATE, STATE_DIM)


def hover_state(params: VehicleParams, position=(0.0, 0.0, 0.0), dtype=np.float32) -> np.ndarray:
    """A (17,) state at rest, level, with rotors at the hover speed."""
    s = np.zeros(STATE_DIM, dtype=np.float64)
    s[S_POSITION:S_POSITION + 3] = position
    s[S_QUATERNION] = 1.0
    s[S_ROTOR_SPEED:S_ROTOR_SPEED + 4] = params.hover_rotor_speed
    return s.astype(dtype)
