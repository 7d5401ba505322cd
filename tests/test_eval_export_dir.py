"""The C backends reuse an export directory: `make_backend(..., export_dir=DIR)` exports a
policy.pt into DIR once, and later runs with the same policy file and options run DIR as it is
instead of exporting again into a temporary folder."""
from __future__ import annotations

import json

import numpy as np

from nanofly.export.backends import make_backend
from nanofly.export.calibration import synthetic_observations

from helpers.exports import write_policy

SMALL = {"num_calibration": 256, "num_eval": 256}  # simulator observations, kept cheap


def _manifest_identity(export_dir):
    st = (export_dir / "manifest.json").stat()
    return st.st_ino, st.st_mtime_ns  # the export is written atomically: a new file each time


def test_c_backend_exports_once_into_export_dir_and_reuses_it(tmp_path):
    policy = write_policy(tmp_path / "policy.pt", sizes=(146, 16, 4), seed=1)
    export_dir = tmp_path / "export"
    obs = synthetic_observations(8, 146, 3)
    with make_backend("c-int8", policy, export_dir=export_dir, **SMALL) as backend:
        first = backend(obs)
        assert backend.info()["export_dir"] == str(export_dir)
    made = _manifest_identity(export_dir)
    with make_backend("c-int8", policy, export_dir=export_dir, **SMALL) as backend:
        np.testing.assert_array_equal(backend(obs), first)
    with make_backend("c-f32", policy, export_dir=export_dir, **SMALL):
        pass
    assert _manifest_identity(export_dir) == made  # reused twice, not exported again

    # another calibration seed is not what DIR holds: exported again
    with make_backend("c-int8", policy, export_dir=export_dir, seed=1, **SMALL):
        pass
    assert _manifest_identity(export_dir) != made
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["quantization"]["calibration"]["seed"] == 1


def test_eval_cli_runs_the_export_in_export_dir_and_writes_plots(tmp_path, capsys):
    """`nanofly eval POLICY --backend c-int8 --export-dir DIR` runs the export DIR holds of
    this very policy file (made here with other options than eval's defaults) instead of
    exporting again; --plots writes each suite's rollout plots; a progress line names the
    suite and backend."""
    from nanofly.cli import main
    from helpers.exports import quick_export

    policy = write_policy(tmp_path / "policy.pt", sizes=(146, 16, 4), seed=1)
    export_dir = tmp_path / "export"
    quick_export(policy, export_dir, num_calibration=256, num_eval=128)
    made = _manifest_identity(export_dir)
    plots = tmp_path / "plots"
    rc = main(["eval", str(policy), "--backend", "c-int8", "--export-dir", str(export_dir),
               "--suite", "hover", "--suite", "figure8", "--episodes", "2", "--plots",
               str(plots), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1  # an untrained actor misses the gates
    assert f"reusing the export of {policy} in {export_dir}" in err
    assert "hover suite (c-int8) [" in err and "500/500 steps" in err
    assert _manifest_identity(export_dir) == made
    result = json.loads(out)
    assert result["backend_info"]["export_dir"] == str(export_dir)
    assert sorted(p.name for p in plots.iterdir()) == [
        "figure8_position_vs_time.png", "figure8_tracking_error.png", "figure8_xy.png",
        "hover_position_vs_time.png", "hover_rollouts_xy.png"]
    assert result["suites"]["hover"]["plots"][0] == str(plots / "hover_rollouts_xy.png")
    # an export directory as POLICY needs no --export-dir; both at once is refused
    rc = main(["eval", str(export_dir), "--backend", "c-int8", "--export-dir", str(export_dir)])
    assert rc == 2 and "is an export directory already" in capsys.readouterr().err
