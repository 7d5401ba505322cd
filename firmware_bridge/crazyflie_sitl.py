"""Software in the loop for the Crazyflie app: ``nanofly eval POLICY --backend cf-sitl``.

The app's controller, the very C files that go into cf2.bin (``crazyflie/src/nanofly_cf.c`` and
the policy runtime ``export/c``), is compiled for this host with gcc against
the firmware's real headers (``$CRAZYFLIE_BASE``, located by ``crazyflie_tree``), together with
the firmware's own power distribution (``src/modules/src/power_distribution_quadrotor.c``) and
a small shim (``crazyflie/sitl/nanofly_sitl.c``). The shim takes flat arrays in the firmware's
units and fills the firmware's ``setpoint_t`` / ``state_t`` / ``sensorData_t`` / ``control_t``
itself, so no firmware struct is mirrored in Python. The library is loaded with ctypes and
cached in the nanofly cache, keyed by the sources, the firmware files it reads, the firmware's
configuration header, the compiler and the flags.

What is built and how (``build_library``):

* flags ``-std=gnu11`` (``control_t`` has anonymous unions), ``-O2 -ffp-contract=off`` and
  ``-mfma`` where the CPU has it (the c-int8 backend's flags, so the policy gives the same bits);
  nanofly's files with ``-Wall -Wextra -Werror``;
* ``-DUNIT_TEST_MODE``, as the firmware's own host builds (its Python bindings, its unit tests)
  compile ``power_distribution_quadrotor.c``: the param/log macros then define no linker
  sections and DEBUG_PRINT is printf;
* ``autoconf.h`` from the firmware's own Kconfig run for its default configuration
  (``crazyflie_tree.default_autoconf``: ``make alldefconfig``, as an out-of-tree app build
  starts, with ``KBUILD_OUTPUT`` in the cache): Crazyflie 2.x, battery compensation on, 2.1+
  propellers, no idle thrust. ``THRUST_MIN`` / ``THRUST_MAX`` come from the firmware's
  ``platform_defaults_cf2.h`` under that configuration.

How a suite drives it (``CrazyflieSitl``): the evaluation suites step ``VecEnv`` at the policy's
rate (100 Hz) and call ``policy(obs)``; they hand the environment to the backend first
(``bind_env``), which keeps one ``nf_cf_controller`` per environment. At each environment step:

1. **State estimate**, in the firmware's units, from the observation the other backends see
   (with the MDP's observation noise): ``state->position`` = observed position error + the
   environment's target position (m), ``state->velocity`` = observed velocity error + target
   velocity (m/s, world), ``state->attitudeQuaternion`` (x, y, z, w; body -> world) = the
   rotation nearest to the observed (noisy) rotation matrix (``quaternion_from_rotation``), and
   ``sensors->gyro`` = the observed angular velocity in deg/s (body). The setpoint is an
   absolute position setpoint (``modeAbs`` on x, y, z) at the target position and velocity,
   with a new timestamp, as a cflib commander sends one. The estimate is held for the 10 ms of
   the step (the simulator has no 1 kHz state).
2. **Controller**: ``nf_cf_step`` at 10 consecutive 1 kHz stabilizer steps (the firmware's
   rate; ``1000 / policy_rate_hz`` steps). The policy fires on the first and its forces are held
   for the rest. An environment starting a new episode (``env.episode_step == 0``) gets one
   disabled step first, so the controller starts a new episode (action history refilled) as
   the app does when re-enabled; the refill value is the suite's own episode-start history
   (0 for the hover suite's resets, the hover action for the figure-eight start), so both
   backends start alike.
3. **Motors**: each step's ``control_t`` goes through the firmware's ``powerDistribution``
   (force mode: clipped to [0, 1], times 65535) and ``powerDistributionCap``, giving the 16-bit
   ratio of motor M1..M4 (the simulator's rotors 0..3: front-right, back-right, back-left,
   front-left). Battery compensation (``motorsCompensateBatteryVoltage`` in motors.c, which
   needs the hardware) is modelled as its intent: the motor makes ``thrust = ratio / 65535 *
   THRUST_MAX`` newtons, and a motor asked for less than ``THRUST_MIN`` is off. This assumes the
   battery can deliver the voltage (otherwise the firmware's cap lowers all four motors; with
   ideal compensation the cap never acts) and that the firmware's compensation curve and the
   vehicle preset's thrust curve describe the same motor. The thrust becomes the rotor-speed
   set point through the preset's thrust curve inverted (clipped to the speed range; a motor
   that is off gets the minimum speed), and the simulator's action is ``(speed - min) / (max -
   min) * 2 - 1``, the mean over the 10 stabilizer steps (the simulator holds one set point per
   10 ms step; the rotor lag is linear in the set point).

What it catches: units (deg/s, m, m/s), frames and quaternion order, the rotor order, the
policy rate and history handling, the thrust mapping including the firmware's ``THRUST_MAX``
(0.12 N per motor on a 2.1+ Crazyflie, less than the ``crazyflie_paper`` preset's 0.149 N at
full speed: set points above it are clipped, and enter the action history as THRUST_MAX's, see
nanofly_cf.h) and ``THRUST_MIN``. ``make_backend(..., thrust_max_n=...)`` flies a firmware built
with another THRUST_MAX (the controller's normalized force and the motor model both use it),
e.g. the vehicle's own maximum thrust, to separate the controller from that limit. What it does
not model: the estimator, sensor noise beyond the MDP's, timing jitter, the battery, real motors.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from nanofly.policy.observation import ACTION_DIM, STATE_DIM

from nanofly.export import backends
from nanofly.export.backends import BackendError, CBackend
from nanofly.export.runtime import (C_DIR, RuntimeBuildError, _host_fma_flags,
                                    build_cached_library, find_compiler, runtime_headers,
                                    runtime_sources)

from . import crazyflie_tree as tree
from .crazyflie_vehicle import controller_vehicle

SPEC = "cf-sitl"
APP_DIR = Path(__file__).resolve().parent / "crazyflie"
CONTROLLER_C = APP_DIR / "src" / "nanofly_cf.c"
CONTROLLER_H = APP_DIR / "src" / "nanofly_cf.h"
SHIM_C = APP_DIR / "sitl" / "nanofly_sitl.c"
SHIM_H = APP_DIR / "sitl" / "nanofly_sitl_inputs.h"
POWER_DISTRIBUTION_C = "src/modules/src/power_distribution_quadrotor.c"
# Firmware include folders: the types' (crazyflie_tree.TYPE_INCLUDE_DIRS) plus what the power
# distribution reads (platform_defaults.h, config.h's driver headers).
EXTRA_INCLUDE_DIRS = ("src/drivers/interface", "src/platform/interface")
NANOFLY_FLAGS = ("-Wall", "-Wextra", "-Werror")

STABILIZER_HZ = 1000
STATE_VALUES = 13  # position 3, velocity 3, quaternion x y z w, gyro 3 (the shim's layout)
SETPOINT_VALUES = 6  # position 3, velocity 3
VEHICLE_VALUES = 8

# nf_cf_status (nanofly_cf.h)
DISABLED, NO_MODEL, NO_SETPOINT, FLYING, NONFINITE, NOT_POSITION = range(6)
STATUS_NAMES = ("DISABLED", "NO_MODEL", "NO_SETPOINT", "FLYING", "NONFINITE", "NOT_POSITION")
# nf_cf_load_model errors beyond the runtime's (nanofly_cf.h)
ERR_LAYOUT = -20
ERR_CONFIG = -21
MODE_ABS, MODE_VELOCITY = 1, 2  # stab_mode_t

# A host build of these files fails in practice when the tree is not a supported release.
_HINT = ("(is CRAZYFLIE_BASE a crazyflie-firmware release 2025.12 or later with its "
         "submodules?)")


def build_library(base: str | os.PathLike | None = None) -> Path:
    """The SITL shared library for the firmware tree ``base`` (default: ``locate_tree()``),
    built once and cached (see the module docstring for what goes in)."""
    base = tree.check_tree(base) if base is not None else tree.locate_tree()
    autoconf_dir = tree.default_autoconf(base)
    cc = find_compiler()
    includes = [autoconf_dir, *(base / d for d in tree.TYPE_INCLUDE_DIRS),
                *(base / d for d in EXTRA_INCLUDE_DIRS), C_DIR, CONTROLLER_H.parent]
    common = ["-std=gnu11", "-O2", "-ffp-contract=off", *_host_fma_flags(),
              "-DUNIT_TEST_MODE", *(f"-I{d}" for d in includes)]
    ours = [*runtime_sources(), CONTROLLER_C, SHIM_C]
    units = [(src, [*common, *NANOFLY_FLAGS]) for src in ours]
    units.append((base / POWER_DISTRIBUTION_C, common))  # the firmware's own file, its warnings
    try:
        return build_cached_library(
            "libnanofly_cf_sitl", units, depends=[*runtime_headers(), CONTROLLER_H, SHIM_H,
                                                  autoconf_dir / "autoconf.h"],
            key=(str(base), tree.tree_key(base)), what=f"the Crazyflie SITL against {base}",
            cc=cc, timeout_s=120)
    except RuntimeBuildError as exc:
        raise RuntimeBuildError(f"{exc}\n{_HINT}") from None


class SitlLibrary:
    """ctypes bindings of the SITL library (one per path)."""

    _cache: dict[Path, "SitlLibrary"] = {}

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        vp, u32, i32, f32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_float
        lib.nf_sitl_controller_bytes.argtypes = []
        lib.nf_sitl_controller_bytes.restype = u32
        lib.nf_sitl_thrust_limits.argtypes = [vp]
        lib.nf_sitl_thrust_limits.restype = None
        lib.nf_sitl_init.argtypes = [vp, u32, vp, f32]
        lib.nf_sitl_init.restype = i32
        lib.nf_sitl_load.argtypes = [vp, u32, vp, u32]
        lib.nf_sitl_load.restype = i32
        lib.nf_sitl_state_observation.argtypes = [u32, vp, vp, f32, vp]
        lib.nf_sitl_state_observation.restype = None
        lib.nf_sitl_power_distribution.argtypes = [i32, vp, vp]
        lib.nf_sitl_power_distribution.restype = None
        lib.nf_sitl_run.argtypes = [vp, u32, vp, vp, vp, vp, vp, vp, vp, u32, u32, vp, vp, vp, vp]
        lib.nf_sitl_run.restype = None
        lib.nf_sitl_last_observation.argtypes = [vp, u32, vp, u32]
        lib.nf_sitl_last_observation.restype = u32
        lib.nf_sitl_last_action.argtypes = [vp, u32, vp, vp]
        lib.nf_sitl_last_action.restype = None
        lib.nf_sitl_counters.argtypes = [vp, u32, vp]
        lib.nf_sitl_counters.restype = None
        lib.nanofly_strerror.argtypes = [i32]
        lib.nanofly_strerror.restype = ctypes.c_char_p
        self.lib = lib
        self.path = path
        limits = np.zeros(2, np.float32)
        lib.nf_sitl_thrust_limits(limits.ctypes.data)
        self.thrust_min_n, self.thrust_max_n = float(limits[0]), float(limits[1])
        self.controller_bytes = int(lib.nf_sitl_controller_bytes())

    @classmethod
    def get(cls, base=None) -> "SitlLibrary":
        path = build_library(base)
        if path not in cls._cache:
            cls._cache[path] = SitlLibrary(path)
        return cls._cache[path]

    def error_text(self, code: int) -> str:
        if code == ERR_LAYOUT:
            return (f"observation/action layout is not the controller's ({STATE_DIM} + "
                    f"{ACTION_DIM} * H inputs, {ACTION_DIM} outputs)")
        if code == ERR_CONFIG:
            return "vehicle configuration invalid"
        return self.lib.nanofly_strerror(code).decode()

    def power_distribution(self, mode: int, values) -> np.ndarray:
        """The firmware's motor ratios M1..M4 (uint16) for one control_t in ``mode`` (0 legacy:
        roll, pitch, yaw, thrust; 1 force/torque: thrustSi N, torqueX/Y/Z N m; 2 force: four
        normalized forces)."""
        v = np.ascontiguousarray(values, np.float32).reshape(4)
        out = np.zeros(4, np.uint16)
        self.lib.nf_sitl_power_distribution(int(mode), v.ctypes.data, out.ctypes.data)
        return out

    def state_observation(self, state: np.ndarray, setpoint: np.ndarray,
                          position_error_limit_m: float = 0.0) -> np.ndarray:
        """``nf_cf_state_observation`` for (n, 13) states and (n, 6) setpoints (firmware
        units, the shim's layout): (n, STATE_DIM)."""
        state = np.ascontiguousarray(state, np.float32)
        setpoint = np.ascontiguousarray(setpoint, np.float32)
        n = state.shape[0]
        if state.shape != (n, STATE_VALUES) or setpoint.shape != (n, SETPOINT_VALUES):
            raise ValueError(f"state must be (n, {STATE_VALUES}) and setpoint (n, "
                             f"{SETPOINT_VALUES}); got {state.shape}, {setpoint.shape}")
        out = np.zeros((n, 18), np.float32)
        self.lib.nf_sitl_state_observation(n, state.ctypes.data, setpoint.ctypes.data,
                                           position_error_limit_m, out.ctypes.data)
        return out


class ControllerBank:
    """``n`` app controllers (``nf_cf_controller``, in memory this object owns) over one blob."""

    def __init__(self, lib: SitlLibrary, n: int, vehicle: dict[str, Any], blob: bytes,
                 motor_max_thrust_n: float | None = None):
        self.lib = lib
        self.n = int(n)
        self._memory = np.zeros(self.n * lib.controller_bytes // 8 + 1, np.uint64)
        # the blob stays here, 4-byte aligned, for as long as the controllers use it
        self._blob = np.zeros(len(blob) // 4 + 1, np.uint32)
        ctypes.memmove(self._blob.ctypes.data, bytes(blob), len(blob))
        self.blob_bytes = len(blob)
        v = np.array([vehicle["rotor_speed_min"], vehicle["rotor_speed_max"],
                      *vehicle["thrust_coefficients"], vehicle["history_reset_action"],
                      vehicle["position_error_limit_m"], vehicle["policy_rate_hz"]], np.float32)
        assert v.shape == (VEHICLE_VALUES,)
        self.vehicle = dict(vehicle)
        thrust_max = lib.thrust_max_n if motor_max_thrust_n is None else motor_max_thrust_n
        rc = lib.lib.nf_sitl_init(self.ptr, self.n, v.ctypes.data, thrust_max)
        self.init_status = int(rc)
        rc_load = lib.lib.nf_sitl_load(self.ptr, self.n, self._blob.ctypes.data, len(blob)) \
            if rc == 0 else rc
        self.load_status = int(rc_load)
        self.steps_per_call = STABILIZER_HZ // int(vehicle["policy_rate_hz"])

    @property
    def ptr(self) -> int:
        return self._memory.ctypes.data

    def run(self, state: np.ndarray, setpoint: np.ndarray, timestamp, first_step: int,
            steps: int, *, enabled=None, restart=None, history_reset=None, xyz_mode=None
            ) -> dict[str, np.ndarray]:
        """``steps`` stabilizer steps from ``first_step`` (see ``nf_sitl_run`` in the shim);
        returns per controller and step: status, touched, forces (n, steps, 4), ratios
        (n, steps, 4) uint16."""
        n = self.n
        state = np.ascontiguousarray(state, np.float32).reshape(n, STATE_VALUES)
        setpoint = np.ascontiguousarray(setpoint, np.float32).reshape(n, SETPOINT_VALUES)
        ts = np.ascontiguousarray(np.broadcast_to(np.asarray(timestamp, np.uint32), (n,)))

        def opt(a, dtype):
            if a is None:
                return None, None
            arr = np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype), (n,)))
            return arr, arr.ctypes.data

        en, en_p = opt(enabled, np.uint8)
        rs, rs_p = opt(restart, np.uint8)
        hr, hr_p = opt(history_reset if history_reset is not None else
                       self.vehicle["history_reset_action"], np.float32)
        xm, xm_p = opt(xyz_mode, np.uint8)
        out = {"status": np.zeros((n, steps), np.int8), "touched": np.zeros((n, steps), np.uint8),
               "forces": np.zeros((n, steps, 4), np.float32),
               "ratios": np.zeros((n, steps, 4), np.uint16)}
        self.lib.lib.nf_sitl_run(self.ptr, n, en_p, rs_p, hr_p, xm_p, state.ctypes.data,
                                 setpoint.ctypes.data, ts.ctypes.data, int(first_step) & 0xFFFFFFFF,
                                 int(steps), out["status"].ctypes.data,
                                 out["touched"].ctypes.data, out["forces"].ctypes.data,
                                 out["ratios"].ctypes.data)
        return out

    def last_observation(self, i: int) -> np.ndarray:
        buf = np.zeros(18 + 4 * 32, np.float32)
        length = self.lib.lib.nf_sitl_last_observation(self.ptr, int(i), buf.ctypes.data, len(buf))
        return buf[:length].copy()

    def last_actions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every controller's last policy output and normalized forces, (n, 4) each."""
        actions = np.zeros((self.n, 4), np.float32)
        forces = np.zeros((self.n, 4), np.float32)
        for i in range(self.n):
            self.lib.lib.nf_sitl_last_action(self.ptr, i, actions[i].ctypes.data,
                                             forces[i].ctypes.data)
        return actions, forces

    def counters(self, i: int) -> dict[str, int]:
        out = np.zeros(7, np.int64)
        self.lib.lib.nf_sitl_counters(self.ptr, int(i), out.ctypes.data)
        keys = ("model_status", "model_crc", "history_length", "inferences", "nonfinite_events",
                "status", "fault_latched")
        return dict(zip(keys, (int(v) for v in out)))


