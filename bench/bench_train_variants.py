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
quantizes better: docs/export-notes.md). A JSON line per seed goes to stderr; stdout gets one
JSON object at the end, with the medians. Each seed is a trial of ``nanofly sweep``'s Python
API (this script's training function in a Ray task; one at a time on 2 cores). The baseline is
the defaults, run the same way (no ``--set`` / knobs) in another invocation: runs take 40-60 s
each here.
"""
from __future__ import annotations

import argparse
import functools
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


def train_variant(plan, train: dict, run_dir: Path, *, actor_lr, critic_lr,
                  actor_weight_decay, int8: bool) -> dict:
    """One seed of the variant (a ``nanofly sweep`` trial function, run in a Ray task): train
    in this process with the knobs, then the hover suite (and the int8 export)."""
    import torch

    from nanofly.train.evaluate import evaluation_mdp, hover_suite
    from nanofly.train.td3 import TrainConfig, Trainer, run_loop

    class VariantTrainer(Trainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            if actor_weight_decay is not None:
                update, core = self.core.actor_update, self.core

                def actor_update(*a, **k):
                    shared = core.weight_decay
                    core.weight_decay = actor_weight_decay
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

    cfg = TrainConfig.from_dict(train)
    t0 = time.perf_counter()
    trainer = run_loop(VariantTrainer(cfg))
    wall = time.perf_counter() - t0
    actor = trainer.policy_actor()

    def act(obs, actor=actor):
        with torch.no_grad():
            return actor(torch.from_numpy(np.ascontiguousarray(obs))).numpy()
    result = hover_suite(act, preset=trainer.env.params,
                         mdp=evaluation_mdp(trainer.env.config.history_length),
                         episodes=1000, seed=12345)
    st = trainer.state
    row = {"seed": cfg.seed, "train_wall_time_s": round(wall, 1), "env_steps": st.env_steps,
           "stopped_early": st.stopped_early, "kept_step": st.best_selection_step,
           "kept_selection_score": st.best_selection_score,
           "hover_success": result["success_rate"],
           "final_position_rmse_m": result["final_position_rmse_m"],
           "selection_history": [[h[0], round(h[1], 3)] for h in st.selection_history]}
    if int8:
        from nanofly.export.exporter import export_policy
        from nanofly.policy.actor import save_policy

        save_policy(run_dir / "policy.pt", actor, **trainer.policy_payload(), metrics={})
        export_policy(run_dir / "policy.pt", run_dir / "export")
        errors = json.loads((run_dir / "export" / "manifest.json").read_text())["errors"]
        row["int8_max_abs"] = errors["c_int8"]["max_abs"]
        row["int8_max_abs_unsaturated"] = errors["c_int8"].get("max_abs_unsaturated")
        row["policy_input_gain_l1"] = errors.get("policy_input_gain_l1")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--actor-lr", nargs="+", default=None, metavar="STEP:LR")
    parser.add_argument("--critic-lr", nargs="+", default=None, metavar="STEP:LR")
    parser.add_argument("--actor-weight-decay", type=float, default=None)
    parser.add_argument("--int8", action="store_true", help="also export and report int8 error")
    parser.add_argument("--cpus-per-trial", type=int, default=2,
                        help="CPUs per training (nanofly sweep --cpus-per-trial)")
    args = parser.parse_args(argv)

    from nanofly.sweep import sweep_trainings

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    actor_lr = piecewise(args.actor_lr) if args.actor_lr else None
    critic_lr = piecewise(args.critic_lr) if args.critic_lr else None
    result = sweep_trainings(
        Path(tempfile.mkdtemp(prefix="nanofly-variants-")), seeds=args.seeds, options=overrides,
        cpus_per_trial=args.cpus_per_trial, figure8_episodes=0, plots=False, progress=False,
        write_summary=False,
        trial_fn=functools.partial(train_variant, actor_lr=actor_lr, critic_lr=critic_lr,
                                   actor_weight_decay=args.actor_weight_decay, int8=args.int8))
    failed = [r for r in result["trials"] if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"seed {failed[0]['seed']}: {failed[0]['error']}")
    keys = ("seed", "train_wall_time_s", "env_steps", "stopped_early", "kept_step",
            "kept_selection_score", "hover_success", "final_position_rmse_m", "selection_history",
            "int8_max_abs", "int8_max_abs_unsaturated", "policy_input_gain_l1")
    rows = [{k: r[k] for k in keys if k in r} for r in result["trials"]]
    for row in rows:
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
