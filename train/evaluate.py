"""Sim-only evaluation suites, run in the batched simulator with the paper's observation noise
and disturbances: ``hover`` and ``figure8``. Every suite returns a flat dict of figures plus
``passed`` (against the suite's default thresholds, which ``nanofly eval`` turns into its exit
code). Training uses them to select its snapshot and for its final evaluation.

A policy is anything callable as ``policy(obs (N, obs_dim) float32) -> actions (N, 4)``:
``TorchPolicy`` here runs a policy file's actor with torch; the other backends (the exported
ONNX and C models, PIL on the firmware, the Crazyflie app) come from later stages, so the
choice among them lives above every stage, in ``nanofly.evaluate``. A policy that needs the
simulator itself (the targets, episode starts) has a ``bind_env(env)`` method, which the suites
call with their ``VecEnv`` before the first step.

Also here: what a policy file says about the world it was trained in (``policy_vehicle``,
``policy_mdp``), which the later stages read to simulate a policy as it was trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nanofly.policy.observation import DEFAULT_HISTORY_LENGTH, state_slice
from nanofly.sim.env import TARGET_REWARD_WEIGHTS, MDPConfig, VecEnv
from nanofly.sim.targets import figure_eight

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HoverThresholds:
    min_success_rate: float = 0.95  # fraction of episodes


@dataclass(frozen=True)
class Figure8Thresholds:
    max_position_rmse_m: float = 0.10
    max_position_error_m: float = 0.30


SUITES = ("hover", "figure8")
SUCCESS_POSITION_M = 0.1  # hover success: position error below this ...
SUCCESS_TILT_RAD = math.radians(10.0)  # ... and tilt below this, throughout the last 100 steps
SETTLE_RADIUS_M = 0.2  # the reference's "settling fraction" radius


# -- policies -----------------------------------------------------------------------------------
class TorchPolicy:
    """The policy file's actor evaluated with torch (the training-time float32 reference)."""

    def __init__(self, policy_path):
        import torch

        from nanofly.policy.actor import load_policy

        self.actor, self.payload = load_policy(policy_path)
        self._torch = torch
        torch.set_num_threads(1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.actor(self._torch.from_numpy(np.ascontiguousarray(obs))).numpy()

    def info(self) -> dict[str, Any]:
        return {"backend": "torch"}

    def close(self) -> None:
        pass


def _bind_env(policy, env: VecEnv) -> None:
    """Hand ``env`` to a policy that flies the simulator's environments itself (cf-sitl)."""
    bind = getattr(policy, "bind_env", None)
    if bind is not None:
        bind(env)


def evaluation_mdp(history_length: int) -> MDPConfig:
    """The MDP every policy is evaluated on: the paper's (noise, disturbance, rotor delay) with
    the policy's observation layout (its action-history length). Policies trained with an
    ablation are evaluated on the full system, which is what the ablation asks."""
    return MDPConfig(history_length=int(history_length))


def policy_vehicle(payload: dict[str, Any]):
    """The vehicle a policy file flew in training: its stored parameters (``vehicle.params``),
    or, in a file without them, the built-in preset it names (never a file path: a policy from
    someone else must not make nanofly read files). Raises ``PolicyFileError`` naming what is
    wrong with the stored vehicle."""
    from nanofly.sim.presets import PRESETS, PresetError, VehicleParams

    from nanofly.policy.file import PolicyFileError

    vehicle = payload.get("vehicle")
    if not isinstance(vehicle, dict):
        raise PolicyFileError(f"the policy file's vehicle is {type(vehicle).__name__}, not a "
                              f"table of parameters; re-save the policy with nanofly train")
    params = vehicle.get("params")
    if params:
        if not isinstance(params, dict):
            raise PolicyFileError(f"the policy file's vehicle.params is "
                                  f"{type(params).__name__}, not a table; re-save the policy")
        try:
            return VehicleParams.from_dict(params, source="the policy file's vehicle.params")
        except (PresetError, TypeError, ValueError) as exc:
            raise PolicyFileError(f"{exc}; the policy's stored vehicle is invalid: train it "
                                  f"again with a valid vehicle") from None
    preset = vehicle.get("preset")
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise PolicyFileError(f"the policy file stores no vehicle parameters and its vehicle preset "
                          f"{preset!r} is not a built-in one ({', '.join(sorted(PRESETS))}); "
                          f"re-save the policy with its vehicle's parameters")


def policy_mdp(payload: dict[str, Any]):
    """The vehicle (``policy_vehicle``, a ``VehicleParams``) and the evaluation MDP
    (``evaluation_mdp``) for a policy file, checked against the actor's input size. Raises
    ``PolicyFileError`` naming what is wrong."""
    from nanofly.policy.file import PolicyFileError

    vehicle = policy_vehicle(payload)
    mdp = payload.get("mdp") or {}
    observation = payload.get("observation") or {}
    if not isinstance(mdp, dict) or not isinstance(observation, dict):
        raise PolicyFileError("the policy file's mdp / observation entries are not tables; "
                              "re-save the policy with nanofly train")
    history = mdp.get("history_length", observation.get("history_length", DEFAULT_HISTORY_LENGTH))
    if (isinstance(history, bool) or not isinstance(history, (int, float))
            or not math.isfinite(history) or history != int(history) or history < 0):
        raise PolicyFileError(f"the policy file's history_length is {history!r}, not a "
                              f"whole number >= 0; re-save the policy with nanofly train")
    config = evaluation_mdp(int(history))
    actor = payload.get("actor") or {}
    sizes = actor.get("layer_sizes") if isinstance(actor, dict) else None
    if isinstance(sizes, (list, tuple)) and sizes and sizes[0] != config.observation_dim:
        raise PolicyFileError(f"the policy's actor takes {sizes[0]} inputs but its "
                              f"history_length {int(history)} gives {config.observation_dim}-value "
                              f"observations; the file is inconsistent: re-save it")
    return vehicle, config


# -- hover --------------------------------------------------------------------------------------
# Privileged-observation values the hover suite keeps per step: position error (0:3), R22 (the
# cosine of the tilt; 3), linear velocity (4:7) and angular velocity (7:10) in that order.
_RECORDED_COLUMNS = np.r_[state_slice("position_error"), state_slice("rotation_matrix").stop - 1,
                          state_slice("linear_velocity_error"), state_slice("angular_velocity")]


def _norm3(v: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis (length 3), summed in the order np.linalg.norm sums
    (same float32 results) but ~10x faster than its reduction over a short axis."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.sqrt(x * x + y * y + z * z)


def _recorder(steps: int, record: int):
    """Arrays for ``record`` recorded episodes over ``steps`` steps: positions (T + 1, K, 3),
    and (T + 1, K) flags for the samples that end an episode (the simulator reset after them)
    and for those that end it by termination (train/plots.py splits and marks with them)."""
    return (np.zeros((steps + 1, record, 3), np.float32), np.zeros((steps + 1, record), bool),
            np.zeros((steps + 1, record), bool))


def hover_suite(policy: PolicyFn, *, preset="crazyflie_paper", mdp: MDPConfig | None = None,
                episodes: int = 1000, seed: int = 12345, record: int = 0,
                thresholds: HoverThresholds = HoverThresholds(),
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """``episodes`` episodes of 500 steps from the paper's initial-state distribution, with
    observation noise and disturbances. An episode succeeds when it never terminates and,
    throughout its last 100 steps, the position error stays below 0.1 m and the tilt below 10
    degrees. ``record`` > 0 keeps the first ``record`` trajectories (positions, time, where
    episodes ended) for plots. ``progress(steps done, steps)`` is called after every step."""
    mdp = mdp or MDPConfig()
    steps = mdp.episode_steps
    # rewards under the curriculum's target weights: the reference's evaluation metric
    env = VecEnv(episodes, preset, seed=seed, config=mdp, reward_weights=TARGET_REWARD_WEIGHTS)
    obs, info = env.reset()
    _bind_env(policy, env)
    n = episodes
    alive = np.ones(n, dtype=bool)
    survived_steps = np.zeros(n, dtype=np.int64)
    returns = np.zeros(n)
    # Per step and episode: the _RECORDED_COLUMNS of the privileged observation, and whether
    # the episode is still alive. Collected with one copy per step; the norms and angles are
    # taken once at the end (small per-step NumPy calls cost as much as the policy's forward
    # pass did).
    recorded = np.empty((steps, n, len(_RECORDED_COLUMNS)), np.float32)
    alive_at = np.empty((steps, n), dtype=bool)
    smooth_sum = np.zeros(n)
    prev_action = None
    positions, episode_end, crashed = _recorder(steps, min(record, n))
    positions[0] = info["privileged_obs"][:record, 0:3]
    for t in range(steps):
        action = np.asarray(policy(obs), dtype=np.float32)
        if prev_action is not None:
            smooth_sum += np.abs(action - prev_action).mean(axis=1) * alive
        prev_action = action.copy()
        obs, reward, terminated, _, info = env.step(action)
        returns += reward * alive
        row = recorded[t]
        np.take(info["privileged_obs"], _RECORDED_COLUMNS, axis=1, out=row)
        done = info["_final_obs"]
        if done.any():  # those rows already hold the next episode's first observation
            row[done] = info["final_privileged_obs"][done][:, _RECORDED_COLUMNS]
        if record:
            positions[t + 1] = row[:record, 0:3]
            episode_end[t + 1] = done[:record]
            crashed[t + 1] = terminated[:record]
        alive &= ~terminated
        survived_steps += alive
        alive_at[t] = alive
        if progress is not None:
            progress(t + 1, steps)
    pos_err = _norm3(recorded[:, :, 0:3])
    tilt = np.arccos(np.clip(recorded[:, :, 3], -1.0, 1.0))
    lin_vel = _norm3(recorded[:, :, 4:7])
    ang_vel = _norm3(recorded[:, :, 7:10])
    del recorded
    # after a termination the row belongs to the next episode: freeze its figures
    pos_err[~alive_at] = np.inf
    tilt[~alive_at] = np.inf
    last = slice(steps - 100, steps)
    success = alive & (pos_err[last] < SUCCESS_POSITION_M).all(axis=0) & (
        tilt[last] < SUCCESS_TILT_RAD).all(axis=0)
    result: dict[str, Any] = {
        "suite": "hover", "episodes": n, "steps": steps, "seed": seed,
        "success_rate": float(success.mean()),
        "termination_rate": float((~alive).mean()),
        "mean_steps_before_termination": float(survived_steps.mean()),
        "mean_return_target_weights": float(returns.mean()),
        "settling_fraction_200mm": float((alive & (pos_err[200:] < SETTLE_RADIUS_M).all(axis=0)).mean()),
        "final_position_rmse_m": float(np.sqrt(np.mean(pos_err[-1, alive] ** 2))) if alive.any() else None,
        "action_smoothness": float(smooth_sum.sum() / max(1, alive.sum() * (steps - 1)) if alive.any() else 0.0),
    }
    for after in (100, 200):
        for name, arr in (("position_m", pos_err), ("angle_rad", tilt), ("linear_velocity_mps", lin_vel),
                          ("angular_velocity_radps", ang_vel)):
            worst = arr[after:, alive].max(axis=0) if alive.any() else np.array([np.nan])
            result[f"max_{name}_after_{after}_mean"] = float(np.mean(worst))
            result[f"max_{name}_after_{after}_std"] = float(np.std(worst))
    result["thresholds"] = {"min_success_rate": thresholds.min_success_rate}
    result["passed"] = bool(result["success_rate"] >= thresholds.min_success_rate)
    if record:
        result["_trajectories"] = {"positions": positions, "episode_end": episode_end,
                                   "terminated": crashed, "dt": mdp.dt}
    return result


# -- figure-eight -------------------------------------------------------------------------------
def figure8_suite(policy: PolicyFn, *, preset="crazyflie_paper", mdp: MDPConfig | None = None,
                  episodes: int = 16, laps: int = 3, scale: float = 0.5, period: float = 5.5,
                  seed: int = 54321, record: int = 0,
                  thresholds: Figure8Thresholds = Figure8Thresholds(),
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Track the figure-eight reference for ``laps`` laps, starting on the path at rest-free
    path velocity, with the paper's noise and disturbances. Reports position RMSE and max error
    over all episodes and steps (an episode that leaves the 0.6 m box counts as failed).
    ``record``, ``progress``: as in ``hover_suite``."""
    base = mdp or MDPConfig()
    steps = int(round(laps * period / base.dt))
    cfg = MDPConfig(**{**base.to_dict(), "episode_steps": steps + 1})
    env = VecEnv(episodes, preset, seed=seed, config=cfg)
    env.reset()
    from nanofly.sim import dynamics as dyn

    p0, v0 = figure_eight(0.0, scale, period)
    states = np.tile(dyn.hover_state(env.params, dtype=np.float64), (episodes, 1))
    states[:, 0:3] = p0
    states[:, 7:10] = v0
    env.target_position[:] = p0
    env.target_velocity[:] = v0
    obs, info = env.set_states(states, action_history=env.hover_action)
    _bind_env(policy, env)
    errors = np.zeros((steps, episodes))
    alive = np.ones(episodes, dtype=bool)
    track, episode_end, crashed = _recorder(steps, min(record, episodes))
    refs = np.zeros((steps + 1, 3), np.float32)
    track[0] = p0
    refs[0] = p0
    for t in range(steps):
        action = np.asarray(policy(obs), dtype=np.float32)
        p_ref, v_ref = figure_eight((t + 1) * cfg.dt, scale, period)
        # the new target applies to the observation after this step
        env.target_position[:] = p_ref
        env.target_velocity[:] = v_ref
        obs, _, terminated, _, info = env.step(action)
        priv = np.where(info["_final_obs"][:, None], info["final_privileged_obs"], info["privileged_obs"])
        alive &= ~terminated
        errors[t] = np.where(alive, np.linalg.norm(priv[:, 0:3], axis=1), np.nan)
        if record:
            track[t + 1] = priv[:record, 0:3] + p_ref
            refs[t + 1] = p_ref
            episode_end[t + 1] = info["_final_obs"][:record]
            crashed[t + 1] = terminated[:record]
        if progress is not None:
            progress(t + 1, steps)
    valid = errors[:, alive]
    result: dict[str, Any] = {
        "suite": "figure8", "episodes": episodes, "laps": laps, "scale_m": scale, "period_s": period,
        "seed": seed, "completion_rate": float(alive.mean()),
        "position_rmse_m": float(np.sqrt(np.mean(valid ** 2))) if valid.size else None,
        "max_position_error_m": float(np.max(valid)) if valid.size else None,
    }
    result["thresholds"] = {"max_position_rmse_m": thresholds.max_position_rmse_m,
                            "max_position_error_m": thresholds.max_position_error_m}
    result["passed"] = bool(alive.all() and result["position_rmse_m"] is not None
                            and result["position_rmse_m"] <= thresholds.max_position_rmse_m
                            and result["max_position_error_m"] <= thresholds.max_position_error_m)
    if record:
        result["_trajectories"] = {"positions": track, "reference": refs, "dt": cfg.dt,
                                   "episode_end": episode_end, "terminated": crashed}
    return result


def run_suite(name: str, policy: PolicyFn, **kwargs) -> dict[str, Any]:
    if name == "hover":
        return hover_suite(policy, **kwargs)
    if name == "figure8":
        return figure8_suite(policy, **kwargs)
    raise ValueError(f"unknown suite {name!r}; choose from {SUITES}")


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serializable part of a suite result (without recorded trajectories)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}