# -- the simulator side -----------------------------------------------------------------------
def quaternion_from_rotation(r: np.ndarray) -> np.ndarray:
    """(n, 9) row-major rotation matrices (body -> world; noisy ones allowed) -> (n, 4) unit
    quaternions (x, y, z, w) of the nearest rotation in the Frobenius norm (Bar-Itzhack: the
    eigenvector of the largest eigenvalue of a symmetric 4x4 matrix built from r), w >= 0."""
    m = np.asarray(r, np.float64).reshape(-1, 3, 3)
    r00, r01, r02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    r10, r11, r12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    r20, r21, r22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    k = np.empty((m.shape[0], 4, 4))
    k[:, 0, 0] = r00 - r11 - r22
    k[:, 1, 1] = r11 - r00 - r22
    k[:, 2, 2] = r22 - r00 - r11
    k[:, 3, 3] = r00 + r11 + r22
    k[:, 0, 1] = k[:, 1, 0] = r01 + r10
    k[:, 0, 2] = k[:, 2, 0] = r02 + r20
    k[:, 1, 2] = k[:, 2, 1] = r12 + r21
    k[:, 0, 3] = k[:, 3, 0] = r21 - r12
    k[:, 1, 3] = k[:, 3, 1] = r02 - r20
    k[:, 2, 3] = k[:, 3, 2] = r10 - r01
    _, vec = np.linalg.eigh(k)
    q = vec[:, :, 3]  # eigenvalues ascend: the last is the largest
    q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)
    return q


