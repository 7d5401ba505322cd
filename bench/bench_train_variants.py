"""Training variants on several seeds: when each run stops, what it hovers at, and what int8 costs.

    python bench/bench_train_variants.py --seeds 0 1 2 3 4 --set selection_start=160000 \
        [--set key=JSON ...] [--actor-lr STEP:LR ...] [--critic-lr STEP:LR ...] \
        [--actor-weight-decay X] [--int8]

``--set`` takes TrainConfig keys (JSON values). Three knobs are not TrainConfig options (tried
as variants, not adopted; docs/history.md): ``--actor-lr`` / ``--critic-lr`` make the Adam
learning rate piecewise linear in the env step (``150000:1e-3 400000:1e-4``: 1e-3 until 150 k,
then down to 1e-4 at 400 k and after), and ``--actor-weight-decay`` gives the actor its own L2
weight decay (the critics keep ``weight_decay``).

Per seed: training wall time, env steps, whether a selection check stopped it early, the kept
snapshot (step, selection score) and the selection history, then the saved policy on the hover
suite (1000 episodes, seed 12345, as ``nanofly eval``); with ``--int8`` also ``nanofly export``'s
int8 error against the float policy and the policy's input gain (a lower-gain policy
quantizes better: docs/export-notes.md). A JSON line per seed goes to stderr as it finishes;
stdout gets one JSON object at the end, with the medians. The baseline is the defaults, run
the same way (no ``--set`` / knobs) in another invocation: runs take 40-60 s each here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def piecewise(points: list[str]) -> list[tuple[float, float]]:
    """``["STEP:VALUE", ...]`` -> sorted (step, value) pairs."""
    out = []
    for p in points:
        step, sep, value = p.partition(":")
        if not sep:
            raise SystemExit(f"expected STEP:VALUE, got {p!r}")
        out.append((float(step), float(value)))
    return sorted(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--actor-lr", nargs="+", default=None, metavar="STEP:LR")
    parser.add_argument("--critic-lr", nargs="+", default=None, metavar="STEP:LR")
    parser.add_argument("--actor-weight-decay", type=float, default=None)
    parser.add_argument("--int8", action="store_true", help="also export and report int8 error")
    args = parser.parse_args(argv)

    from nanofly.train.evaluate import evaluation_mdp, hover_suite
    from nanofly.train.td3 import TrainConfig, Trainer, run_loop

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    actor_lr = piecewise(args.actor_lr) if args.actor_lr else None
    critic_lr = piecewise(args.critic_lr) if args.critic_lr else None

    class VariantTrainer(Trainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            if args.actor_weight_decay is not None:
                update, core = self.core.actor_update, self.core

                def actor_update(*a, **k):
                    shared = core.weight_decay
                    core.weight_decay = args.actor_weight_decay
                    try:
                        return update(*a, **k)
                    finally:
                        core.weight_decay = shared
                self.core.actor_update = actor_update

        def _update(self, at_step: int) -> None:
            for schedule, name in ((actor_lr, "actor_lr"), (critic_lr, "critic_lr")):
                if schedule:
                    steps, values = zip(*schedule)
                    setattr(self.core, name, float(np.interp(at_step, steps, values)))
            super()._update(at_step)

    rows = []
    for seed in args.seeds:
        cfg = TrainConfig.from_dict({**overrides, "seed": seed})
        t0 = time.perf_counter()
        trainer = run_loop(VariantTrainer(cfg))
        wall = time.perf_counter() - t0
        actor = trainer.policy_actor()
        import torch

        def act(obs, actor=actor):
            with torch.no_grad():
                return actor(torch.from_numpy(np.ascontiguousarray(obs))).numpy()
        result = hover_suite(act, preset=trainer.env.params,
                             mdp=evaluation_mdp(trainer.env.config.history_length),
                             episodes=1000, seed=12345)
        st = trainer.state
        row = {"seed": seed, "train_wall_time_s": round(wall, 1), "env_steps": st.env_steps,
               "stopped_early": st.stopped_early, "kept_step": st.best_selection_step,
               "kept_selection_score": st.best_selection_score,
               "hover_success": result["success_rate"],
               "final_position_rmse_m": result["final_position_rmse_m"],
               "selection_history": [[h[0], round(h[1], 3)] for h in st.selection_history]}
        if args.int8:
            from nanofly.export.exporter import export_policy
            from nanofly.policy.actor import save_policy

            with tempfile.TemporaryDirectory() as tmp:
                save_policy(Path(tmp) / "policy.pt", actor, **trainer.policy_payload(), metrics={})
                export_policy(Path(tmp) / "policy.pt", Path(tmp) / "export")
                errors = json.loads((Path(tmp) / "export" / "manifest.json").read_text())["errors"]
            row["int8_max_abs"] = errors["c_int8"]["max_abs"]
            row["int8_max_abs_unsaturated"] = errors["c_int8"].get("max_abs_unsaturated")
            row["policy_input_gain_l1"] = errors.get("policy_input_gain_l1")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    summary = {
        "variant": {"set": overrides, "actor_lr": actor_lr, "critic_lr": critic_lr,
                    "actor_weight_decay": args.actor_weight_decay},
        "seeds": rows,
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "passing": sum(r["hover_success"] >= 0.95 for r in rows),
        "median_env_steps": statistics.median(r["env_steps"] for r in rows),
        "median_train_wall_time_s": statistics.median(r["train_wall_time_s"] for r in rows),
        "median_hover_success": statistics.median(r["hover_success"] for r in rows),
    }
    if args.int8:
        summary["median_int8_max_abs"] = statistics.median(r["int8_max_abs"] for r in rows)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
