"""Implementation of ``nanofly train`` and ``nanofly eval`` (kept out of commands.py so that
``nanofly --help`` does not import numba or torch)."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()


class ProgressBar:
    """One live line on a terminal (or a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, done: int, elapsed: float, fields: dict[str, str]) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        extra = " | ".join(f"{k} {v}" for k, v in fields.items())
        line = (f"[{bar}] {done:>7}/{self.total} steps | {elapsed:5.1f}s | {rate / 1000:5.1f}k steps/s"
                f" | eta {eta:4.0f}s | {extra}")
        if self.tty:
            self.stream.write("\r" + line[:160] + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def load_train_config(args):
    """The TrainConfig from --config (TOML) and the command-line options."""
    from .td3 import TrainConfig

    data: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--config {path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {path}: malformed TOML: {exc}") from None
        data.update(raw.get("train", raw))
    for key, attr in (("seed", "seed"), ("total_env_steps", "steps"), ("num_envs", "num_envs"),
                      ("preset", "preset"), ("int8_aware_steps", "int8_aware_steps"),
                      ("update_threads", "update_threads")):
        value = getattr(args, attr)
        if value is not None:
            data[key] = value
    from .commands import ABLATIONS

    for name in ABLATIONS:
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    return TrainConfig.from_dict(data)


CHECKPOINT_NAME = "checkpoint.npz"  # checkpoint_file.CHECKPOINT_NAME (not imported: numpy)


def read_resume_checkpoint(run_dir: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint ``--resume RUN_DIR`` continues from: ``checkpoint.npz`` (data only). An
    earlier nanofly's ``checkpoint.pkl`` is a pickle, which runs any code it holds when read:
    it is refused, or with ``trust_pickle`` (``--trust-checkpoint``) read once and converted."""
    from .checkpoint_file import (LEGACY_CHECKPOINT_NAME, CheckpointFileError, load_checkpoint,
                                  load_legacy_pickle, save_checkpoint)

    ck_path, legacy = run_dir / CHECKPOINT_NAME, run_dir / LEGACY_CHECKPOINT_NAME
    if ck_path.is_file():
        return load_checkpoint(ck_path)
    if not legacy.is_file():
        raise CheckpointFileError(f"{ck_path}: no checkpoint to resume from")
    if not trust_pickle:
        raise CheckpointFileError(
            f"{legacy} is an earlier nanofly's checkpoint, a Python pickle, which runs any code "
            f"it holds when read; nanofly does not read it. Only if you made it yourself: "
            f"nanofly train --resume {run_dir} --trust-checkpoint (converts it to {CHECKPOINT_NAME})")
    checkpoint = load_legacy_pickle(legacy)
    try:
        save_checkpoint(ck_path, checkpoint)
    except TypeError as exc:
        raise CheckpointFileError(f"{legacy}: not a nanofly checkpoint ({exc})") from None
    legacy.unlink()
    print(f"note: converted {legacy} to {ck_path} (data only) and removed the pickle",
          file=sys.stderr)
    return checkpoint


def run_train(args) -> int:
    from nanofly.sim.presets import PresetError, dumps_toml

    try:
        cfg = load_train_config(args)
    except (ValueError, PresetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        from .checkpoint_file import CheckpointFileError
        from .td3 import config_of_checkpoint

        try:
            resume = read_resume_checkpoint(run_dir, trust_pickle=args.trust_checkpoint)
            cfg = config_of_checkpoint(resume)
        except CheckpointFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            print(f"error: {run_dir / CHECKPOINT_NAME}: not a usable nanofly checkpoint "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
    else:
        run_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        print(f"error: cannot write the run directory {run_dir}: {exc}", file=sys.stderr)
        return 2
    from .checkpoint_file import save_checkpoint
    from .policy_file import save_policy  # no torch import (~1.3 s)
    from .td3 import Interrupted, Trainer, run_loop
    from .td3_core import usable_cpus

    cpus = usable_cpus()
    if cfg.update_threads > cpus:  # two threads would take turns on one CPU (slow)
        print(f"note: this process may use only {cpus} CPU: training with 1 update thread "
              f"instead of {cfg.update_threads} (the same results, sooner)", file=sys.stderr)
        cfg = dataclasses.replace(cfg, update_threads=1)
    (run_dir / "config.toml").write_text(dumps_toml({"train": cfg.to_dict()}))
    metrics_path = run_dir / "metrics.jsonl"
    if resume is None and metrics_path.exists():
        metrics_path.unlink()
    bar = ProgressBar(cfg.total_env_steps + cfg.int8_aware_steps, enabled=not args.json)
    log_file = open(metrics_path, "a")

    def on_progress(trainer) -> None:
        m = trainer.metrics()
        fields = {"return": f"{m['mean_return']:.0f}" if m["mean_return"] is not None else "-",
                  "survived 5 s": f"{100 * m['survival_rate']:.0f}%" if m["survival_rate"] is not None else "-"}
        if m["selection"]:
            fields["hover success (check)"] = (f"{100 * m['selection']['success_rate']:.0f}% "
                                               f"(best {100 * m['selection']['best_success_rate']:.0f}%)")
        bar.update(m["env_steps"], m["wall_time_s"], fields)

    def on_log(metrics: dict) -> None:
        log_file.write(json.dumps(metrics) + "\n")
        log_file.flush()

    from .compile_cache import kernels_cached

    if not args.json and not kernels_cached():
        print("first run with this numba cache: compiling the simulator and update kernels "
              "(~10 s on 2 cores; cached for later runs)", file=sys.stderr)
    trainer = Trainer(cfg)
    if resume is not None:
        try:
            trainer.restore(resume)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            print(f"error: {run_dir / CHECKPOINT_NAME}: not a usable nanofly checkpoint "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
    try:
        run_loop(trainer, on_progress=on_progress, progress_every=max(cfg.num_envs, 5000),
                 on_log=on_log)
    except Interrupted as stopped:
        bar.close()
        save_checkpoint(run_dir / CHECKPOINT_NAME, trainer.checkpoint())
        print(f"\n{stopped} at {trainer.state.env_steps} steps: saved "
              f"{run_dir / CHECKPOINT_NAME}; continue with: nanofly train --resume {run_dir}",
              file=sys.stderr)
        log_file.close()
        return 128 + stopped.signal_number  # the shell's convention: 130 for Ctrl-C
    finally:
        bar.close()
    log_file.close()
    train_wall = trainer.state.wall_time_s
    actor = trainer.policy_weights()
    policy_path = run_dir / "policy.pt"
    st = trainer.state
    selection = ({"env_steps": st.best_selection_step, "success_rate": st.best_selection_score,
                  "episodes": cfg.selection_episodes, "seed": cfg.selection_seed,
                  "history": st.selection_history}
                 if st.best_selection_step >= 0 else None)
    save_policy(policy_path, actor, **trainer.policy_payload(),
                metrics={"train_wall_time_s": train_wall, "env_steps": st.env_steps,
                         "selected_snapshot": selection})
    time_to_policy = time.perf_counter() - PROCESS_START
    saved_at = time.time()
    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "policy": str(policy_path), "seed": cfg.seed,
        "train_wall_time_s": round(train_wall, 3),
        "cli_start_to_saved_policy_s": round(time_to_policy, 3),
        "policy_saved_at_unix": saved_at,
        "env_steps": trainer.state.env_steps, "critic_updates": trainer.state.critic_updates,
        "actor_updates": trainer.state.actor_updates,
        "one_thread_updates": trainer.core.updates_without_helper,  # a busy machine: speed only
        "selected_snapshot": selection,
        "stopped_early": st.stopped_early,
        "int8_aware_steps": (st.env_steps - (st.int8_aware_until - cfg.int8_aware_steps)
                             if st.int8_aware_until >= 0 else 0),
    }
    if args.eval_episodes > 0:
        from .evaluate import TorchPolicy, hover_suite, policy_mdp, public

        policy = TorchPolicy(policy_path)
        preset, mdp = policy_mdp(policy.payload)
        t0 = time.perf_counter()
        result = hover_suite(policy, preset=preset, mdp=mdp, episodes=args.eval_episodes,
                             record=8)
        summary["eval_wall_time_s"] = round(time.perf_counter() - t0, 3)
        summary["eval"] = {"hover": public(result)}
        # store the figures in the policy file too (self-describing)
        save_policy(policy_path, actor, **trainer.policy_payload(),
                    metrics={"train_wall_time_s": train_wall, "env_steps": st.env_steps,
                             "selected_snapshot": selection, "hover": public(result)})
        if not args.no_plots:
            from .plots import plot_hover_rollouts, plot_learning_curve

            plot_learning_curve(metrics_path, run_dir / "learning_curve.png")
            plot_hover_rollouts(result["_trajectories"], run_dir)
    elif not args.no_plots:
        from .plots import plot_learning_curve

        plot_learning_curve(metrics_path, run_dir / "learning_curve.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"saved {policy_path} after {train_wall:.1f} s of training "
              f"({time_to_policy:.1f} s since start)")
        if "eval" in summary:
            h = summary["eval"]["hover"]
            print(f"hover suite: success {100 * h['success_rate']:.1f}% over {h['episodes']} episodes, "
                  f"final position RMSE {h['final_position_rmse_m']}")
    return 0


def run_eval(args) -> int:
    from .evaluate import Figure8Thresholds, HoverThresholds, open_for_eval, public, run_suite
    from .policy import PolicyFileError

    policy_path = Path(args.policy)
    suites = args.suite or ["hover"]
    try:
        policy, preset, mdp = open_for_eval(policy_path, args.backend)
    except (PolicyFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"policy": str(policy_path), "backend": args.backend, "suites": {}}
    passed = True
    try:
        for suite in suites:
            kwargs: dict[str, Any] = {"preset": preset, "mdp": mdp}
            if args.episodes:
                kwargs["episodes"] = args.episodes
            if args.seed is not None:
                kwargs["seed"] = args.seed
            if suite == "hover" and args.min_success is not None:
                kwargs["thresholds"] = HoverThresholds(min_success_rate=args.min_success)
            if suite == "figure8" and args.max_rmse is not None:
                kwargs["thresholds"] = Figure8Thresholds(max_position_rmse_m=args.max_rmse)
            t0 = time.perf_counter()
            result = public(run_suite(suite, policy, **kwargs))
            result["wall_time_s"] = round(time.perf_counter() - t0, 3)
            out["suites"][suite] = result
            passed &= result["passed"]
    finally:
        info = policy.info() if hasattr(policy, "info") else {}
        if hasattr(policy, "close"):
            policy.close()
    if info:
        out["backend_info"] = info
    out["passed"] = passed
    if args.json:
        print(json.dumps(out))
    else:
        for suite, r in out["suites"].items():
            status = "PASS" if r["passed"] else "FAIL"
            if suite == "hover":
                print(f"hover   [{status}] success {100 * r['success_rate']:.1f}% "
                      f"(threshold {100 * r['thresholds']['min_success_rate']:.0f}%), "
                      f"{r['episodes']} episodes, final position RMSE {r['final_position_rmse_m']}, "
                      f"settled within 200 mm {100 * r['settling_fraction_200mm']:.1f}%")
            else:
                print(f"figure8 [{status}] position RMSE {r['position_rmse_m']} m, max error "
                      f"{r['max_position_error_m']} m, completion {100 * r['completion_rate']:.0f}%")
    return 0 if passed else 1
