"""Ablation table: train with each of the paper's components switched off (one seed each by
default) and report the hover-suite figures next to the full method.

    python bench/bench_ablations.py [--seeds 0] [--steps N]   (default: the training default)

Prints one JSON object: per variant and seed the training wall time, hover success rate,
termination rate and final position RMSE. The baseline in the same run is the full method.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "full": [],
    "no_disturbance": ["--no-disturbance"],
    "no_observation_noise": ["--no-observation-noise"],
    "no_asymmetric_critic": ["--no-asymmetric-critic"],
    "no_rotor_delay": ["--no-rotor-delay"],
    "no_action_history": ["--no-action-history"],
    "no_curriculum": ["--no-curriculum"],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="total env steps (default: TrainConfig's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    out: dict = {"steps": args.steps, "results": {}}
    root = Path(tempfile.mkdtemp(prefix="nanofly-ablations-"))
    for name in args.variants:
        out["results"][name] = []
        for seed in args.seeds:
            run = root / f"{name}-{seed}"
            proc = subprocess.run([sys.executable, "-m", "nanofly", "train", "--seed", str(seed),
                                   *(["--steps", str(args.steps)] if args.steps else []),
                                   "--out", str(run), "--json",
                                   "--no-plots", *VARIANTS[name]], capture_output=True, text=True)
            if proc.returncode != 0:
                out["results"][name].append({"seed": seed, "error": proc.stderr[-1000:]})
                continue
            s = json.loads(proc.stdout)
            h = s["eval"]["hover"]
            row = {"seed": seed, "train_wall_time_s": s["train_wall_time_s"],
                   "success_rate": h["success_rate"], "termination_rate": h["termination_rate"],
                   "final_position_rmse_m": h["final_position_rmse_m"],
                   "mean_steps_before_termination": h["mean_steps_before_termination"]}
            out["results"][name].append(row)
            print(name, json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
