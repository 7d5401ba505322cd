"""Export benchmark: target figures (flash, stack, instructions per inference on QEMU) and host
backend throughput, as one JSON-able dict. Used by ``nanofly bench export`` and
bench/bench_export.py."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import mcu

MCU_MD_BASELINE = 82_025  # the naive float32 146-64-64-4 (newlib tanhf, -O2) as first measured
LIMIT_F32_INSTRUCTIONS = 40_000
LIMIT_INT8_INSTRUCTIONS = 20_000


def _observations(policy_path: Path | None, n: int, seed: int, dim: int) -> tuple[np.ndarray, str]:
    """Simulator observations when the simulator and a policy are available, else synthetic
    ones (labelled: they only feed instruction counts and output comparisons here)."""
    if policy_path is not None:
        from .calibration import CalibrationUnavailable, collect_calibration_observations
        try:
            return collect_calibration_observations(policy_path, n, seed), "simulator"
        except CalibrationUnavailable:
            pass
    from .calibration import synthetic_observations
    return synthetic_observations(n, dim, seed), "synthetic"


def _stress_rows(obs: np.ndarray) -> np.ndarray:
    """Rows that exercise saturation paths: huge values and a NaN."""
    big = np.full_like(obs[:1], 1e6)
    big[0, ::2] = -1e6
    nan = obs[:1].copy()
    nan[0, 0] = np.nan
    return np.concatenate([big, nan])


def mcu_figures(export_dir, obs: np.ndarray | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Flash, stack and instructions per inference of an export directory on the target, and
    whether the firmware's actions equal the host C runtime's bit for bit."""
    from .runtime import CModel
    export_dir = Path(export_dir)
    report = mcu.size_and_stack_report(export_dir)
    f32_blob = (export_dir / "policy_f32.bin").read_bytes()
    int8_blob = (export_dir / "policy_int8.bin").read_bytes()
    source = "given"
    if obs is None:
        from .calibration import synthetic_observations
        dim = CModel(f32_blob).input_dim
        obs, source = synthetic_observations(6, dim, seed), "synthetic"
    rows = np.concatenate([obs, _stress_rows(obs)]).astype(np.float32)
    run = mcu.run_benchmark(export_dir, rows)
    equal = {}
    for tag, blob in (("f32", f32_blob), ("int8", int8_blob)):
        host = CModel(blob)(rows)
        target = run[tag]["actions"]
        same = (host.view(np.uint32) == target.view(np.uint32)) | (np.isnan(host) & np.isnan(target))
        equal[tag] = bool(same.all())
    counts = {k: int(statistics.median(run[k]["instructions"][:len(obs)]))
              for k in ("f32", "int8", "baseline")}
    return {
        "instructions_per_inference": counts,
        "instructions_spread": {k: [min(run[k]["instructions"]), max(run[k]["instructions"])]
                                for k in ("f32", "int8", "baseline")},
        "speedup_vs_baseline_same_run": {k: round(counts["baseline"] / counts[k], 2)
                                         for k in ("f32", "int8")},
        "init_instructions": {k: v["instructions"] for k, v in run["init"].items()},
        "tanh_instructions_per_call": run["tanh_instructions_per_call"],
        "stack_measured_bytes": run["stack_measured"],
        "target_equals_host_bitwise": equal,
        "size_and_stack": report,
        "observations": int(len(rows)),
        "observations_source": f"{source} + 2 stress rows (+-1e6, NaN)",
    }


def _host_throughput(export_dir: Path, obs: np.ndarray, actor, repeats: int = 5) -> dict:
    import torch
    from .backends import make_backend

    def best_rate(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(obs)
            times.append(time.perf_counter() - t)
        return len(obs) / statistics.median(times)

    torch.set_num_threads(1)
    with torch.no_grad():
        rates = {"torch": best_rate(lambda o: actor(torch.from_numpy(o)).numpy())}
    for spec in ("onnx", "c-f32", "c-int8"):
        with make_backend(spec, export_dir) as b:
            b(obs[:10])
            rates[spec] = best_rate(b)
    return {"observations_per_second": {k: round(v) for k, v in rates.items()},
            "ratio_vs_torch": {k: round(v / rates["torch"], 2) for k, v in rates.items()},
            "batch": len(obs), "repeats": repeats, "threads": 1}


def run_bench(policy=None, seed: int = 0) -> dict[str, Any]:
    """Export ``policy`` (or a random 146-64-64-4 actor) and measure everything."""
    from nanofly.policy.actor import init_actor, load_policy, save_policy
    from .exporter import export_policy

    with tempfile.TemporaryDirectory(prefix="nanofly-bench-export-") as tmp:
        tmp = Path(tmp)
        source = "random 146-64-64-4 actor (init_actor seed %d)" % seed
        if policy is None:
            policy_path = tmp / "policy.pt"
            save_policy(policy_path, init_actor([146, 64, 64, 4], seed),
                        observation={"dim": 146}, action={"dim": 4},
                        vehicle={"preset": "crazyflie_paper"})
        else:
            policy_path = Path(policy)
            source = str(policy_path)
        if policy_path.is_dir():
            export_dir = policy_path
            actor = None
        else:
            actor, _ = load_policy(policy_path)
            dim = actor.layer_sizes[0]
            cal, cal_src = _observations(policy_path, 4096, seed, dim)
            ev, ev_src = _observations(policy_path, 10_000, seed + 1, dim)
            export_dir = tmp / "export"
            export_policy(policy_path, export_dir, calibration_obs=(cal, cal_src),
                          eval_obs=(ev, ev_src), seed=seed)
        import json
        manifest = json.loads((export_dir / "manifest.json").read_text())
        rows, rows_src = _observations(None if actor is None else policy_path, 6, seed + 2,
                                       manifest["input_dim"])
        figures = mcu_figures(export_dir, rows)
        counts = figures["instructions_per_inference"]
        result = {
            "what": "instructions per inference, QEMU netduinoplus2 -icount shift=0 (TIM2)",
            "policy": source,
            "layer_sizes": manifest["layer_sizes"],
            "instructions": counts,
            "limits": {"f32": LIMIT_F32_INSTRUCTIONS, "int8": LIMIT_INT8_INSTRUCTIONS},
            "within_limits": {"f32": counts["f32"] <= LIMIT_F32_INSTRUCTIONS,
                              "int8": counts["int8"] <= LIMIT_INT8_INSTRUCTIONS},
            "baseline_same_run": counts["baseline"],
            "baseline_mcu_md": MCU_MD_BASELINE,
            "ratio_vs_baseline": figures["speedup_vs_baseline_same_run"],
            "mcu": figures,
            "accuracy": {k: manifest["errors"][k]["max_abs"] for k in ("onnx", "c_f32", "c_int8")},
            "accuracy_observations": manifest["errors"]["observations"],
            "benchmark_rows": rows_src,
        }
        if actor is not None:
            ev_obs, _ = _observations(policy_path, 10_000, seed + 1, manifest["input_dim"])
            result["host"] = _host_throughput(export_dir, ev_obs, actor)
        return result
