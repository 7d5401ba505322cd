"""The observation/action contract: what a nanofly policy reads and what it commands.

Defined here once; the simulator's observation code, the replay buffer, calibration, export,
the firmware bridge (PIL) and the C side (``bridge.h``, the Crazyflie app's ``nanofly_cf.h``,
checked against it by tests/test_observation_contract.py) all take their sizes from it, and
``policy.pt`` records it (``observation_record``).

Observation, ``STATE_DIM + ACTION_DIM * history_length`` float32 values (146 for the default
history of 32 actions), in this order:

==========================  ====  =======  ===============================================
part                        size  unit     meaning
==========================  ====  =======  ===============================================
position_error              3     m        p - p_target, world frame
rotation_matrix             9     1        R(q) body to world, row-major
linear_velocity_error       3     m/s      v - v_target, world frame
angular_velocity            3     rad/s    body frame
action_history_newest_first 4 H   1        the last H actions, clipped to [-1, 1], newest
                                           first (absent when H = 0)
==========================  ====  =======  ===============================================

The first ``STATE_DIM`` values (the state part) come from the state estimate; the history is
the policy's own output, which a runtime can keep itself (the bridge's INFER_STATE, the
Crazyflie app).

Action: ``ACTION_DIM`` values in [-1, 1], one per rotor, mapped to the rotor set point as
``ACTION_MAPPING`` says (min and max: the vehicle's rotor speed range).
"""
from __future__ import annotations

from typing import Any, NamedTuple


class StatePart(NamedTuple):
    name: str
    size: int
    unit: str
    meaning: str


STATE_PARTS = (
    StatePart("position_error", 3, "m", "p - p_target, world frame"),
    StatePart("rotation_matrix", 9, "1", "R(q) body to world, row-major"),
    StatePart("linear_velocity_error", 3, "m/s", "v - v_target, world frame"),
    StatePart("angular_velocity", 3, "rad/s", "body frame"),
)
STATE_DIM = sum(part.size for part in STATE_PARTS)
ACTION_DIM = 4
ACTION_HISTORY_PART = "action_history_newest_first"
DEFAULT_HISTORY_LENGTH = 32  # actions in the observation's history
ACTION_MAPPING = "rotor set point = min + (a + 1) / 2 * (max - min), a in [-1, 1]"


def state_slice(name: str) -> slice:
    """Where the state part ``name`` sits in the observation (e.g. ``angular_velocity``)."""
    start = 0
    for part in STATE_PARTS:
        if part.name == name:
            return slice(start, start + part.size)
        start += part.size
    raise KeyError(f"no state part {name!r}; the parts are {[p.name for p in STATE_PARTS]}")


def observation_dim(history_length: int = DEFAULT_HISTORY_LENGTH) -> int:
    """The number of observation values with ``history_length`` past actions."""
    return STATE_DIM + ACTION_DIM * int(history_length)


OBSERVATION_DIM = observation_dim()  # with the default history


def observation_layout(history_length: int) -> list[tuple[str, int]]:
    """(name, size) of each part of the observation, in order."""
    layout = [(part.name, part.size) for part in STATE_PARTS]
    if history_length:
        layout.append((ACTION_HISTORY_PART, ACTION_DIM * int(history_length)))
    return layout


def history_length_of(dim: int) -> int | None:
    """The history length of an observation of ``dim`` values, or None when ``dim`` is not
    ``STATE_DIM + ACTION_DIM * H`` for a whole H >= 0."""
    history, rest = divmod(int(dim) - STATE_DIM, ACTION_DIM)
    return history if history >= 0 and not rest else None


def observation_record(history_length: int) -> dict[str, Any]:
    """The contract as ``policy.pt`` records it (its ``observation`` entry)."""
    return {"dim": observation_dim(history_length), "history_length": int(history_length),
            "layout": [list(x) for x in observation_layout(history_length)]}
