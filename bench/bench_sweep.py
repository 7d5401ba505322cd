"""What a sweep costs: N seeds of the default run through ``nanofly sweep`` (a local Ray, each
trial a ``nanofly train`` process in a Ray task) against the same N ``nanofly train`` runs one
after another, in the same bench run.

    python bench/bench_sweep.py [--seeds 0-9] [--cpus-per-trial 2] [--extra-args "--steps N"]

With ``--cpus-per-trial 2`` (the default) a 2-core machine runs one trial at a time, as the
sequential baseline does: the difference is the sweep's own cost (Ray's start, the task,
collecting the results). Both sides do the same work: the training and ``nanofly train``'s
hover suite; the sweep's figure-eight suite is off. Prints one JSON object: both wall times,
their ratio, and the sweep's overhead per trial in seconds, with and without Ray's start (once
per sweep). On a shared machine the trainings' own times move with the load; the time each
side spends outside its ``nanofly train`` processes does not, and is given per trial too.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def trained(proc: subprocess.CompletedProcess) -> bool:
    """Trained and saved: exit status 0, or 1 with the summary printed (the final hover suite
    missed its threshold, as a short run does)."""
    return proc.returncode == 0 or (proc.returncode == 1 and proc.stdout.lstrip().startswith("{"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-9", help="seeds, as nanofly sweep --seeds")
    parser.add_argument("--cpus-per-trial", type=int, default=2)
    parser.add_argument("--extra-args", default="",
                        help="nanofly train options for both sides (e.g. \"--steps 200000\")")
    parser.add_argument("--out", default=None,
                        help="where run directories go (default: a temp dir)")
    args = parser.parse_args(argv)

    from nanofly.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    extra = shlex.split(args.extra_args)
    root = Path(args.out or tempfile.mkdtemp(prefix="nanofly-bench-sweep-"))
    train = [sys.executable, "-m", "nanofly", "train", "--json", "--no-plots"]
    # the numba cache warm for both sides: past both warm-ups and a short hover suite
    warm = subprocess.run([*train, "--out", str(root / "warm"), "--steps", "40000",
                           "--eval-episodes", "20"], capture_output=True, text=True)
    if not trained(warm):
        raise SystemExit(f"the warm-up nanofly train failed: {warm.stderr[-500:]}")

    t0 = time.perf_counter()
    sequential, process_walls = [], []
    for seed in seeds:
        launched = time.perf_counter()
        proc = subprocess.run([*train, "--seed", str(seed), "--out", str(root / f"alone-{seed}"),
                               *extra], capture_output=True, text=True)
        process_walls.append(time.perf_counter() - launched)
        if not trained(proc):
            raise SystemExit(f"nanofly train --seed {seed} failed: {proc.stderr[-500:]}")
        sequential.append(json.loads(proc.stdout)["train_wall_time_s"])
        print(json.dumps({"alone_seed": seed, "train_wall_time_s": sequential[-1]}),
              file=sys.stderr, flush=True)
    sequential_s = time.perf_counter() - t0

    # nanofly train options become sweep options: --steps N -> --set steps=N
    sets = []
    it = iter(extra)
    for option in it:
        if not option.startswith("--"):
            raise SystemExit(f"--extra-args: expected --option VALUE pairs, got {option!r}")
        sets += ["--set", f"{option[2:]}={next(it)}"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nanofly", "sweep", "--out", str(root / "sweep"),
                           "--seeds", args.seeds, "--cpus-per-trial", str(args.cpus_per_trial),
                           "--figure8-episodes", "0", "--no-plots", "--json", *sets],
                          capture_output=True, text=True)
    sweep_s = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"nanofly sweep failed: {proc.stderr[-1000:]}")
    rows = json.loads((root / "sweep" / "results.json").read_text())["trials"]
    ray_start_s = json.loads(proc.stdout)["ray_start_s"]
    # The sweep's own cost, whatever the machine's load does to the trainings: its wall time
    # less Ray's start and less the time its `nanofly train` processes ran (one at a time with
    # --cpus-per-trial 2 on 2 cores); the same for the runs one after another.
    sweep_processes_s = sum(r["train_process_wall_s"] for r in rows)
    print(json.dumps({
        "seeds": seeds, "cpus_per_trial": args.cpus_per_trial, "extra_args": args.extra_args,
        "sequential_wall_s": round(sequential_s, 1), "sweep_wall_s": round(sweep_s, 1),
        "sweep_over_sequential": round(sweep_s / sequential_s, 3),
        "overhead_per_trial_s": round((sweep_s - sequential_s) / len(seeds), 2),
        "sweep_ray_start_s": ray_start_s,
        "overhead_per_trial_after_ray_start_s": round(
            (sweep_s - ray_start_s - sequential_s) / len(seeds), 2),
        "sequential_outside_processes_per_trial_s": round(
            (sequential_s - sum(process_walls)) / len(seeds), 3),
        "sweep_outside_processes_per_trial_s": round(
            (sweep_s - ray_start_s - sweep_processes_s) / len(seeds), 3),
        "train_process_wall_s_alone": [round(w, 2) for w in process_walls],
        "train_process_wall_s_in_sweep": [r["train_process_wall_s"] for r in rows],
        "train_wall_time_s_alone": sequential,
        "train_wall_time_s_in_sweep": [r.get("train_wall_time_s") for r in rows],
        "sweep_trials_ok": sum(r["status"] == "ok" for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
