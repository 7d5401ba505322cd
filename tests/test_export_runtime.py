"""The C runtime on the host: accuracy against torch, strict compilation, sanitizers, tanh."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from nanofly.export import runtime
from nanofly.export.quantize import simulate_int8, quantize_mlp
from nanofly.export.runtime import CModel, c_tanh
from nanofly.export.exporter import export_policy
from nanofly.policy.actor import load_policy

from helpers.exports import observations_for, write_policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 146-64-64-4 actor exported with calibration observations from the simulator when
    nanofly.sim is available (synthetic ones otherwise), plus a disjoint accuracy set of
    10 000 observations from the same source (torch reference attached)."""
    tmp = tmp_path_factory.mktemp("export_runtime")
    policy = write_policy(tmp / "policy.pt", seed=1)
    cal, cal_source = observations_for(policy, 2048, seed=5, dim=146)
    obs, source = observations_for(policy, 10_000, seed=7, dim=146)
    export_policy(policy, tmp / "export", calibration_obs=(cal, cal_source),
                  eval_obs=(obs, source))
    return policy, tmp / "export", obs, source


@pytest.fixture(scope="module")
def accuracy_set(exported):
    policy, _, obs, source = exported
    actor, _ = load_policy(policy)
    with torch.no_grad():
        ref = actor(torch.from_numpy(obs)).numpy()
    return obs, ref, source


def test_c_f32_matches_torch_on_10000_observations(exported, accuracy_set):
    out = exported[1]
    obs, ref, source = accuracy_set
    act = CModel((out / "policy_f32.bin").read_bytes())(obs)
    err = np.abs(act - ref).max()
    print(f"c-f32 max |delta| = {err:.2e} over {len(obs)} {source} observations")
    assert err <= 1e-5


def test_c_int8_matches_torch_on_10000_observations(exported, accuracy_set):
    out = exported[1]
    obs, ref, source = accuracy_set
    act = CModel((out / "policy_int8.bin").read_bytes())(obs)
    err = np.abs(act - ref).max()
    print(f"c-int8 max |delta| = {err:.2e} over {len(obs)} {source} observations")
    assert err <= 0.02
    assert err > 0  # it is really quantized


def test_int8_c_equals_numpy_model_of_the_format(exported, accuracy_set):
    """Quantizer's NumPy model of the int8 arithmetic and the C kernels agree (packing, integer
    dot products, input quantization, Q15 hand-over)."""
    policy = exported[0]
    obs = accuracy_set[0][:2000]
    actor, _ = load_policy(policy)
    ws = [lin.weight.detach().numpy() for lin in actor.linear_layers()]
    bs = [lin.bias.detach().numpy() for lin in actor.linear_layers()]
    qm = quantize_mlp(ws, bs, obs, rounding="nearest")
    from nanofly.export.blob import pack_int8
    blob = pack_int8(qm.input_multiplier, qm.q_weights, qm.scales, qm.biases)
    # the NumPy model uses np.tanh (the C rational differs by < 4e-7), which can move a Q15
    # activation by one step (3e-5); a packing or integer error would be far larger
    np.testing.assert_allclose(CModel(blob)(obs), simulate_int8(qm, obs), atol=1e-4)


def test_batch_equals_single_rows(exported):
    out = exported[1]
    obs = np.random.default_rng(0).uniform(-1, 1, (7, 146)).astype(np.float32)
    for name in ("policy_f32.bin", "policy_int8.bin"):
        m = CModel((out / name).read_bytes())
        batch = m(obs)
        rows = np.concatenate([m(obs[i:i + 1]) for i in range(len(obs))])
        np.testing.assert_array_equal(batch, rows)


def test_extreme_observations_are_handled(exported):
    """Huge, infinite and NaN inputs: int8 saturates (NaN -> 0) and stays finite in [-1, 1];
    float32 stays in [-1, 1] or gives NaN (NaN in, or inf - inf inside a dot product)."""
    out = exported[1]
    obs = np.zeros((4, 146), np.float32)
    obs[0] = 1e30
    obs[1] = -np.inf
    obs[2, :3] = np.nan
    obs[3, ::2] = 3e38
    i8 = CModel((out / "policy_int8.bin").read_bytes())(obs)
    assert np.isfinite(i8).all() and np.abs(i8).max() <= 1
    f32 = CModel((out / "policy_f32.bin").read_bytes())(obs)
    assert np.isnan(f32[2]).all()
    assert np.all(np.isnan(f32) | (np.abs(f32) <= 1))


