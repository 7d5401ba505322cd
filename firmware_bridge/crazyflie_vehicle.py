"""The Crazyflie controller's vehicle configuration (``nf_cf_vehicle`` in
firmware_bridge/crazyflie/src/nanofly_cf.h) for a policy: one definition, used by the SITL
backend and by whatever generates the app's C configuration.

The values come from the policy file's payload or an export's manifest.json (both carry
``vehicle`` and ``mdp``, the vehicle and MDP the policy was trained on):

* ``rotor_speed_min`` / ``rotor_speed_max`` (preset unit) and ``thrust_coefficients`` (thrust per
  rotor ``c0 + c1 s + c2 s^2``, N): the action -> rotor speed -> thrust map of the simulator;
* ``history_reset_action``: the value the simulator fills the action history with at an episode
  start (``MDPConfig.init_rotor_speed_normalized``);
* ``position_error_limit_m``: the training box (``MDPConfig.termination_position``), per axis;
* ``policy_rate_hz``: ``1 / MDPConfig.dt``, which must divide the 1 kHz stabilizer rate.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from nanofly.sim.env import MDPConfig
from nanofly.sim.presets import VehicleParams

STABILIZER_HZ = 1000  # the firmware's stabilizer loop (RATE_MAIN_LOOP)


class VehicleConfigError(ValueError):
    """The policy's vehicle or MDP cannot be flown by the Crazyflie controller."""


def vehicle_params(source: dict[str, Any]) -> VehicleParams:
    """The vehicle a policy was trained on (``evaluate.policy_vehicle``: its stored parameters,
    else the built-in preset it names; ``PolicyFileError`` otherwise)."""
    from nanofly.train.evaluate import policy_vehicle

    return policy_vehicle(source)


def training_mdp(source: dict[str, Any]) -> MDPConfig:
    """The MDP a policy was trained on (defaults for fields its file does not record)."""
    names = {f.name for f in dataclasses.fields(MDPConfig)}
    recorded = {k: v for k, v in (source.get("mdp") or {}).items() if k in names}
    return MDPConfig(**recorded)


def controller_vehicle(source: dict[str, Any]) -> dict[str, Any]:
    """``nf_cf_vehicle``'s fields (same names) for the policy described by ``source`` (a
    policy payload or an export manifest)."""
    params = vehicle_params(source)
    mdp = training_mdp(source)
    rate = 1.0 / mdp.dt
    rate_hz = int(round(rate))
    if abs(rate - rate_hz) > 1e-6 * rate or rate_hz < 1 or STABILIZER_HZ % rate_hz:
        raise VehicleConfigError(f"the policy was trained at dt = {mdp.dt} s ({rate:g} Hz); the "
                                 f"Crazyflie controller runs it every k-th step of the "
                                 f"{STABILIZER_HZ} Hz stabilizer loop, so 1/dt must divide "
                                 f"{STABILIZER_HZ} (e.g. dt = 0.01 s)")
    return {
        "rotor_speed_min": float(params.rotor_speed_min),
        "rotor_speed_max": float(params.rotor_speed_max),
        "thrust_coefficients": [float(c) for c in params.thrust_coefficients],
        "history_reset_action": float(mdp.init_rotor_speed_normalized),
        "position_error_limit_m": float(mdp.termination_position),
        "policy_rate_hz": rate_hz,
    }
