import math

import numpy as np
import pytest

from nanofly.sim import presets
from nanofly.sim.presets import PresetError, VehicleParams, crazyflie_l2f, crazyflie_paper


def test_preset_values_and_hover_match_reference():
    # tests/data/README.md: hover 14 475.8 rpm / action 0.334053 and throttle 0.806124 / 0.612248
    assert crazyflie_paper.hover_rotor_speed == pytest.approx(14475.809152959684, rel=1e-9)
    assert crazyflie_paper.hover_action == pytest.approx(0.33405300460415477, rel=1e-9)
    assert crazyflie_l2f.hover_rotor_speed == pytest.approx(0.8061242309555284, rel=1e-9)
    assert crazyflie_l2f.hover_action == pytest.approx(0.6122484619110569, rel=1e-9)
    assert 4 * crazyflie_paper.thrust(crazyflie_paper.hover_rotor_speed) == pytest.approx(
        crazyflie_paper.mass * 9.81)


def test_toml_round_trip(tmp_path):
    for p in (crazyflie_paper, crazyflie_l2f):
        path = p.save_toml(tmp_path / f"{p.name}.toml")
        assert presets.load_toml(path) == p
        assert presets.get_preset(str(path)) == p


def test_custom_vehicle_from_toml(tmp_path):
    heavier = crazyflie_paper.replace(name="heavy", mass=0.035)
    path = heavier.save_toml(tmp_path / "heavy.toml")
    loaded = presets.load_toml(path)
    assert loaded.mass == 0.035
    assert loaded.hover_rotor_speed > crazyflie_paper.hover_rotor_speed


@pytest.mark.parametrize("changes, field", [
    ({"mass": 0.0}, "mass"),
    ({"mass": -1.0}, "mass"),
    ({"mass": float("nan")}, "mass"),
    ({"inertia": ((1e-6, 0, 0), (0, -1e-6, 0), (0, 0, 1e-6))}, "inertia"),
    ({"inertia": ((1e-6, 2e-6, 0), (2e-6, 1e-6, 0), (0, 0, 1e-6))}, "inertia"),
    ({"inertia": ((1e-6, 0), (0, 1e-6))}, "inertia"),
    ({"rotor_time_constant_rising": 0.0}, "rotor_time_constant_rising"),
    ({"rotor_time_constant_falling": -0.1}, "rotor_time_constant_falling"),
    ({"rotor_speed_min": 30000.0}, "rotor_speed_min"),
    ({"thrust_coefficients": (0.0, 0.0, 1e-12)}, "thrust_coefficients"),
    ({"thrust_coefficients": (0.0, 0.0, float("nan"))}, "thrust_coefficients"),
    ({"rotor_yaw_directions": (1.0, 1.0, 0.5, 1.0)}, "rotor_yaw_directions"),
    ({"rotor_speed_unit": "rad/s"}, "rotor_speed_unit"),
])
def test_invalid_presets_name_the_field(changes, field):
    with pytest.raises(PresetError, match=field):
        crazyflie_paper.replace(**changes)


def test_malformed_toml_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[vehicle\nmass = 1")
    with pytest.raises(PresetError, match="malformed TOML"):
        presets.load_toml(bad)
    bad.write_text("mass = 1.0\n")
    with pytest.raises(PresetError, match=r"\[vehicle\]"):
        presets.load_toml(bad)
    text = crazyflie_paper.to_toml().replace("mass = 0.027", "mass = 0.027\nwingspan = 3.0")
    bad.write_text(text)
    with pytest.raises(PresetError, match="wingspan"):
        presets.load_toml(bad)
    text = crazyflie_paper.to_toml().replace("mass = 0.027\n", "")
    bad.write_text(text)
    with pytest.raises(PresetError, match="missing field.*mass"):
        presets.load_toml(bad)
    with pytest.raises(PresetError, match="no such file"):
        presets.load_toml(tmp_path / "nope.toml")
    with pytest.raises(PresetError, match="unknown preset"):
        presets.get_preset("crazyflie_3000")


def test_preset_is_plain_frozen_data():
    with pytest.raises(Exception):
        crazyflie_paper.mass = 1.0  # frozen
    d = crazyflie_paper.to_dict()
    assert isinstance(d["inertia"], list) and math.isclose(d["mass"], 0.027)
    assert VehicleParams.from_dict(d) == crazyflie_paper
    assert np.allclose(crazyflie_paper.inertia_diagonal(), [3.85e-6, 3.85e-6, 5.9675e-6])


def test_crazyflie_21plus_ends_at_the_stock_firmware_thrust_limit():
    """The preset's top rotor speed gives the firmware's THRUST_MAX (2.1+ propellers), never
    more, and everything else is crazyflie_paper's."""
    from nanofly.sim.presets import FIRMWARE_THRUST_MAX_21PLUS, crazyflie_21plus

    top = crazyflie_21plus.thrust(crazyflie_21plus.rotor_speed_max)
    assert top <= FIRMWARE_THRUST_MAX_21PLUS
    assert top == pytest.approx(FIRMWARE_THRUST_MAX_21PLUS, rel=1e-5)
    same = {k: v for k, v in crazyflie_21plus.to_dict().items()
            if k not in ("name", "description", "rotor_speed_max")}
    assert same == {k: v for k, v in crazyflie_paper.to_dict().items() if k in same}
