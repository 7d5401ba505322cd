"""Vehicle parameter sets ("presets") as plain data.

A preset is a frozen dataclass of floats and tuples; it can be saved to and loaded from TOML so a
user can describe their own vehicle. Derived quantities (hover rotor speed, hover action) are
computed from the parameters, never stored.

Conventions (docs/mdp.md): SI units, z up, quaternions (w, x, y, z) body -> world, rotor
thrust along body +z. Rotor speed is in the preset's own unit (``rotor_speed_unit``: "rpm" or
"throttle", relative throttle in [0, 1]); thrust per rotor is
``c0 + c1 * speed + c2 * speed**2`` newtons with ``(c0, c1, c2) = thrust_coefficients``.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NUM_ROTORS = 4


class PresetError(ValueError):
    """A vehicle description is invalid; the message names the field."""


@dataclass(frozen=True)
class VehicleParams:
    """Physical parameters of a quadrotor (Crazyflie "X" layout by default).

    Rotors are numbered as in the reference simulator: 0 front-right, 1 back-right, 2 back-left,
    3 front-left (x forward, y left). ``rotor_yaw_directions`` is the sign of each rotor's
    reaction torque about body z.
    """

    name: str
    mass: float  # kg
    inertia: tuple[tuple[float, float, float], ...]  # kg m^2, body frame, 3x3 (diagonal)
    rotor_positions: tuple[tuple[float, float, float], ...]  # m, body frame, one row per rotor
    rotor_yaw_directions: tuple[float, float, float, float]  # +1 / -1 about body z
    thrust_coefficients: tuple[float, float, float]  # (c0 N, c1 N/unit, c2 N/unit^2)
    rotor_torque_constant: float  # m: yaw torque = constant * thrust
    rotor_time_constant_rising: float  # s, first-order lag when speeding up
    rotor_time_constant_falling: float  # s, first-order lag when slowing down
    rotor_speed_min: float  # preset unit
    rotor_speed_max: float  # preset unit
    rotor_speed_unit: str = "rpm"  # "rpm" or "throttle"
    gravity: tuple[float, float, float] = (0.0, 0.0, -9.81)  # m/s^2, world frame
    description: str = ""

    def __post_init__(self) -> None:
        validate(self)

    # Derived quantities -------------------------------------------------------------------
    @property
    def weight(self) -> float:
        """Magnitude of the gravitational force, N."""
        return self.mass * float(np.linalg.norm(self.gravity))

    @property
    def hover_rotor_speed(self) -> float:
        """Rotor speed (preset unit) at which the four rotors together carry the weight."""
        c0, c1, c2 = self.thrust_coefficients
        per_rotor = self.weight / NUM_ROTORS
        if c2 == 0.0:
            return (per_rotor - c0) / c1
        disc = c1 * c1 - 4.0 * c2 * (c0 - per_rotor)
        return (-c1 + math.sqrt(disc)) / (2.0 * c2)

    @property
    def hover_action(self) -> float:
        """Normalized action in [-1, 1] whose set point is the hover rotor speed."""
        span = self.rotor_speed_max - self.rotor_speed_min
        return 2.0 * (self.hover_rotor_speed - self.rotor_speed_min) / span - 1.0

    def thrust(self, rotor_speed: float) -> float:
        c0, c1, c2 = self.thrust_coefficients
        return c0 + c1 * rotor_speed + c2 * rotor_speed * rotor_speed

    def inertia_diagonal(self) -> np.ndarray:
        return np.array([self.inertia[i][i] for i in range(3)])

    def replace(self, **changes: Any) -> "VehicleParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # Plain data / TOML ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "vehicle") -> "VehicleParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PresetError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise PresetError(f"{source}: missing field(s) {missing}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except PresetError as exc:
            raise PresetError(f"{source}: {exc}") from None

    def to_toml(self) -> str:
        return dumps_toml({"vehicle": self.to_dict()})

    def save_toml(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml())
        tmp.replace(path)
        return path


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_vector(params: VehicleParams, name: str, length: int) -> np.ndarray:
    value = getattr(params, name)
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise PresetError(f"{name}: expected {length} numbers, got {value!r}") from None
    if arr.shape != (length,):
        raise PresetError(f"{name}: expected {length} numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PresetError(f"{name}: contains NaN or Inf ({value!r})")
    return arr


def validate(params: VehicleParams) -> None:
    """Raise ``PresetError`` naming the first invalid field."""
    for name in ("mass", "rotor_torque_constant", "rotor_time_constant_rising",
                 "rotor_time_constant_falling", "rotor_speed_min", "rotor_speed_max"):
        value = getattr(params, name)
        if not _is_number(value):
            raise PresetError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise PresetError(f"{name}: must be finite, got {value}")
    if params.mass <= 0:
        raise PresetError(f"mass: must be > 0 kg, got {params.mass}")
    for name in ("rotor_time_constant_rising", "rotor_time_constant_falling"):
        if getattr(params, name) <= 0:
            raise PresetError(f"{name}: must be > 0 s, got {getattr(params, name)}")
    if params.rotor_speed_unit not in ("rpm", "throttle"):
        raise PresetError(f"rotor_speed_unit: must be 'rpm' or 'throttle', got "
                          f"{params.rotor_speed_unit!r}")
    if not params.rotor_speed_min < params.rotor_speed_max:
        raise PresetError(f"rotor_speed_min/rotor_speed_max: limits inverted or equal "
                          f"({params.rotor_speed_min} >= {params.rotor_speed_max})")
    if params.rotor_speed_min < 0:
        raise PresetError(f"rotor_speed_min: must be >= 0, got {params.rotor_speed_min}")
    try:
        inertia = np.array(params.inertia, dtype=float)
    except (TypeError, ValueError):
        raise PresetError(f"inertia: expected a 3x3 matrix, got {params.inertia!r}") from None
    if inertia.shape != (3, 3):
        raise PresetError(f"inertia: expected a 3x3 matrix, got shape {inertia.shape}")
    if not np.all(np.isfinite(inertia)):
        raise PresetError("inertia: contains NaN or Inf")
    if not np.allclose(inertia, inertia.T, rtol=0, atol=1e-12 * max(1e-30, np.abs(inertia).max())):
        raise PresetError("inertia: must be symmetric")
    if np.any(np.linalg.eigvalsh(inertia) <= 0):
        raise PresetError(f"inertia: must be positive definite, eigenvalues "
                          f"{np.linalg.eigvalsh(inertia).tolist()}")
    if np.any(np.abs(inertia - np.diag(np.diag(inertia))) > 0):
        raise PresetError("inertia: off-diagonal terms are not supported (the simulator "
                          "assumes principal body axes); give a diagonal matrix")
    try:
        positions = np.array(params.rotor_positions, dtype=float)
    except (TypeError, ValueError):
        raise PresetError("rotor_positions: expected 4 rows of (x, y, z) in m") from None
    if positions.shape != (NUM_ROTORS, 3):
        raise PresetError(f"rotor_positions: expected shape (4, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise PresetError("rotor_positions: contains NaN or Inf")
    yaw = _check_vector(params, "rotor_yaw_directions", NUM_ROTORS)
    if not np.all(np.abs(yaw) == 1):
        raise PresetError(f"rotor_yaw_directions: each must be +1 or -1, got {yaw.tolist()}")
    gravity = _check_vector(params, "gravity", 3)
    if np.linalg.norm(gravity) == 0:
        raise PresetError("gravity: must not be zero")
    c = _check_vector(params, "thrust_coefficients", 3)
    if c[2] < 0 or (c[2] == 0 and c[1] <= 0):
        raise PresetError(f"thrust_coefficients: thrust must grow with rotor speed "
                          f"(need c2 > 0, or c2 == 0 and c1 > 0), got {c.tolist()}")
    max_thrust = NUM_ROTORS * params.thrust(params.rotor_speed_max)
    if max_thrust <= params.weight:
        raise PresetError(
            f"thrust_coefficients: the vehicle cannot lift itself: 4 rotors at rotor_speed_max "
            f"give {max_thrust:.4g} N, the weight is {params.weight:.4g} N")
    if NUM_ROTORS * params.thrust(params.rotor_speed_min) >= params.weight:
        raise PresetError("thrust_coefficients: rotors at rotor_speed_min already lift the "
                          "vehicle; hover would be below the speed range")


# A minimal TOML writer for plain data (numbers, strings, bools, nested lists, tables):
# enough for presets and configs, and it avoids a dependency (tomllib only reads).
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise PresetError(f"cannot write non-finite number {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, np.generic):
        return _toml_value(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(data: dict[str, Any], _prefix: str = "") -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is None:
            continue
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, table in tables:
        name = f"{_prefix}{key}"
        out += f"\n[{name}]\n" + dumps_toml(table, name + ".")
    return out


def read_toml(path: str | Path, error: type[Exception] = PresetError,
              prefix: str = "") -> dict[str, Any]:
    """The tables of a TOML file, or ``error("<prefix><path>: why")`` when it cannot be read
    (missing, not UTF-8 text, malformed TOML, a directory, no permission)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{prefix}{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{prefix}{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise error(f"{prefix}{path}: not a TOML file (not UTF-8 text)") from None
    except OSError as exc:  # a directory, no permission, ...
        raise error(f"{prefix}{path}: cannot read it ({exc.strerror or exc})") from None


def load_toml(path: str | Path) -> VehicleParams:
    """Read a vehicle from a TOML file with a ``[vehicle]`` table (as ``save_toml`` writes)."""
    path = Path(path)
    data = read_toml(path)
    if "vehicle" not in data or not isinstance(data["vehicle"], dict):
        raise PresetError(f"{path}: expected a [vehicle] table")
    return VehicleParams.from_dict(data["vehicle"], source=str(path))


_X_LAYOUT = ((0.028, -0.028, 0.0), (-0.028, -0.028, 0.0), (-0.028, 0.028, 0.0), (0.028, 0.028, 0.0))
_X_YAW = (-1.0, 1.0, -1.0, 1.0)

crazyflie_paper = VehicleParams(
    name="crazyflie_paper",
    description="Crazyflie 2.1 as in 'Learning to Fly in Seconds' (rotor speed in rpm)",
    mass=0.027,
    inertia=((3.85e-6, 0.0, 0.0), (0.0, 3.85e-6, 0.0), (0.0, 0.0, 5.9675e-6)),
    rotor_positions=_X_LAYOUT,
    rotor_yaw_directions=_X_YAW,
    thrust_coefficients=(0.0, 0.0, 3.16e-10),
    rotor_torque_constant=0.005964552,
    rotor_time_constant_rising=0.15,
    rotor_time_constant_falling=0.15,
    rotor_speed_min=0.0,
    rotor_speed_max=21702.0,
    rotor_speed_unit="rpm",
)

crazyflie_l2f = VehicleParams(
    name="crazyflie_l2f",
    description="Crazyflie 2.1, the reference's later system identification (relative throttle)",
    mass=0.030600000000000002,
    inertia=((9.416556729130406e-06, 0.0, 0.0), (0.0, 9.644051701582312e-06, 0.0),
             (0.0, 0.0, 1.745951732253285e-05)),
    rotor_positions=_X_LAYOUT,
    rotor_yaw_directions=_X_YAW,
    thrust_coefficients=(0.00352526, 0.01437313, 0.09223048),
    rotor_torque_constant=0.004665,
    rotor_time_constant_rising=0.05545454545454546,
    rotor_time_constant_falling=0.24939393939393945,
    rotor_speed_min=0.0,
    rotor_speed_max=1.0,
    rotor_speed_unit="throttle",
)

# The stock Crazyflie firmware (2.1+ propellers) keeps each motor's thrust at or below its
# THRUST_MAX of 0.12 N, so that thrust stays the same as the battery drains; crazyflie_paper's
# rotors reach 0.149 N. This preset is crazyflie_paper with the rotor-speed range ending where
# its thrust curve reaches 0.12 N, so that a policy trained on it never asks for more than the
# firmware gives (docs/crazyflie.md).
FIRMWARE_THRUST_MAX_21PLUS = 0.12  # N per motor, platform_defaults_cf2.h (2.1+ propellers)
crazyflie_21plus = crazyflie_paper.replace(
    name="crazyflie_21plus",
    description="crazyflie_paper with rotor speeds capped at the stock firmware's thrust limit "
                "for 2.1+ propellers (0.12 N per motor)",
    rotor_speed_max=math.floor(10.0 * math.sqrt(FIRMWARE_THRUST_MAX_21PLUS / crazyflie_paper.thrust_coefficients[2])) / 10.0,
)

PRESETS: dict[str, VehicleParams] = {p.name: p for p in (crazyflie_paper, crazyflie_l2f, crazyflie_21plus)}


def get_preset(preset: str | VehicleParams | Path) -> VehicleParams:
    """A preset by name, a ``VehicleParams`` as is, or a TOML file path."""
    if isinstance(preset, VehicleParams):
        return preset
    if isinstance(preset, Path) or (isinstance(preset, str) and preset.endswith(".toml")):
        return load_toml(preset)
    if preset in PRESETS:
        return PRESETS[preset]
    raise PresetError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or give a "
                      f".toml file")