def firmware_inputs(obs: np.ndarray, target_position, target_velocity
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(n, 13) state estimates and (n, 6) setpoints in the firmware's units (the shim's layout)
    for observations ``obs`` made relative to the targets (m, m/s, world): position and velocity
    = observed error + target, the quaternion (x, y, z, w) of the rotation nearest to the
    observed matrix, the gyro in deg/s."""
    tp = np.asarray(target_position, np.float32)
    tv = np.asarray(target_velocity, np.float32)
    state = np.empty((obs.shape[0], STATE_VALUES), np.float32)
    state[:, 0:3] = obs[:, 0:3] + tp
    state[:, 3:6] = obs[:, 12:15] + tv
    state[:, 6:10] = quaternion_from_rotation(obs[:, 3:12])
    state[:, 10:13] = obs[:, 15:18] * np.float32(180.0 / np.pi)
    setpoint = np.concatenate([tp, tv], axis=1)
    return state, setpoint


def rotor_speed_for_thrust(params, thrust_n: np.ndarray) -> np.ndarray:
    """The preset's thrust curve ``c0 + c1 s + c2 s^2`` inverted (the larger root), clipped to
    the rotor speed range (preset unit)."""
    c0, c1, c2 = (float(c) for c in params.thrust_coefficients)
    t = np.asarray(thrust_n, np.float64)
    if c2 != 0.0:
        disc = np.maximum(c1 * c1 - 4.0 * c2 * (c0 - t), 0.0)
        s = (-c1 + np.sqrt(disc)) / (2.0 * c2)
    else:
        s = (t - c0) / c1
    return np.clip(s, params.rotor_speed_min, params.rotor_speed_max)


def actions_from_ratios(params, ratios: np.ndarray, thrust_min_n: float,
                        thrust_max_n: float) -> np.ndarray:
    """Motor ratios (..., steps, 4) uint16 -> the simulator's actions (..., 4): battery
    compensation as its intent (thrust = ratio / 65535 * THRUST_MAX, off below THRUST_MIN), the
    thrust curve inverted, normalized to [-1, 1], the mean over the steps."""
    thrust = ratios.astype(np.float64) / 65535.0 * thrust_max_n
    speed = rotor_speed_for_thrust(params, thrust)
    speed = np.where(thrust < thrust_min_n, params.rotor_speed_min, speed)
    span = params.rotor_speed_max - params.rotor_speed_min
    action = (speed - params.rotor_speed_min) / span * 2.0 - 1.0
    return action.mean(axis=-2).astype(np.float32)


class CrazyflieSitl(CBackend):
    """The policy as the Crazyflie app flies it (see the module docstring). A policy callable
    for the evaluation suites, which must call ``bind_env(env)`` before the first step."""

    def __init__(self, export_dir: Path, source: Path, fmt: str = "int8", base=None,
                 thrust_max_n: float | None = None):
        super().__init__(export_dir, source, fmt)
        self.spec = SPEC
        entry = self.manifest["blobs"][fmt]
        self._blob = self._verified(entry["file"], entry["sha256"])
        self.vehicle = controller_vehicle(self.manifest)
        from .crazyflie_vehicle import vehicle_params

        self.params = vehicle_params(self.manifest)
        self.base = firmware_tree(base)
        try:
            self.sitl = SitlLibrary.get(self.base)
        except tree.TreeError as exc:
            raise BackendError(f"--backend {SPEC}: {exc}") from None
        # THRUST_MAX of the firmware build flown: the tree's platform_defaults value, or another
        # (a firmware built with a different one) for both the controller and the motor model
        self.thrust_max_n = self.sitl.thrust_max_n if thrust_max_n is None else float(thrust_max_n)
        self.bank: ControllerBank | None = None
        self.env = None
        self._step = 1000  # stabilizer step counter (ms ticks since "boot")
        self.statuses: dict[str, int] = {}

    def bind_env(self, env) -> None:
        """Fly the environments of ``env`` (a VecEnv): one controller per environment."""
        if env.observation_dim != self.input_dim:
            raise BackendError(f"the environment's observations have {env.observation_dim} "
                               f"values, the policy takes {self.input_dim}")
        bank = ControllerBank(self.sitl, env.num_envs, self.vehicle, self._blob,
                              self.thrust_max_n)
        if bank.init_status or bank.load_status:
            code = bank.init_status or bank.load_status
            raise BackendError(f"the Crazyflie controller refused the model: "
                               f"{self.sitl.error_text(code)} ({code})")
        if round(env.config.dt * STABILIZER_HZ) != bank.steps_per_call:
            raise BackendError(f"the environment steps every {env.config.dt} s, the policy runs "
                               f"at {self.vehicle['policy_rate_hz']} Hz")
        self.bank = bank
        self.env = env

    def firmware_inputs(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``firmware_inputs`` for the bound environment's current targets."""
        return firmware_inputs(obs, self.env.target_position, self.env.target_velocity)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = self._check(obs)
        if self.bank is None or obs.shape[0] != self.bank.n:
            raise BackendError(f"--backend {SPEC} flies the simulator's environments: call "
                               f"bind_env(env) with the VecEnv first (the evaluation suites do)")
        state, setpoint = self.firmware_inputs(obs)
        restart = self.env.episode_step == 0
        history_reset = obs[:, 18] if obs.shape[1] > 18 else 0.0
        steps = self.bank.steps_per_call
        out = self.bank.run(state, setpoint, self._step, self._step, steps, restart=restart,
                            history_reset=history_reset)
        self._step += steps
        status = out["status"]
        if (status != FLYING).any():
            bad = int(status[status != FLYING][0])
            raise BackendError(f"the Crazyflie controller stopped flying: status "
                               f"{STATUS_NAMES[bad] if 0 <= bad < 6 else bad}")
        return actions_from_ratios(self.params, out["ratios"], self.sitl.thrust_min_n,
                                   self.thrust_max_n)

    def info(self) -> dict[str, Any]:
        return dict(super().info(), backend=SPEC, crazyflie_base=str(self.base),
                    sitl_library=str(self.sitl.path), thrust_min_n=self.sitl.thrust_min_n,
                    thrust_max_n=self.thrust_max_n, vehicle=self.vehicle,
                    runtime="nanofly Crazyflie controller + firmware power distribution "
                            "(host build)")

    def close(self) -> None:
        self.bank = None
        self.env = None
        super().close()


def make_backend(policy, *, fmt: str = "int8", seed: int = 0, base=None,
                 thrust_max_n: float | None = None, **export_options) -> CrazyflieSitl:
    """The ``cf-sitl`` backend for ``policy`` (a policy.pt, exported on the fly as the c-int8
    backend does, or an export directory); ``base``: the firmware tree (default
    ``crazyflie_tree.locate_tree()``); ``thrust_max_n``: fly a firmware built with this
    THRUST_MAX per motor (N) instead of the tree's."""
    base = firmware_tree(base)  # before the export: a missing tree is the quicker error
    source = Path(policy)
    export_dir = backends.export_dir_for(source, seed=seed, **export_options)
    return CrazyflieSitl(export_dir, source, fmt, base, thrust_max_n)


def firmware_tree(base=None) -> Path:
    """The firmware tree (``base`` checked, or ``crazyflie_tree.locate_tree()``), or a
    ``BackendError`` saying how to give one."""
    try:
        return tree.check_tree(base) if base is not None else tree.locate_tree()
    except (tree.TreeNotFound, tree.TreeError) as exc:
        raise BackendError(f"--backend {SPEC} needs the Crazyflie firmware's headers: {exc}") \
            from None
