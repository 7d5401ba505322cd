"""Cost of one trainer update with n-step targets vs the default 1-step update, in one process.

    python bench/bench_n_step_update.py [--n-step 3] [--threads 1 2] [--rounds 6]

For each thread count, two ``Trainer``s (``n_step_returns`` 1 and ``--n-step``, same seed,
``update_threads`` fixed, no adaptive switching) fill their replay buffers with
``--fill-steps`` environment steps, then their updates (``Trainer._update``: the batch drawn,
the n-step targets computed, the fused sampled update; a critic update every call, the actor
update every second call, as in training after the warm-up) are timed in alternating blocks
of ``--block`` updates: 1-step, n-step, n-step through the array calls on
``Trainer._n_step_batch`` (the batch built in NumPy, the path n-step updates took before they
were fused), and again, ``--rounds`` times. Prints one JSON object: per variant the median
and 10th/90th percentile of the per-update times, and the ratios of the medians to the 1-step
update's. On a shared machine compare the ratios, not the times.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def _array_update(trainer, at_step: int) -> None:
    """One update on ``Trainer._n_step_batch`` through the core's array calls (critic update,
    the target critics' Polyak step, actor update, the target actor's), the same numbers as
    ``Trainer._update`` (tests/test_n_step.py)."""
    import numpy as np

    cfg, core = trainer.cfg, trainer.core
    idx = trainer.rng.integers(0, trainer.buffer.size, size=cfg.batch_size)
    noise = trainer.rng.standard_normal((cfg.batch_size, 4), dtype=np.float32)
    b = trainer._n_step_batch(idx)
    core.critic_update(b["critic_obs"], b["action"], b["reward"] * np.float32(cfg.reward_scale),
                       b["next_critic_obs"], b["next_obs"], b["terminated"], noise)
    core.update_critic_targets()
    if at_step % cfg.actor_update_interval == 0:
        core.actor_update(b["obs"], b["critic_obs"], update_targets=False)
        core.update_actor_target()


def _summary(seconds: list[float], baseline_ms: float | None = None) -> dict:
    import numpy as np

    t = np.asarray(seconds) * 1e3
    out = {"median_ms": round(float(np.median(t)), 4),
           "p10_ms": round(float(np.percentile(t, 10)), 4),
           "p90_ms": round(float(np.percentile(t, 90)), 4), "n": int(t.size)}
    if baseline_ms is not None:
        out["median_vs_1_step"] = round(out["median_ms"] / baseline_ms, 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-step", type=int, default=3, help="n_step_returns of the n-step trainer")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--block", type=int, default=200, help="updates per timed block")
    p.add_argument("--fill-steps", type=int, default=40_000,
                   help="environment steps stored before the updates are timed")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n_step < 2:
        p.error("--n-step must be >= 2 (1 is the baseline)")

    from nanofly.train.td3 import Trainer, TrainConfig

    report: dict = {"bench": "n_step_update", "n_step": args.n_step, "seed": args.seed,
                    "fill_env_steps": args.fill_steps, "block": args.block,
                    "rounds": args.rounds, "cpu_count": os.cpu_count()}
    for threads in args.threads:
        trainers = {}
        for name, n in (("1_step", 1), ("n_step", args.n_step)):
            cfg = TrainConfig(seed=args.seed, n_step_returns=n, total_env_steps=args.fill_steps,
                              critic_warmup_steps=10**9, selection_interval=0,
                              update_threads=threads, adapt_update_threads=False)
            trainer = Trainer(cfg)
            while trainer.state.env_steps < args.fill_steps:
                trainer.step()
            trainers[name] = trainer
        variants = {"1_step": (trainers["1_step"], trainers["1_step"]._update),
                    "n_step": (trainers["n_step"], trainers["n_step"]._update),
                    "n_step_array_calls": (trainers["n_step"],
                                           lambda s, t=trainers["n_step"]: _array_update(t, s))}
        times: dict[str, list[float]] = {name: [] for name in variants}
        perf = time.perf_counter
        interval = trainers["1_step"].cfg.critic_update_interval
        for round_number in range(args.rounds + 1):  # round 0 warms up (kernels, caches)
            for name, (trainer, update) in variants.items():
                for i in range(args.block):
                    at_step = interval * i
                    start = perf()
                    update(at_step)
                    if round_number:
                        times[name].append(perf() - start)
        baseline = _summary(times["1_step"])
        entry = {"1_step": baseline}
        for name in ("n_step", "n_step_array_calls"):
            entry[name] = _summary(times[name], baseline["median_ms"])
        entry["load_average_1min"] = round(os.getloadavg()[0], 2)
        report[f"threads_{threads}"] = entry
        for trainer in trainers.values():
            trainer.core.close()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
