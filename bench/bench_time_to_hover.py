"""Time to hover: wall time from process start to a saved policy, for several seeds, with warm
and cold numba caches; each policy is then checked with the hover suite (1000 episodes).

    python bench/bench_time_to_hover.py [--seeds 0 1 2 3 4] [--cold] [--extra-args "..."]

Prints one JSON object: per seed the wall time (launch of ``nanofly train`` to policy.pt on
disk), the training wall time, and the hover success rate; medians; and how many seeds pass
(>= 95% success). The seeds run through ``nanofly sweep``'s Python API, one at a time. The
baseline in the same run is the paper's figure (18 s on an M1) as a ratio; the reference
implementation itself is not installed here.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAPER_SECONDS = 18.0


def run_seeds(seeds: list[int], out: Path, cold: bool, extra: list[str]) -> list[dict]:
    """The seeds' runs through nanofly sweep's Python API, one at a time (each trial reserves
    every CPU: a time to hover is measured on an otherwise idle machine)."""
    from nanofly.sweep import options_from_train_args, sweep_trainings
    from nanofly.train.td3_core import usable_cpus

    shutil.rmtree(out, ignore_errors=True)
    result = sweep_trainings(out, seeds=seeds, options=options_from_train_args(extra),
                             cpus_per_trial=usable_cpus(), cold_numba_cache=cold,
                             figure8_episodes=0, plots=False, progress=False,
                             write_summary=False)
    rows = []
    for r in result["trials"]:
        if r["status"] != "ok":
            rows.append({"seed": r["seed"], "error": r["error"]})
            continue
        rows.append({"seed": r["seed"], "process_start_to_policy_s": r["time_to_policy_s"],
                     "train_wall_time_s": r["train_wall_time_s"], "env_steps": r["env_steps"],
                     "selected_env_steps": r["selected_env_steps"],
                     "hover_success_rate": r["hover_success"],
                     "final_position_rmse_m": r["hover_final_position_rmse_m"],
                     "passed": bool(r["hover_passed"])})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cold", action="store_true", help="also measure with an empty numba cache")
    parser.add_argument("--out", default=None, help="where run directories go (default: a temp dir)")
    parser.add_argument("--extra-args", default="", help="extra arguments for nanofly train")
    args = parser.parse_args(argv)
    out_root = Path(args.out or tempfile.mkdtemp(prefix="nanofly-tth-"))
    extra = shlex.split(args.extra_args)
    result: dict = {"seeds": args.seeds, "paper_seconds_m1": PAPER_SECONDS, "warm": [], "cold": []}
    # warm the cache: past the first critic (15 k) and actor (30 k) updates, then a short hover
    # suite (the selection checks' kernels), so the first "warm" seed compiles nothing
    subprocess.run([sys.executable, "-m", "nanofly", "train", "--seed", str(args.seeds[0]),
                    "--out", str(out_root / "warm-up"), "--json", "--no-plots", *extra,
                    "--steps", "40000", "--eval-episodes", "20"], capture_output=True)
    result["warm"] = run_seeds(args.seeds, out_root / "warm", False, extra)
    if args.cold:
        result["cold"] = run_seeds(args.seeds, out_root / "cold", True, extra)
    for kind in ("warm", "cold"):
        runs = [r for r in result[kind] if "error" not in r]
        if runs:
            med = statistics.median(r["process_start_to_policy_s"] for r in runs)
            result[f"{kind}_median_s"] = med
            result[f"{kind}_ratio_vs_paper"] = round(med / PAPER_SECONDS, 3)
            result[f"{kind}_seeds_passing"] = sum(r["passed"] for r in runs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
