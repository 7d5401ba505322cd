"""`nanofly export`: the export directory, manifest, ONNX, atomic writes, refusals."""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nanofly.cli import main as cli_main
from nanofly.export import blob as B
from nanofly.export.calibration import synthetic_observations
from nanofly.export.exporter import FILES, ExportError, export_policy
from nanofly.export.onnx_export import OnnxRunner
from nanofly.policy.actor import load_policy

from helpers.exports import quick_export, write_policy, write_tampered_policy


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_cli")
    policy = write_policy(tmp / "policy.pt", seed=3)
    manifest = quick_export(policy, tmp / "out")
    return policy, tmp / "out", manifest


def test_export_writes_every_file(export_dir):
    _, out, _ = export_dir
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert sorted(written) == sorted(FILES)
    assert "nanofly_policy.c" in FILES and "kernels/nf_dense_s8.c" in FILES


def test_manifest_describes_the_export(export_dir):
    policy, out, manifest = export_dir
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["layer_sizes"] == [146, 64, 64, 4]
    assert manifest["input_dim"] == 146 and manifest["output_dim"] == 4
    assert [ly["weight_shape"] for ly in manifest["layers"]] == [[64, 146], [64, 64], [4, 64]]
    assert {ly["activation"] for ly in manifest["layers"]} == {"tanh"}
    q = manifest["quantization"]
    assert [len(s) for s in q["weight_scales"]] == [64, 64, 4]
    assert len(q["input_multiplier"]) == 146
    assert q["calibration"]["source"] == "synthetic"
    for tag in ("f32", "int8"):
        entry = manifest["blobs"][tag]
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert int(entry["crc32"], 16) == zlib.crc32(data[:-4])
        assert entry["bytes"] == len(data)
        parsed = B.read_blob(data)
        assert parsed.format_name == tag
    # the quantization scales in the manifest are the ones in the blob
    parsed = B.read_blob((out / "policy_int8.bin").read_bytes())
    for s_manifest, s_blob in zip(q["weight_scales"], parsed.scales):
        np.testing.assert_array_equal(np.float32(s_manifest), s_blob)
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    err = manifest["errors"]
    assert err["observations"]["count"] == 2000
    assert err["c_f32"]["max_abs"] <= 1e-5 and err["c_f32"]["within_bound"]
    assert err["c_int8"]["max_abs"] <= 0.02 and err["c_int8"]["within_bound"]
    assert err["onnx"]["max_abs"] <= 1e-5


def test_c_arrays_are_the_blobs(export_dir):
    _, out, _ = export_dir
    for tag in ("f32", "int8"):
        src = (out / f"policy_{tag}.c").read_text()
        body = src[src.index("{.bytes = {") + len("{.bytes = {"):src.rindex("}};")]
        data = bytes(int(v, 16) for v in body.replace("\n", " ").split(",") if v.strip())
        assert data == (out / f"policy_{tag}.bin").read_bytes()
        header = (out / f"policy_{tag}.h").read_text()
        assert f"NANOFLY_POLICY_{tag.upper()}_SIZE {len(data)}u" in header


def test_onnx_checks_and_matches_torch(export_dir):
    policy, out, _ = export_dir
    model = onnx.load(str(out / "policy.onnx"))
    onnx.checker.check_model(model, full_check=True)
    actor, _ = load_policy(policy)
    obs = synthetic_observations(4096, 146, 9)
    with torch.no_grad():
        ref = actor(torch.from_numpy(obs)).numpy()
    assert np.abs(OnnxRunner(out / "policy.onnx")(obs) - ref).max() <= 1e-5
    assert OnnxRunner(out / "policy.onnx")(obs[:1]).shape == (1, 4)  # dynamic batch


