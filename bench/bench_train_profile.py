"""Where a training run's time goes: ``python bench/bench_train_profile.py [--steps 340000]``.

Runs the default training configuration (seed 0, checkpoint selection from 300 k steps) for
``--steps`` environment steps under cProfile and prints one JSON object: the wall time and, for
the functions that matter, calls, total seconds and milliseconds per call (numba kernels appear
under their Python names). cProfile adds ~1 us per Python call, so compare runs of this script
with each other, not with un-profiled wall times.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

WATCH = ("update_kernel", "update_sampled", "actor_update_sampled",
         "spin_until_at_least", "polyak_kernel", "actor_forward_kernel", "step", "_update",
         "hover_suite")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=340_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pathlib import Path

    import nanofly.sim
    import nanofly.train
    from nanofly.train.td3 import TrainConfig, train

    ours = tuple(str(Path(m.__file__).parent) for m in (nanofly.sim, nanofly.train))

    cfg = TrainConfig(seed=args.seed, total_env_steps=args.steps)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(train, cfg)
    wall = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    out: dict = {"env_steps": args.steps, "seed": args.seed, "wall_s": round(wall, 2),
                 "functions": {}}
    for (filename, _, name), (_, calls, tottime, cumtime, _) in stats.items():
        if name in WATCH and filename.startswith(ours):
            key = name if name not in out["functions"] else f"{name} ({filename.rsplit('/', 1)[-1]})"
            out["functions"][key] = {"calls": calls, "total_s": round(tottime, 3),
                                     "cumulative_s": round(cumtime, 3),
                                     "ms_per_call": round(1e3 * tottime / max(calls, 1), 4)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
