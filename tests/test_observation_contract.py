"""One observation/action contract (nanofly.policy.observation), followed by the simulator, the
policy files, and the C side, whose compile-time sizes must equal the contract's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanofly.policy.observation import (ACTION_DIM, ACTION_MAPPING, DEFAULT_HISTORY_LENGTH,
                                        OBSERVATION_DIM, STATE_DIM, STATE_PARTS,
                                        history_length_of, observation_dim, observation_layout,
                                        observation_record, state_slice)

REPO = Path(__file__).resolve().parents[1]
BRIDGE_H = REPO / "firmware_bridge" / "firmware" / "src" / "bridge.h"
CRAZYFLIE_H = REPO / "firmware_bridge" / "crazyflie" / "src" / "nanofly_cf.h"
CF_LINK_FUZZ_C = REPO / "firmware_bridge" / "crazyflie" / "sitl" / "fuzz_cf_link.c"
PROTOCOL_H = REPO / "firmware_bridge" / "core" / "protocol.h"


def c_define(path: Path, name: str) -> int:
    """The integer value of ``#define NAME <digits>[u]`` in a C file."""
    found = re.findall(rf"^\s*#define\s+{name}\s+(\d+)u?\b", path.read_text(), re.MULTILINE)
    assert len(found) == 1, f"{path.relative_to(REPO)}: expected one #define {name}, found {found}"
    return int(found[0])


def test_the_contract_adds_up():
    assert [p.name for p in STATE_PARTS] == ["position_error", "rotation_matrix",
                                             "linear_velocity_error", "angular_velocity"]
    assert (STATE_DIM, ACTION_DIM, DEFAULT_HISTORY_LENGTH, OBSERVATION_DIM) == (18, 4, 32, 146)
    assert sum(size for _, size in observation_layout(DEFAULT_HISTORY_LENGTH)) == OBSERVATION_DIM
    assert observation_layout(0) == [(p.name, p.size) for p in STATE_PARTS]
    assert state_slice("angular_velocity") == slice(15, 18)
    assert [history_length_of(observation_dim(h)) for h in (0, 1, 16, 32)] == [0, 1, 16, 32]
    assert history_length_of(OBSERVATION_DIM + 1) is None and history_length_of(17) is None
    with pytest.raises(KeyError, match="no state part"):
        state_slice("velocity")


@pytest.mark.parametrize("path, name, value", [
    (BRIDGE_H, "NF_OBS_DIM", OBSERVATION_DIM),
    (BRIDGE_H, "NF_STATE_DIM", STATE_DIM),
    (BRIDGE_H, "NF_ACT_DIM", ACTION_DIM),
    (CRAZYFLIE_H, "NF_CF_STATE_DIM", STATE_DIM),
    (CRAZYFLIE_H, "NF_CF_ACTION_DIM", ACTION_DIM),
    (CRAZYFLIE_H, "NF_CF_MAX_HISTORY", DEFAULT_HISTORY_LENGTH),
    (CF_LINK_FUZZ_C, "OBS_DIM", OBSERVATION_DIM),
], ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_c_sizes_are_the_contracts(path, name, value):
    assert c_define(path, name) == value, (
        f"{path.relative_to(REPO)}: {name} is {c_define(path, name)}, but the observation "
        f"contract (nanofly/policy/observation.py) says {value}; change them together")


def test_a_full_infer_fits_the_smallest_payload():
    assert c_define(PROTOCOL_H, "NF_MIN_PAYLOAD") >= 4 * OBSERVATION_DIM + 4


def test_the_simulator_follows_the_contract():
    from nanofly.sim.env import PRIVILEGED_LAYOUT, MDPConfig

    for history in (0, 16, DEFAULT_HISTORY_LENGTH):
        assert MDPConfig(history_length=history).observation_dim == observation_dim(history)
    assert MDPConfig().history_length == DEFAULT_HISTORY_LENGTH
    # the critic sees the same state part first
    assert PRIVILEGED_LAYOUT[:len(STATE_PARTS)] == [(p.name, p.size) for p in STATE_PARTS]


@pytest.mark.parametrize("model", sorted(p.parent.name for p in (REPO / "models").glob("*/policy.pt")))
def test_shipped_policies_record_the_contract(model):
    import torch

    payload = torch.load(REPO / "models" / model / "policy.pt", weights_only=True)
    history = payload["mdp"]["history_length"]
    assert payload["observation"] == observation_record(history)
    assert payload["actor"]["layer_sizes"][0] == observation_dim(history)
    assert payload["actor"]["layer_sizes"][-1] == payload["action"]["dim"] == ACTION_DIM
    assert payload["action"]["mapping"] == ACTION_MAPPING
