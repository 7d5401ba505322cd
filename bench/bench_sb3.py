"""Stable-Baselines3 PPO throughput through nanofly's SB3 adapter
(``nanofly.sim.sb3_vec_env.HoverSB3VecEnv``: all vehicles in one VecEnv call) against SB3's usual
path, ``make_vec_env("nanofly/Hover-v0")`` (a ``DummyVecEnv`` of one Gymnasium env per vehicle,
the baseline), in the same run.

    python bench/bench_sb3.py [--num-envs 16] [--rounds 3] [--steps-per-round 16384] [--seed 0]

Both run the same PPO (same hyperparameters, CPU, episode statistics from a monitor wrapper)
and learn in alternating rounds of ``--steps-per-round`` environment steps after one warm-up
round each. Also times the environments alone (random actions, no learning). Prints one JSON
object: steps/s per round and their medians, and the ratios adapter / DummyVecEnv.
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


def env_steps_per_s(envs, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, envs.num_envs, 4)).astype(np.float32)
    envs.reset()
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    return steps * envs.num_envs / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("num_envs", "rounds", "steps_per_round"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    kinds = ("adapter", "dummy_vec_env")
    envs = {kind: make_envs(kind, args.num_envs, args.seed) for kind in kinds}
    models = {kind: PPO("MlpPolicy", envs[kind], seed=args.seed, **PPO_SETTINGS) for kind in kinds}
    ppo_rates = {kind: [] for kind in kinds}
    env_rates = {kind: [] for kind in kinds}
    for round_index in range(args.rounds + 1):  # round 0 warms up (compiles, allocates)
        for kind in kinds:
            start = time.perf_counter()
            models[kind].learn(args.steps_per_round, reset_num_timesteps=False)
            rate = args.steps_per_round / (time.perf_counter() - start)
            if round_index:
                ppo_rates[kind].append(round(rate, 1))
                env_rates[kind].append(round(env_steps_per_s(
                    make_envs(kind, args.num_envs, args.seed + round_index), 256, args.seed), 1))
    ppo = {kind: statistics.median(r) for kind, r in ppo_rates.items()}
    env_only = {kind: statistics.median(r) for kind, r in env_rates.items()}
    result = {
        "num_envs": args.num_envs, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "ppo": dict(PPO_SETTINGS), "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "ppo_steps_per_s": ppo_rates, "ppo_median_steps_per_s": ppo,
        "ppo_ratio_adapter_over_dummy_vec_env": round(ppo["adapter"] / ppo["dummy_vec_env"], 2),
        "env_only_steps_per_s": env_rates, "env_only_median_steps_per_s": env_only,
        "env_only_ratio_adapter_over_dummy_vec_env":
            round(env_only["adapter"] / env_only["dummy_vec_env"], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
