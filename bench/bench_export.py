"""Export stage benchmark: prints one JSON object.

Instructions per inference of the float32 and int8 C runtime and of the naive baseline (plain
loops over row-major float weights + newlib tanhf, -O2) on QEMU netduinoplus2 with -icount
shift=0, all built and run in the same invocation; flash and worst-case stack from
arm-none-eabi-size / -fstack-usage; host backend throughput (onnx, c-f32, c-int8 against torch).

    python bench/bench_export.py [--policy POLICY_OR_EXPORT_DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nanofly.export.mcu import mcu_figures

MCU_MD_BASELINE = 82_025  # the naive float32 146-64-64-4 (newlib tanhf, -O2) as first measured
LIMIT_F32_INSTRUCTIONS = 40_000
LIMIT_INT8_INSTRUCTIONS = 20_000


def _observations(policy_path: Path | None, n: int, seed: int, dim: int) -> tuple[np.ndarray, str]:
    """Simulator observations when the simulator and a policy are available, else synthetic
    ones (labelled: they only feed instruction counts and output comparisons here)."""
    if policy_path is not None:
        from nanofly.export.calibration import (CalibrationUnavailable,
                                                collect_calibration_observations)
        try:
            return collect_calibration_observations(policy_path, n, seed), "simulator"
        except CalibrationUnavailable:
            pass
    from nanofly.export.calibration import synthetic_observations
    return synthetic_observations(n, dim, seed), "synthetic"


def _host_throughput(export_dir: Path, obs: np.ndarray, actor, repeats: int = 5) -> dict:
    import torch
    from nanofly.export.backends import make_backend

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
    """Export ``policy`` (or a random actor of the default observation's size, 64-64 hidden)
    and measure everything."""
    from nanofly.policy.actor import init_actor, load_policy, save_policy
    from nanofly.policy.observation import ACTION_DIM, DEFAULT_HISTORY_LENGTH, observation_record
    from nanofly.export.exporter import export_policy

    with tempfile.TemporaryDirectory(prefix="nanofly-bench-export-") as tmp:
        tmp = Path(tmp)
        observation = observation_record(DEFAULT_HISTORY_LENGTH)
        sizes = [observation["dim"], 64, 64, ACTION_DIM]
        source = f"random {'-'.join(map(str, sizes))} actor (init_actor seed {seed})"
        if policy is None:
            policy_path = tmp / "policy.pt"
            save_policy(policy_path, init_actor(sizes, seed),
                        observation=observation, action={"dim": ACTION_DIM},
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="policy.pt or export dir (default: random 146-64-64-4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(run_bench(args.policy, args.seed), indent=2))


if __name__ == "__main__":
    main()
