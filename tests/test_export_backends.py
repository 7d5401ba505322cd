"""Evaluation backends: make_backend('onnx' | 'c-f32' | 'c-int8', policy or export dir)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nanofly.export.backends import BackendError, make_backend
from nanofly.export.calibration import CalibrationUnavailable, synthetic_observations
from nanofly.policy.actor import load_policy

from helpers.exports import quick_export, write_policy

BOUNDS = {"onnx": 1e-5, "c-f32": 1e-5, "c-int8": 0.02}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    policy = write_policy(tmp / "policy.pt", seed=5)
    quick_export(policy, tmp / "out")
    actor, _ = load_policy(policy)
    obs = synthetic_observations(3000, 146, 11)
    with torch.no_grad():
        ref = actor(torch.from_numpy(obs)).numpy()
    return policy, tmp / "out", obs, ref


@pytest.mark.parametrize("spec", ["onnx", "c-f32", "c-int8"])
def test_backend_matches_torch(exported, spec):
    _, out, obs, ref = exported
    backend = make_backend(spec, out)
    try:
        act = backend(obs)
        assert act.shape == (len(obs), 4) and act.dtype == np.float32
        assert np.abs(act - ref).max() <= BOUNDS[spec]
        assert backend(obs[:0]).shape == (0, 4)
        info = backend.info()
        assert info["backend"] == spec and info["input_dim"] == 146
        assert info["max_abs_error_vs_torch"] <= BOUNDS[spec]
    finally:
        backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend(obs)


def test_c_backends_differ_as_expected(exported):
    _, out, obs, _ = exported
    with make_backend("c-f32", out) as f32, make_backend("c-int8", out) as i8:
        assert 0 < np.abs(f32(obs) - i8(obs)).max() <= 0.02


def test_bad_specs_and_inputs(exported, tmp_path):
    _, out, obs, _ = exported
    with pytest.raises(BackendError, match="unknown backend 'c-int4'"):
        make_backend("c-int4", out)
    with pytest.raises(BackendError, match="no such policy"):
        make_backend("onnx", tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="not a nanofly export"):
        make_backend("c-f32", tmp_path / "empty")
    with make_backend("c-f32", out) as b:
        with pytest.raises(BackendError, match=r"shape \(N, 146\)"):
            b(obs[:, :10])


def test_modified_export_is_detected(exported, tmp_path):
    import shutil
    _, out, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    blob = bytearray((copy / "policy_int8.bin").read_bytes())
    blob[-1] ^= 0xFF
    (copy / "policy_int8.bin").write_bytes(bytes(blob))
    with pytest.raises(BackendError, match="does not match manifest"):
        make_backend("c-int8", copy)
    make_backend("c-f32", copy).close()  # the untouched blob still loads


def test_policy_file_is_exported_on_the_fly(exported):
    """A policy.pt works directly (simulator calibration); skipped without the simulator."""
    policy, _, obs, ref = exported
    try:
        backend = make_backend("c-int8", policy, num_calibration=1024, num_eval=1000)
    except Exception as exc:  # noqa: BLE001 - the simulator stage may be missing
        if isinstance(exc.__cause__, CalibrationUnavailable):
            pytest.skip(f"simulator not available: {exc}")
        raise
    with backend:
        assert backend.info()["error_observations"]["source"] == "simulator"
        assert backend(obs).shape == ref.shape
    # a second backend of the same policy reuses the export
    with make_backend("onnx", policy, num_calibration=1024, num_eval=1000) as onnx_backend:
        assert onnx_backend.export_dir == backend.export_dir
        assert np.abs(onnx_backend(obs) - ref).max() <= 1e-5


def test_shipped_int8_aware_model_meets_the_int8_bound_on_simulator_observations(tmp_path):
    """models/crazyflie_hover_int8 (trained with --int8-aware-steps): exported as a user would,
    its int8 C runtime stays within 0.02 of the torch actor over 10 000 simulator observations."""
    from pathlib import Path

    from nanofly.export.exporter import export_policy

    policy = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover_int8" / "policy.pt"
    manifest = export_policy(policy, tmp_path / "export")
    errors = manifest["errors"]
    assert errors["observations"] == {"count": 10000, "source": "simulator", "seed": 1}
    assert errors["c_int8"]["max_abs"] <= 0.02 and errors["c_int8"]["within_bound"]
    assert errors["c_int8"]["saturated_observations"] == 0
    assert errors["c_f32"]["max_abs"] <= 1e-5