def test_tanh_accuracy_and_limits():
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, 1e-30, -1e-30, 8.999999, 9.0,
                                                       1e30, -1e30]]).astype(np.float32)
    y = c_tanh(x)
    err = np.abs(y.astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7
    assert np.abs(y).max() <= 1.0
    assert c_tanh(np.array([np.inf]))[0] == 1 and c_tanh(np.array([-np.inf]))[0] == -1
    assert np.isnan(c_tanh(np.array([np.nan]))[0])


def _compile(cc, out_dir, extra=()):
    exe = out_dir / f"strict_{Path(cc).name}"
    cmd = [cc, *runtime.STRICT_FLAGS, "-O2", *extra, f"-I{out_dir}",
           *map(str, runtime.runtime_sources(out_dir)), str(runtime.DRIVER_C),
           str(out_dir / "policy_f32.c"), str(out_dir / "policy_int8.c"), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return exe


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_exported_c_compiles_with_strict_flags(exported, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    out = exported[1]
    # the exported runtime, both weight arrays and the host driver, warnings as errors
    _compile(cc, out)


def test_runtime_under_address_and_undefined_sanitizers(exported, accuracy_set, tmp_path):
    """The accuracy check again, with the runtime built with -fsanitize=address,undefined
    (any finding aborts the driver), plus extreme inputs and refused blobs."""
    out = exported[1]
    exe = runtime.build_driver(sanitize=True)
    obs, ref, _ = accuracy_set
    obs = obs[:3000]
    extreme = np.zeros((3, 146), np.float32)
    extreme[0] = np.inf
    extreme[1] = np.nan
    extreme[2] = -1e38
    (tmp_path / "obs.bin").write_bytes(np.concatenate([obs, extreme]).tobytes())
    for name, bound in (("policy_f32.bin", 1e-5), ("policy_int8.bin", 0.02)):
        res = subprocess.run([str(exe), str(out / name), str(tmp_path / "obs.bin"),
                              str(tmp_path / "act.bin")], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "rc=0" in res.stdout
        act = np.fromfile(tmp_path / "act.bin", np.float32).reshape(-1, 4)
        assert np.abs(act[:len(obs)] - ref[:len(obs)]).max() <= bound
    bad = bytearray((out / "policy_int8.bin").read_bytes())
    bad[100] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    res = subprocess.run([str(exe), str(tmp_path / "bad.bin")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "rc=-4" in res.stdout, res.stdout + res.stderr
    (tmp_path / "short.bin").write_bytes(bytes(bad[:10]))
    res = subprocess.run([str(exe), str(tmp_path / "short.bin")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "rc=-3" in res.stdout, res.stdout + res.stderr


TANH_SWEEP_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
float nanofly_tanhf(float x);
int main(void)
{   /* every float32 in [1, 10]: error against double tanh, |y| <= 1, odd symmetry */
    uint32_t u;
    double worst = 0.0;
    for (u = 0x3F800000u; u <= 0x41200000u; ++u) {
        float x, y;
        double e;
        memcpy(&x, &u, sizeof x);
        y = nanofly_tanhf(x);
        e = fabs((double)y - tanh((double)x));
        if (e > worst) worst = e;
        if (y > 1.0f || nanofly_tanhf(-x) != -y) return 1;
    }
    printf("%.9e\n", worst);
    return 0;
}
"""


def test_tanh_exhaustive_on_1_to_10(tmp_path):
    src = tmp_path / "sweep.c"
    src.write_text(TANH_SWEEP_C)
    exe = tmp_path / "sweep"
    subprocess.run(["gcc", "-O2", "-std=c99", "-ffp-contract=off", f"-I{runtime.C_DIR}",
                    str(src), *map(str, runtime.runtime_sources()), "-o", str(exe), "-lm"],
                   check=True, timeout=120)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, "tanh above 1 or not odd"
    assert float(res.stdout) <= 4e-7


def test_manifest_separates_saturated_inputs_from_rounding(tmp_path):
    """Evaluation rows beyond the calibrated int8 input range are counted, and the error
    without them is reported, so a failed bound says whether saturation or rounding did it."""
    import json

    policy = write_policy(tmp_path / "policy.pt", seed=1)
    cal, cal_source = observations_for(policy, 1024, seed=5, dim=146)
    obs, source = observations_for(policy, 1000, seed=7, dim=146)
    obs = obs.copy()
    obs[3, 15] = 1e5  # an angular velocity no calibration row came near
    export_policy(policy, tmp_path / "export", calibration_obs=(cal, cal_source),
                  eval_obs=(obs, source))
    int8 = json.loads((tmp_path / "export" / "manifest.json").read_text())["errors"]["c_int8"]
    assert int8["saturated_observations"] == 1
    actor, _ = load_policy(policy)
    with torch.no_grad():
        ref = actor(torch.from_numpy(obs)).numpy()
    act = CModel((tmp_path / "export" / "policy_int8.bin").read_bytes())(obs)
    others = np.delete(np.arange(len(obs)), 3)
    assert int8["max_abs_unsaturated"] == pytest.approx(
        float(np.abs(act[others] - ref[others]).max()), rel=1e-6)
    assert int8["max_abs_unsaturated"] <= int8["max_abs"]
