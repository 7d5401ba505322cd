"""Hover success during training: every ``--every`` env steps, score the online and the target
(Polyak-averaged) actor on a short hover suite; at the end, both on the full suite.

    python bench/bench_training_snapshots.py --seed 0 [--set key=value ...] [--every 20000]

``--set`` takes TrainConfig keys (JSON values, e.g. ``--set learning_rate=0.003`` or
``--set 'initial_reward_weights={"position": 40, "non_negative": true}'``). Checkpoint selection
is switched off so that the run is the plain schedule (``--set total_env_steps=400000`` ends
it early). Prints one JSON object. This is how the hover-precision experiments in
docs/history.md were measured; each snapshot also reports the mean of the episodes' largest
tilt and angular rate after step 200, which show the mid-run attitude wobble.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--every", type=int, default=20_000)
    parser.add_argument("--start", type=int, default=160_000)
    parser.add_argument("--episodes", type=int, default=128, help="episodes per snapshot check")
    args = parser.parse_args(argv)

    import torch

    from nanofly.train.evaluate import hover_suite
    from nanofly.train.td3 import TrainConfig, Trainer, run_loop

    overrides = {"seed": args.seed, "selection_interval": 0}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    trainer = Trainer(TrainConfig.from_dict(overrides))
    torch.set_num_threads(1)
    core = trainer.core

    def policy(target: bool):
        return lambda obs: core.actor_forward(np.ascontiguousarray(obs), target=target)

    snapshots = []
    next_check = [args.start]

    def on_progress(tr) -> None:
        if tr.state.env_steps >= next_check[0]:
            next_check[0] += args.every
            row = {"env_steps": tr.state.env_steps}
            for name, target in (("online", False), ("target", True)):
                r = hover_suite(policy(target), episodes=args.episodes, seed=999)
                # tilt and angular rate: what a mid-run collapse looks like (attitude wobble
                # with the position still held; docs/history.md)
                row[name] = {"success_rate": r["success_rate"],
                             "termination_rate": r["termination_rate"],
                             "action_smoothness": r["action_smoothness"],
                             "final_position_rmse_m": r["final_position_rmse_m"],
                             "max_tilt_after_200_deg_mean": float(np.degrees(r["max_angle_rad_after_200_mean"])),
                             "max_angular_velocity_after_200_radps_mean":
                                 r["max_angular_velocity_radps_after_200_mean"]}
            snapshots.append(row)

    t0 = time.perf_counter()
    run_loop(trainer, on_progress=on_progress, progress_every=trainer.cfg.num_envs)
    wall = time.perf_counter() - t0
    final = {}
    for name, target in (("online", False), ("target", True)):
        r = hover_suite(policy(target), episodes=1000)
        final[name] = {k: r[k] for k in ("success_rate", "termination_rate",
                                         "final_position_rmse_m", "action_smoothness")}
    print(json.dumps({"seed": args.seed, "overrides": overrides,
                      "wall_time_s_including_checks": round(wall, 1),
                      "final_hover_suite_1000": final, "snapshots": snapshots}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
