"""int8 calibration flies the vehicle stored in the policy file, never a stand-in."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nanofly.export.calibration import _make_env, collect_calibration_observations
from nanofly.export.exporter import ExportError, export_policy
from nanofly.sim.presets import PRESETS
from nanofly.policy.actor import PolicyFileError, init_actor

PAPER = PRESETS["crazyflie_paper"]


def payload_with(vehicle: dict, history_length: int = 32) -> dict:
    return {"vehicle": vehicle, "mdp": {"history_length": history_length},
            "actor": {"layer_sizes": [18 + 4 * history_length, 16, 4]}}


def own_vehicle(**changes):
    """A user's vehicle (a TOML preset, say): a name nanofly does not know, its own mass."""
    return dataclasses.replace(PAPER, name="my_quad", **changes)


def test_calibration_uses_the_stored_vehicle_not_a_preset_of_that_name():
    heavy = own_vehicle(mass=PAPER.mass * 1.3)
    payload = payload_with({"preset": "my_quad", "params": heavy.to_dict()})
    env = _make_env(8, 0, payload, 146)
    try:
        assert env.params == heavy
    finally:
        getattr(env, "close", lambda: None)()
    actor = init_actor([146, 16, 4], 0)
    obs_heavy = collect_calibration_observations(actor, 256, 3, num_envs=16, payload=payload)
    obs_paper = collect_calibration_observations(
        actor, 256, 3, num_envs=16,
        payload=payload_with({"preset": "crazyflie_paper", "params": PAPER.to_dict()}))
    # the same seed and actor on another vehicle: other hover action, other observations
    assert obs_heavy.shape == obs_paper.shape == (256, 146)
    assert not np.array_equal(obs_heavy, obs_paper)


@pytest.mark.parametrize("vehicle, words", [
    ({"preset": "my_quad", "params": {**own_vehicle().to_dict(), "mass": -0.03}}, "mass"),
    ({"preset": "my_quad", "params": {**own_vehicle().to_dict(), "mass": "light"}}, "mass"),
    ({"preset": "my_quad"}, "my_quad"),                       # no parameters, unknown name
    ({"preset": "../vehicles/quad.toml"}, "quad.toml"),       # never read a file it names
    ("crazyflie_paper", "vehicle"),
])
def test_invalid_stored_vehicle_is_refused(vehicle, words):
    actor = init_actor([146, 16, 4], 0)
    with pytest.raises(PolicyFileError, match=words):
        collect_calibration_observations(actor, 64, 0, num_envs=8, payload=payload_with(vehicle))


def test_export_refuses_invalid_stored_vehicle_and_leaves_nothing(tmp_path):
    from nanofly.policy.actor import save_policy

    policy = save_policy(tmp_path / "p.pt", init_actor([146, 16, 4], 0),
                         observation={"dim": 146, "history_length": 32}, action={"dim": 4},
                         vehicle={"preset": "my_quad",
                                  "params": {**own_vehicle().to_dict(), "mass": -1.0}},
                         mdp={"history_length": 32})
    with pytest.raises(ExportError, match="mass: must be > 0"):
        export_policy(policy, tmp_path / "out", num_calibration=64, num_eval=64)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]
