"""Stable-Baselines3 PPO throughput through nanofly's SB3 adapter
(``nanofly.sim.sb3_vec_env.HoverSB3VecEnv``: all vehicles in one VecEnv call) against SB3's usual
path, ``make_vec_env("nanofly/Hover-v0")`` (a ``DummyVecEnv`` of one Gymnasium env per vehicle,
the baseline), in the same run.

    python bench/bench_sb3.py [--num-envs 16] [--rounds 3] [--steps-per-round 16384]
                              [--torch-threads 1] [--seed 0]

Both run the same PPO (same hyperparameters, CPU, episode statistics from a monitor wrapper)
and learn in alternating rounds of ``--steps-per-round`` environment steps after one warm-up
round each. Also times the environments alone (random actions, no learning). Prints one JSON
object: steps per wall-clock second and per CPU second of this process, per round and their
medians, and the ratios adapter / DummyVecEnv (median of the per-round ratios). On a machine
shared with other work the CPU-second figures are the steadier ones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecMonitor

from nanofly.sim.gym_env import ENV_ID
from nanofly.sim.sb3_vec_env import HoverSB3VecEnv

PPO_SETTINGS = dict(n_steps=256, batch_size=1024, n_epochs=5, gamma=0.99, device="cpu",
                    verbose=0)


def make_envs(kind: str, num_envs: int, seed: int):
    if kind == "adapter":
        return VecMonitor(HoverSB3VecEnv(num_envs, seed=seed))
    return make_vec_env(ENV_ID, n_envs=num_envs, seed=seed)  # DummyVecEnv of Monitor(HoverEnv)


def timed(run, steps: int) -> tuple[float, float]:
    """(steps per wall-clock second, steps per CPU second of this process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def step_randomly(envs, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, envs.num_envs, 4)).astype(np.float32)
    envs.reset()

    def run():
        for action in actions:
            envs.step(action)
    return run


def summary(rates: dict[str, list[float]]) -> dict:
    kinds = list(rates)
    ratios = [a / b for a, b in zip(rates[kinds[0]], rates[kinds[1]])]
    return {"per_round": {kind: [round(r, 1) for r in values] for kind, values in rates.items()},
            "median": {kind: round(statistics.median(values), 1) for kind, values in rates.items()},
            "ratio_adapter_over_dummy_vec_env": round(statistics.median(ratios), 2),
            "ratio_per_round": [round(r, 2) for r in ratios]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=16384)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch CPU threads for both (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("num_envs", "rounds", "steps_per_round", "torch_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.torch_threads)
    kinds = ("adapter", "dummy_vec_env")
    envs = {kind: make_envs(kind, args.num_envs, args.seed) for kind in kinds}
    models = {kind: PPO("MlpPolicy", envs[kind], seed=args.seed, **PPO_SETTINGS) for kind in kinds}
    measured = {key: {kind: [] for kind in kinds}
                for key in ("ppo_wall", "ppo_cpu", "env_wall", "env_cpu")}
    env_steps = 256
    for round_index in range(args.rounds + 1):  # round 0 warms up (compiles, allocates)
        for kind in kinds:
            model = models[kind]
            wall, cpu = timed(lambda: model.learn(args.steps_per_round, reset_num_timesteps=False),
                              args.steps_per_round)
            fresh = make_envs(kind, args.num_envs, args.seed + round_index)
            env_wall, env_cpu = timed(step_randomly(fresh, env_steps, args.seed),
                                      env_steps * args.num_envs)
            if round_index:
                for key, value in zip(measured, (wall, cpu, env_wall, env_cpu)):
                    measured[key][kind].append(value)
    result = {
        "num_envs": args.num_envs, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "ppo": dict(PPO_SETTINGS), "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "ppo_steps_per_wall_s": summary(measured["ppo_wall"]),
        "ppo_steps_per_cpu_s": summary(measured["ppo_cpu"]),
        "env_only_steps_per_wall_s": summary(measured["env_wall"]),
        "env_only_steps_per_cpu_s": summary(measured["env_cpu"]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
