"""`VecEnv.step` when a trained policy flies the vehicles, next to bench_sim.py's open-loop
actions in the same run.

    python bench/bench_env_closed_loop.py [--policy models/crazyflie_hover/policy.pt]
                                          [--envs 65536] [--steps 500] [--repeats 2]

bench_sim.py steps every environment with a fixed hover action plus 0.05 N(0, 1) noise,
open loop: most episodes crash within ~1 s, so ~2.2 % of the environments reset in every step,
and a reset costs ~0.8 us (docs/benchmarks.md). Under a hovering policy most episodes run their
500 steps, so far fewer reset. This bench times only `VecEnv.step` (the policy's forward pass,
in torch on one thread, runs outside the timed region) over a window of `--steps` steps after a
500-step warm-up, on one thread, for both kinds of actions, and prints one JSON object: env
steps per second, the fraction of environment steps that ended an episode, and the ratio of the
two rates. A 500-step window holds every surviving episode's truncation exactly once, so its
average reset rate is the steady state's even though the episodes start together.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_sim import bench_actions
from nanofly.sim.env import VecEnv

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "crazyflie_hover" / "policy.pt"


def timed_window(env: VecEnv, obs: np.ndarray, actions_for, steps: int):
    """(last observation, seconds inside env.step, fraction of env steps that ended an episode)
    over ``steps`` steps from ``obs``."""
    spent, ended = 0.0, 0
    for _ in range(steps):
        actions = actions_for(obs)
        start = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(actions)
        spent += time.perf_counter() - start
        ended += int(np.count_nonzero(terminated | truncated))
    return obs, spent, ended / (steps * env.num_envs)


def run(kind: str, n: int, steps: int, act, preset, mdp_config, seed: int) -> dict:
    env = VecEnv(n, preset, seed=seed, config=mdp_config)
    obs, _ = env.reset()
    if kind == "policy":
        actions_for = act
    else:
        fixed = bench_actions(env.hover_action, n, seed)
        actions_for = lambda obs: fixed  # noqa: E731
    obs, _, _ = timed_window(env, obs, actions_for, 500)  # warm-up: past the first truncations
    _, spent, reset_fraction = timed_window(env, obs, actions_for, steps)
    return {"env_steps_per_s": n * steps / spent, "reset_fraction": reset_fraction}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(DEFAULT_POLICY))
    parser.add_argument("--envs", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from nanofly.train.evaluate import TorchPolicy, policy_mdp

    act = TorchPolicy(Path(args.policy))  # the policy file's actor (torch, one thread)
    preset, mdp = policy_mdp(act.payload)  # the evaluation MDP: noise and disturbances on
    VecEnv(64, preset, seed=0, config=mdp).reset()  # load the kernels before timing
    runs: dict[str, list] = {"open_loop": [], "policy": []}
    for r in range(args.repeats):
        for kind in ("open_loop", "policy"):
            runs[kind].append(run(kind, args.envs, args.steps, act, preset, mdp, args.seed + r))
    best = {k: max(v, key=lambda x: x["env_steps_per_s"]) for k, v in runs.items()}
    result = {
        "envs": args.envs, "steps": args.steps, "threads": 1, "policy": str(args.policy),
        "open_loop": {"env_steps_per_s": round(best["open_loop"]["env_steps_per_s"]),
                      "reset_fraction": round(best["open_loop"]["reset_fraction"], 5)},
        "policy_driven": {"env_steps_per_s": round(best["policy"]["env_steps_per_s"]),
                          "reset_fraction": round(best["policy"]["reset_fraction"], 5)},
        "policy_over_open_loop": round(best["policy"]["env_steps_per_s"]
                                       / best["open_loop"]["env_steps_per_s"], 3),
        "all_runs": runs,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
