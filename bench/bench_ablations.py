"""Ablation table: train with each of the paper's components switched off (one seed each by
default) and report the hover-suite figures next to the full method.

    python bench/bench_ablations.py [--seeds 0] [--steps N]   (default: the training default)

Prints one JSON object: per variant and seed the training wall time, hover success rate,
termination rate and final position RMSE. The baseline in the same run is the full method.
The trainings run through ``nanofly sweep``'s Python API (two at a time on 4 cores, and so on).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# variant -> the sweep option that makes it (the full method: none)
VARIANTS = {
    "full": None,
    "no_disturbance": "no_disturbance",
    "no_observation_noise": "no_observation_noise",
    "no_asymmetric_critic": "no_asymmetric_critic",
    "no_rotor_delay": "no_rotor_delay",
    "no_action_history": "no_action_history",
    "no_curriculum": "no_curriculum",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="total env steps (default: TrainConfig's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cpus-per-trial", type=int, default=2,
                        help="CPUs per training (nanofly sweep --cpus-per-trial)")
    args = parser.parse_args(argv)

    from nanofly.sweep import Trial, sweep_trainings

    names = [name for name in args.variants for _ in args.seeds]
    trials = [Trial(seed, ((VARIANTS[name], True),) if VARIANTS[name] else ())
              for name in args.variants for seed in args.seeds]
    result = sweep_trainings(Path(tempfile.mkdtemp(prefix="nanofly-ablations-")),
                             seeds=args.seeds, trials=trials,
                             options={"steps": args.steps} if args.steps else {},
                             cpus_per_trial=args.cpus_per_trial, figure8_episodes=0,
                             plots=False, progress=False, write_summary=False)
    out: dict = {"steps": args.steps, "results": {name: [] for name in args.variants}}
    for name, r in zip(names, result["trials"]):
        if r["status"] != "ok":
            out["results"][name].append({"seed": r["seed"], "error": r["error"]})
            continue
        row = {"seed": r["seed"], "train_wall_time_s": r["train_wall_time_s"],
               "success_rate": r["hover_success"], "termination_rate": r["hover_termination_rate"],
               "final_position_rmse_m": r["hover_final_position_rmse_m"],
               "mean_steps_before_termination": r["hover_mean_steps_before_termination"]}
        out["results"][name].append(row)
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
