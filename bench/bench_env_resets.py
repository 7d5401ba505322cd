"""Where a `VecEnv.step` spends its time as episodes end: each step's wall time per env next to
the fraction of envs that terminated or truncated in it, from a fresh reset, with the actions of
bench_sim.py (``bench_actions``: hover action + 0.05 N(0, 1), open loop,
so most episodes crash within ~1 s).

    python bench/bench_env_resets.py [--envs 65536] [--steps 120] [--seed 0]

Prints one JSON object: per step the time in ns per env and the done fraction; the median time
of the steps without resets (the baseline in the same run) and of the steps where more than 1 %
of the envs reset, their ratio, and the implied cost of one reset in ns.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench_sim import bench_actions
from nanofly.sim.env import VecEnv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.envs
    env = VecEnv(n, seed=args.seed)
    env.reset()
    actions = bench_actions(env.hover_action, n, args.seed)
    env.step(actions)  # compile / load the kernels
    env.reset(seed=args.seed)
    ns_per_env, done_fraction = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(actions)
        ns_per_env.append((time.perf_counter() - t) / n * 1e9)
        done_fraction.append(float((terminated | truncated).mean()))
    ns = np.array(ns_per_env)
    done = np.array(done_fraction)
    busy_steps = done > 0.01
    quiet, busy = ns[done == 0.0], ns[busy_steps]
    result = {"envs": n, "steps": args.steps,
              "ns_per_env": np.round(ns, 1).tolist(), "done_fraction": np.round(done, 4).tolist(),
              "steps_without_resets": int(quiet.size), "steps_with_over_1pct_resets": int(busy.size)}
    if quiet.size and busy.size:
        extra = float(np.median(busy) - np.median(quiet))
        result.update(
            median_ns_per_env_without_resets=round(float(np.median(quiet)), 1),
            median_ns_per_env_over_1pct_resets=round(float(np.median(busy)), 1),
            ratio=round(float(np.median(busy) / np.median(quiet)), 3),
            mean_done_fraction_of_those=round(float(done[busy_steps].mean()), 4),
            implied_ns_per_reset=round(extra / float(done[busy_steps].mean()), 0))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
