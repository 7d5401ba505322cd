"""Training beside busy processes: ``python bench/bench_busy_machine.py [--steps 100000] [--repeats 2]``.

Runs the default training configuration (seed 0, no checkpoint selection) for ``--steps``
environment steps in a fresh process, beside 0, 1 and 2 processes that each keep a core busy
(a Python spin loop), with the update-thread settings a user can pick: two threads that fall
back to one while that is faster (the default, ``adapt_update_threads``), two threads always,
and one thread. Every setting gives the same weights (checked: the runs' parameter hashes must
be equal, or the script exits 1). Prints one JSON object: wall seconds of the training loop
per run, medians, and each median as a ratio to the one-thread median beside the same load
(the baseline, in the same run). A run that takes longer than ``--timeout`` seconds is
recorded as that many seconds and marked.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"adaptive (default)": {"update_threads": 2, "adapt_update_threads": True},
            "two threads always": {"update_threads": 2, "adapt_update_threads": False},
            "one thread": {"update_threads": 1}}

CHILD = """
import hashlib, json, sys, time
from nanofly.train.td3 import TrainConfig, Trainer, run_loop
cfg = TrainConfig.from_dict({"seed": 0, "total_env_steps": %d, "selection_start": 10**9, **%r})
trainer = Trainer(cfg)
start = time.perf_counter()
run_loop(trainer)
wall = time.perf_counter() - start
digest = hashlib.sha256(trainer.core.params.tobytes() + trainer.core.targets.tobytes()).hexdigest()
print(json.dumps({"wall_s": round(wall, 2), "hash": digest[:16],
                  "one_thread_updates": trainer.metrics()["one_thread_updates"],
                  "updates": trainer.state.critic_updates}))
"""


def run(steps: int, setting: dict, timeout: float) -> dict:
    code = CHILD % (steps, setting)
    try:  # one BLAS thread unless the user set it, as `nanofly train` does
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout, env={"OPENBLAS_NUM_THREADS": "1", **os.environ})
    except subprocess.TimeoutExpired:
        return {"wall_s": timeout, "timed_out": True}
    if out.returncode != 0:
        raise SystemExit(f"training failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2],
                        help="numbers of busy processes to run beside training")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    result: dict = {"steps": args.steps, "loads": {}}
    hashes = set()
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(busy)]
        try:
            time.sleep(0.5)
            runs: dict[str, list] = {name: [] for name in SETTINGS}
            for _ in range(args.repeats):  # settings alternate: the machine's speed drifts
                for name, setting in SETTINGS.items():
                    r = run(args.steps, setting, args.timeout)
                    runs[name].append(r)
                    if "hash" in r:
                        hashes.add(r["hash"])
                    print(json.dumps({"busy": busy, "setting": name, **r}), file=sys.stderr)
        finally:
            for p in spinners:
                p.kill()
        medians = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
        result["loads"][f"{busy} busy"] = {
            "wall_s": {name: [r["wall_s"] for r in rs] for name, rs in runs.items()},
            "one_thread_updates": {name: [r.get("one_thread_updates") for r in rs]
                                   for name, rs in runs.items()},
            "median_s": medians,
            "ratio_to_one_thread": {name: round(m / medians["one thread"], 2)
                                    for name, m in medians.items()}}
    result["same_weights"] = len(hashes) == 1
    print(json.dumps(result))
    return 0 if len(hashes) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
