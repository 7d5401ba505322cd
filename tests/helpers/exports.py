"""Helpers for the export tests (tests/test_export*.py) and benchmarks: policy files with known
weights, quick exports on synthetic observations, and simulator observations when available."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM

from nanofly.export.calibration import (CalibrationUnavailable, collect_calibration_observations,
                                       synthetic_observations)

HOVER_SIZES = (OBSERVATION_DIM, 64, 64, ACTION_DIM)


def write_policy(path, sizes=HOVER_SIZES, seed: int = 0, weight_scale: float = 1.0) -> Path:
    """A policy.pt with a PyTorch-initialized actor (weights and biases times ``weight_scale``)."""
    import torch

    from nanofly.policy.actor import init_actor, save_policy
    actor = init_actor(list(sizes), seed)
    with torch.no_grad():
        for lin in actor.linear_layers():
            lin.weight.mul_(weight_scale)
            lin.bias.mul_(weight_scale)
    return save_policy(path, actor, observation={"dim": sizes[0]}, action={"dim": sizes[-1]},
                       vehicle={"preset": "crazyflie_paper"})


def write_tampered_policy(path, base: Path, edit: Callable[[dict], Any]) -> Path:
    """Copy of the policy file ``base`` with its payload dict changed by ``edit`` (written with
    torch.save directly, bypassing save_policy's checks)."""
    import torch
    payload = torch.load(base, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return Path(path)


def quick_export(policy, out, *, seed: int = 0, num_calibration: int = 2048,
                 num_eval: int = 2000, dim: int | None = None) -> dict:
    """export_policy on synthetic observations (labelled "synthetic"), no simulator needed."""
    from nanofly.export.exporter import export_policy
    if dim is None:
        from nanofly.policy.actor import load_policy
        dim = load_policy(policy)[0].layer_sizes[0]
    cal = synthetic_observations(num_calibration, dim, seed + 100)
    ev = synthetic_observations(num_eval, dim, seed + 200)
    return export_policy(policy, out, calibration_obs=(cal, "synthetic"),
                         eval_obs=(ev, "synthetic"), seed=seed)


def observations_for(policy, n: int, seed: int, dim: int,
                     payload: dict[str, Any] | None = None) -> tuple[np.ndarray, str]:
    """Simulator observations of ``policy`` (a policy.pt, or an Actor with its file's
    ``payload``) flying, or synthetic ones if the simulator is not available; returns
    ``(obs, source)``."""
    try:
        return collect_calibration_observations(policy, n, seed, payload=payload), "simulator"
    except CalibrationUnavailable:
        return synthetic_observations(n, dim, seed), "synthetic"