def test_cli_json(tmp_path, capsys, monkeypatch):
    """The CLI path end to end; calibration observations are patched to synthetic ones so the
    test does not depend on the simulator."""
    import nanofly.export.exporter as ex
    policy = write_policy(tmp_path / "p.pt", seed=4)
    monkeypatch.setattr(ex, "collect_calibration_observations",
                        lambda actor, n, seed, payload=None: synthetic_observations(n, 146, seed))
    rc = cli_main(["export", str(policy), "--out", str(tmp_path / "out"), "--json",
                   "--calibration", "1024", "--eval", "1000"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(tmp_path / "out")
    assert result["errors"]["c_int8"]["max_abs"] <= 0.02
    assert result["blobs"]["int8"]["bytes"] == (tmp_path / "out" / "policy_int8.bin").stat().st_size


# --- refusals: clear error, nothing written -----------------------------------------------------

def _no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}.") or p.name == name for p in parent.iterdir())


def _refused(tmp_path, policy, match, capsys=None):
    out = tmp_path / "out"
    cal = synthetic_observations(256, 146, 0)
    with pytest.raises(ExportError, match=match):
        export_policy(policy, out, calibration_obs=(cal, "synthetic"), eval_obs=(cal, "synthetic"))
    assert _no_leftovers(tmp_path, "out")
    rc = cli_main(["export", str(policy), "--out", str(out)])
    assert rc == 2
    assert _no_leftovers(tmp_path, "out")


def test_refuses_nan_and_inf_weights(tmp_path, capsys):
    base = write_policy(tmp_path / "base.pt")

    def poison(value):
        def edit(payload):
            payload["actor"]["state_dict"]["net.2.weight"][3, 5] = value
        return edit
    _refused(tmp_path, write_tampered_policy(tmp_path / "nan.pt", base, poison(float("nan"))),
             "NaN or Inf")
    _refused(tmp_path, write_tampered_policy(tmp_path / "inf.pt", base, poison(float("inf"))),
             "NaN or Inf")
    assert "NaN or Inf" in capsys.readouterr().err


def test_refuses_unsupported_architecture(tmp_path, capsys):
    policy = write_policy(tmp_path / "wide.pt", sizes=(146, 200, 4))
    _refused(tmp_path, policy, "not supported by the C runtime")
    err = capsys.readouterr().err
    assert "146-200-4" in err and "<= 128 units" in err


def test_refuses_unsupported_activation(tmp_path):
    base = write_policy(tmp_path / "base.pt")

    def relu(payload):
        payload["actor"]["activation"] = "relu"
    _refused(tmp_path, write_tampered_policy(tmp_path / "relu.pt", base, relu),
             "unsupported activation")


def test_refuses_mismatched_dimensions(tmp_path):
    base = write_policy(tmp_path / "base.pt")

    def shrink(payload):
        payload["actor"]["layer_sizes"] = [146, 64, 32, 4]
    _refused(tmp_path, write_tampered_policy(tmp_path / "dims.pt", base, shrink), "shape")


def test_refuses_missing_and_non_policy_files(tmp_path):
    _refused(tmp_path, tmp_path / "missing.pt", "no such policy file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a policy")
    _refused(tmp_path, junk, "not a readable policy file")


def test_refuses_calibration_with_wrong_dimensions(tmp_path):
    policy = write_policy(tmp_path / "p.pt")
    with pytest.raises(ExportError, match=r"shape \(N, 146\)"):
        export_policy(policy, tmp_path / "out", calibration_obs=np.zeros((10, 18), np.float32))
    assert _no_leftovers(tmp_path, "out")


def test_refuses_unwritable_output(tmp_path):
    policy = write_policy(tmp_path / "p.pt")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cal = synthetic_observations(256, 146, 0)
    with pytest.raises(ExportError, match="cannot write|not a directory"):
        export_policy(policy, blocker / "out", calibration_obs=cal, eval_obs=cal)
    with pytest.raises(ExportError, match="not a directory"):
        export_policy(policy, blocker, calibration_obs=cal, eval_obs=cal)
    assert blocker.read_text() == "x"


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    policy = write_policy(tmp_path / "p.pt")
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cal = synthetic_observations(256, 146, 0)
    with pytest.raises(ExportError, match="not a nanofly export"):
        export_policy(policy, foreign, calibration_obs=cal, eval_obs=cal)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_replacing_an_export_is_atomic(tmp_path, monkeypatch):
    """A failure while writing the new export leaves the previous one complete and untouched."""
    import nanofly.export.exporter as ex
    p1 = write_policy(tmp_path / "p1.pt", seed=1)
    p2 = write_policy(tmp_path / "p2.pt", seed=2)
    out = tmp_path / "out"
    first = quick_export(p1, out, num_calibration=512, num_eval=256)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    real_open = open
    written = []

    def flaky_open(path, mode="r", *a, **k):
        if "w" in mode and ".out.tmp-" in str(path):
            written.append(path)
            if len(written) == 4:
                raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr("builtins.open", flaky_open)
    with pytest.raises(ExportError, match="No space left"):
        quick_export(p2, out, num_calibration=512, num_eval=256)
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    # and a successful export does replace it
    second = quick_export(p2, out, num_calibration=512, num_eval=256)
    assert second["blobs"]["f32"]["sha256"] != first["blobs"]["f32"]["sha256"]
    assert json.loads((out / "manifest.json").read_text()) == second


def test_snapped_weights_come_back_unchanged_from_the_quantizer():
    from nanofly.export.quantize import quantize_mlp
    from nanofly.policy.actor import init_actor
    from nanofly.policy.int8_grid import input_multipliers, layer_input_steps, snap_to_int8_grid

    actor = init_actor([146, 64, 64, 4], 3)
    weights = [lin.weight.detach().numpy() * 3 for lin in actor.linear_layers()]
    biases = [lin.bias.detach().numpy() for lin in actor.linear_layers()]
    obs = synthetic_observations(2048, 146, 5)
    mult = input_multipliers(weights[0], obs)
    snapped = snap_to_int8_grid(weights, mult)
    assert not np.array_equal(snapped[0], weights[0])
    assert all(np.array_equal(a, b) for a, b in zip(snap_to_int8_grid(snapped, mult), snapped))
    for rounding in ("nearest", "gptq"):
        qm = quantize_mlp(snapped, biases, obs, rounding=rounding, bias_correction=False,
                          input_multiplier=mult)
        for q, s, step, w in zip(qm.q_weights, qm.scales, layer_input_steps(snapped, mult), snapped):
            np.testing.assert_allclose(q * s.astype(np.float64)[:, None] / step[None, :], w,
                                       rtol=1e-6, atol=0)


@pytest.mark.parametrize("grid, why", [({"input_multiplier": [2.0] * 10}, "146 positive powers of two"),
                                       ({"input_multiplier": [3.0] * 146}, "146 positive powers of two"),
                                       ({"scales": []}, "malformed int8_grid")])
def test_export_refuses_a_malformed_recorded_int8_grid(tmp_path, grid, why):
    base = write_policy(tmp_path / "base.pt")
    bad = write_tampered_policy(tmp_path / "bad.pt", base,
                                lambda p: p["extra"].__setitem__("int8_grid", grid))
    with pytest.raises(ExportError, match=why):
        quick_export(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
