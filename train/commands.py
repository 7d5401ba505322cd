"""``nanofly train``: its command-line options (``register``) and its implementation
(``run_train``). Only the standard library is imported at module level, so ``nanofly --help``
stays fast; numba and torch load inside the handlers."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()

ABLATIONS = ("disturbance", "observation_noise", "asymmetric_critic", "rotor_delay",
             "action_history", "curriculum")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a hover policy (TD3, asymmetric actor-critic)",
        description="Train a policy (defaults: the paper's TD3 setup with the changes measured "
                    "in docs/history.md) and save it to a run directory (policy.pt, "
                    "metrics.jsonl, config.toml, plots). Ctrl-C (or SIGTERM, SIGHUP) saves a "
                    "checkpoint (checkpoint.npz: data only) that --resume continues from. Exit "
                    "status: 0 done; 1 the final evaluation missed the hover threshold (everything "
                    "is saved), or the run diverged or could not write its results (a "
                    "checkpoint is kept, and after a divergence the best finite snapshot as "
                    "policy.pt if checkpoint selection kept one); 2 bad input (nothing is "
                    "written); 128+N stopped by signal N.")
    p.add_argument("--out", default=None,
                   help="run directory, new or empty (default runs/<timestamp>)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="total environment steps (default 700000; training may stop earlier, "
                        "see stop_at_selection_success)")
    p.add_argument("--num-envs", type=int, default=None, help="parallel simulators (default 16)")
    p.add_argument("--int8-aware-steps", type=int, default=None, metavar="N",
                   help="after training, N more steps with the actor's weights on the int8 "
                        "export grid (quantization-aware; default 0: off)")
    p.add_argument("--update-threads", type=int, choices=(1, 2), default=None,
                   help="threads for the network updates (default 2: fastest on an otherwise "
                        "idle machine with 2+ cores; 1 is faster when other work keeps a core "
                        "busy; the results are the same bits either way)")
    p.add_argument("--preset", default=None, help="vehicle preset name or .toml file")
    p.add_argument("--config", default=None,
                   help="TOML file with training options (keys of TrainConfig, a [train] table)")
    for name in ABLATIONS:
        p.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                       default=None, help=f"ablation: switch off {name.replace('_', ' ')}")
    p.add_argument("--eval-episodes", type=int, default=1000,
                   help="hover-suite episodes at the end (0: skip)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/checkpoint.npz, with the run's "
                        "own settings (options that differ from them are refused; "
                        "--update-threads may change)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: read an earlier nanofly's RUN_DIR/checkpoint.pkl (a "
                        "pickle, which can run code: only a file you made yourself) and convert "
                        "it to checkpoint.npz")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(handler=run_train)

PROCESS_START = time.perf_counter()


def format_duration(seconds: float) -> str:
    """``seconds`` for a person: "45 s", "3 min 20 s", "1 h 05 min"."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressBar:
    """One live line on a terminal (elsewhere a line per update, at most one per
    ``line_every_s``): a bar, done/total ``unit``, elapsed time, rate and ETA.

    The rate and ETA are measured from the first update on, so the time before it (numba
    compiling, the first evaluation) does not count as slow progress; until a second update
    there is no ETA. ``total`` may change (``set_total``: a run that stops early)."""

    def __init__(self, total: int, stream=None, enabled: bool = True, *,
                 unit: str = "steps", label: str = "", line_every_s: float = 0.0):
        stream = sys.stderr if stream is None else stream  # the current one (tests swap it)
        self.total, self.stream, self.enabled = total, stream, enabled
        self.unit, self.label, self.line_every_s = unit, label, line_every_s
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._first: tuple[int, float] | None = None  # (done, elapsed) at the first update
        self._drawn_at = -math.inf
        self._shown = False  # a live line is on the terminal

    def set_total(self, total: int) -> None:
        self.total = total

    def _rate(self, done: int, elapsed: float) -> float | None:
        if self._first is None:
            self._first = (done, elapsed)
            return None
        done0, elapsed0 = self._first
        if done <= done0 or elapsed <= elapsed0:
            return None
        return (done - done0) / (elapsed - elapsed0)

    def update(self, done: int, elapsed: float, fields: dict[str, str] | None = None) -> None:
        if not self.enabled:
            return
        rate = self._rate(done, elapsed)
        now = time.monotonic()
        finished = done >= self.total
        every = 0.1 if self.tty else self.line_every_s
        if now - self._drawn_at < every and not finished:
            return
        self._drawn_at = now
        frac = min(1.0, done / self.total) if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        if rate is None:
            speed, eta = "-", "-"
        else:
            speed = (f"{rate / 1000:.1f}k {self.unit}/s" if rate >= 1000
                     else f"{rate:.1f} {self.unit}/s")
            eta = format_duration(max(0, self.total - done) / rate)
        parts = [f"{self.label} " if self.label else "",
                 f"[{bar}] {done:,}/{self.total:,} {self.unit} | {format_duration(elapsed)} | "
                 f"{speed} | eta {eta}"]
        if fields:
            parts.append(" | " + " | ".join(f"{k} {v}" for k, v in fields.items()))
        line = "".join(parts)
        if self.tty:
            self.stream.write("\r" + line[:160] + "\033[K")
            self._shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        """A line of its own (a phase, why the run stopped); the bar goes on below it."""
        if not self.enabled:
            return
        self.close()
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def load_train_config(args):
    """The TrainConfig from --config (TOML) and the command-line options."""
    from .td3 import TrainConfig

    return TrainConfig.from_dict(_given_options(args))


# TrainConfig key -> its command-line flag (what --resume names when they conflict)
_FLAGS = {"seed": "--seed", "total_env_steps": "--steps", "num_envs": "--num-envs",
          "preset": "--preset", "int8_aware_steps": "--int8-aware-steps",
          "update_threads": "--update-threads",
          **{name: f"--no-{name.replace('_', '-')}" for name in ABLATIONS}}


def _given_options(args) -> dict[str, Any]:
    """The training options the command line sets: --config's table, then the flags."""
    data: dict[str, Any] = {}
    if args.config:
        from nanofly.sim.presets import read_toml

        path = Path(args.config)
        raw = read_toml(path, ValueError, prefix="--config ")
        table = raw.get("train", raw)
        if not isinstance(table, dict):
            raise ValueError(f"--config {path}: 'train' must be a [train] table of training "
                             f"options, got {table!r}")
        data.update(table)
    for key, attr in (("seed", "seed"), ("total_env_steps", "steps"), ("num_envs", "num_envs"),
                      ("preset", "preset"), ("int8_aware_steps", "int8_aware_steps"),
                      ("update_threads", "update_threads")):
        value = getattr(args, attr)
        if value is not None:
            data[key] = value
    for name in ABLATIONS:
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    return data


def resume_config(args, checkpoint_cfg):
    """The configuration ``--resume`` continues with: the checkpoint's, with only the update
    threads (which change no result) taken from the command line. Raises ValueError naming
    every option given that differs from the run's own (a resumed run cannot change them)."""
    from .td3 import TrainConfig

    given = _given_options(args)
    threads = given.pop("update_threads", None)
    merged = TrainConfig.from_dict({**checkpoint_cfg.to_dict(), **given})
    conflicts = [f"{_FLAGS.get(key, f'--config key {key}')} {getattr(merged, key)!r} (the "
                 f"run's: {getattr(checkpoint_cfg, key)!r})"
                 for key in given if getattr(merged, key) != getattr(checkpoint_cfg, key)]
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        conflicts.append(f"--out {args.out} (a resumed run stays in {args.resume})")
    if conflicts:
        raise ValueError(f"--resume {args.resume} continues the run with the settings it was "
                         f"started with, and these options differ: {'; '.join(conflicts)}. "
                         f"Leave them out, or start a new run with them (--out NEW_DIR)")
    if threads is None:
        return checkpoint_cfg
    return dataclasses.replace(checkpoint_cfg, update_threads=threads)


CHECKPOINT_NAME = "checkpoint.npz"  # checkpoint_file.CHECKPOINT_NAME (not imported: numpy)
METRICS_NAME = "metrics.jsonl"  # a JSON line per log interval, appended (a resume goes on)


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


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None: JSON has no NaN (``json.dumps`` would write a
    bare ``NaN``, which JSON readers other than Python's refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# A run directory must take at least this much (a policy file is ~60 KB): the probe writes and
# syncs it, which fails on a full disk or quota where creating an empty file succeeds.
WRITE_PROBE_BYTES = 65_536


def probe_writable(directory: Path) -> None:
    """Raise OSError unless ``directory`` takes WRITE_PROBE_BYTES bytes (written, synced,
    removed again)."""
    probe = directory / ".nanofly-write-test"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(WRITE_PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)


def _new_run_dir(out: str | None) -> Path:
    """The directory of a new run: ``--out``, or runs/<timestamp> (-2, -3, ... if taken)."""
    if out:
        return Path(out)
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _refuse_used_run_dir(run_dir: Path) -> str | None:
    """Why a new run cannot go into ``run_dir`` (it holds files), or None."""
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return f"--out {run_dir} is a file, not a directory"
    names = sorted(p.name for p in run_dir.iterdir())
    if not names:
        return None
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return (f"--out {run_dir} is not empty ({shown}); give a new directory, or continue an "
            f"interrupted run there with: nanofly train --resume {run_dir}")


class _RunRefused(Exception):
    """Why a run cannot start (one line) and its exit status; nothing of it is left behind."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def run_train(args) -> int:
    """``nanofly train``. Exit status: 0 done; 1 the run failed (diverged, or a write failed:
    a checkpoint is kept where possible); 2 bad input (nothing is left behind); 128 + N
    stopped by signal N (a checkpoint is kept)."""
    try:
        cfg, run_dir, resume = _resolve_run(args)
        trainer, log_file = _start_run(args, cfg, run_dir, resume)
    except _RunRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return refused.status
    policy_path = run_dir / "policy.pt"
    progress = _TrainingProgress(trainer, enabled=not args.json)
    progress.say_start(trainer, run_dir, resumed=resume is not None)
    stopped_status = _train(trainer, run_dir, policy_path, log_file, progress)
    if stopped_status is not None:  # interrupted, diverged or failed: what could be is kept
        return stopped_status
    try:
        return _finish_run(args, trainer, run_dir, policy_path, run_dir / METRICS_NAME,
                           progress.resumed_at_s)
    except Exception as exc:  # noqa: BLE001 - the trained state is kept: --resume saves again
        return _keep_checkpoint(trainer, run_dir, f"training finished but saving its results "
                                                  f"failed: {_one_line(exc)}")


def _resolve_run(args):
    """The run's configuration, directory and (with --resume) checkpoint, from the options.
    Writes nothing: raises _RunRefused on bad options, an unusable checkpoint, a bad preset or
    a used --out directory."""
    from nanofly.sim.presets import PresetError, get_preset

    try:
        cfg = load_train_config(args)
    except (ValueError, PresetError) as exc:
        raise _RunRefused(str(exc)) from None
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        resume, cfg = _read_resume(args, run_dir)
    elif args.trust_checkpoint:
        raise _RunRefused("--trust-checkpoint applies to --resume RUN_DIR only")
    # the vehicle, before anything is written: a bad preset file leaves nothing behind
    try:
        get_preset(cfg.preset)
    except (PresetError, ValueError, OSError) as exc:
        raise _RunRefused(f"preset: {_one_line(exc) if isinstance(exc, OSError) else exc}"
                          ) from None
    if resume is None:
        run_dir = _new_run_dir(args.out)
        try:
            refused = _refuse_used_run_dir(run_dir)
        except OSError as exc:
            refused = f"cannot read --out {run_dir}: {exc}"
        if refused:
            raise _RunRefused(refused)
    return cfg, run_dir, resume


def _read_resume(args, run_dir: Path):
    """The checkpoint ``--resume run_dir`` continues from and the configuration it continues
    with. Raises _RunRefused on an unusable checkpoint or options that differ from the run's."""
    from nanofly.sim.presets import PresetError

    from .checkpoint_file import CheckpointFileError
    from .td3 import config_of_checkpoint

    try:
        resume = read_resume_checkpoint(run_dir, trust_pickle=args.trust_checkpoint)
        checkpoint_cfg = config_of_checkpoint(resume)
    except CheckpointFileError as exc:
        raise _RunRefused(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _RunRefused(f"{run_dir / CHECKPOINT_NAME}: not a usable nanofly checkpoint "
                          f"({_one_line(exc)})") from None
    try:
        return resume, resume_config(args, checkpoint_cfg)
    except (ValueError, PresetError) as exc:
        raise _RunRefused(str(exc)) from None



def _start_run(args, cfg, run_dir: Path, resume):
    """The run directory made, the trainer built (restored from ``resume``), config.toml
    written and metrics.jsonl open for appending: (trainer, the metrics file). Raises
    _RunRefused when the run cannot start, after removing the files and directories it made."""
    new_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    written: list[Path] = []
    try:
        return _create_run(args, cfg, run_dir, resume, written)
    except _RunRefused:
        for path in written:
            path.unlink(missing_ok=True)
        for directory in new_dirs:  # deepest first; only ones this run made (and left empty)
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def _create_run(args, cfg, run_dir: Path, resume, written: list[Path]):
    """``_start_run``'s work; each file it creates is appended to ``written`` first."""
    from nanofly.sim.presets import PresetError, dumps_toml

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe_writable(run_dir)
    except OSError as exc:
        raise _RunRefused(f"cannot write the run directory {run_dir}: {_one_line(exc)}"
                          ) from None
    from .td3 import Trainer
    from .td3_core import usable_cpus

    cpus = usable_cpus()
    if cfg.update_threads > cpus:  # two threads would take turns on one CPU (slow)
        print(f"note: this process may use only {cpus} CPU: training with 1 update thread "
              f"instead of {cfg.update_threads} (the same results, sooner)", file=sys.stderr)
        cfg = dataclasses.replace(cfg, update_threads=1)
    from .compile_cache import kernels_cached

    if not args.json and not kernels_cached():
        print("first run with this numba cache: compiling the simulator and update kernels "
              "(~10 s on 2 cores; cached for later runs)", file=sys.stderr)
    try:
        trainer = Trainer(cfg)
    except MemoryError as exc:
        raise _RunRefused(f"not enough memory for this configuration ({_one_line(exc)}); "
                          f"lower total_env_steps (the replay buffer) or num_envs") from None
    except (ValueError, PresetError) as exc:
        raise _RunRefused(f"cannot start training: {_one_line(exc)}") from None
    if resume is not None:
        try:
            trainer.restore(resume)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise _RunRefused(f"{run_dir / CHECKPOINT_NAME}: not a usable nanofly checkpoint "
                              f"({_one_line(exc)})") from None
    metrics_path = run_dir / METRICS_NAME
    try:
        config_path = run_dir / "config.toml"
        if not config_path.exists():
            written.append(config_path)
        config_path.write_text(dumps_toml({"train": cfg.to_dict()}))
        if not metrics_path.exists():
            written.append(metrics_path)
        return trainer, open(metrics_path, "a")
    except OSError as exc:
        raise _RunRefused(f"cannot write the run directory {run_dir}: {_one_line(exc)}",
                          1) from None


class _TrainingProgress:
    """What a person sees while the run trains (on stderr; nothing with --json): a start line,
    a progress bar with the latest figures, a line when the run stops early and when int8-aware
    fine-tuning starts, and a line when it trained its whole budget."""

    def __init__(self, trainer, *, enabled: bool):
        cfg = trainer.cfg
        self.bar = ProgressBar(cfg.total_env_steps + cfg.int8_aware_steps, enabled=enabled)
        self.resumed_at_s = trainer.state.wall_time_s  # training time before this process
        self._announced: set[str] = set()

    def say_start(self, trainer, run_dir: Path, *, resumed: bool) -> None:
        """What the run will do: its step budget, or where a resumed run goes on from."""
        cfg = trainer.cfg
        if not resumed:
            self.bar.say(
                f"training: up to {cfg.total_env_steps:,} steps with {cfg.num_envs} simulators"
                + (f" (stops early once the hover check reaches "
                   f"{100 * cfg.stop_at_selection_success:.0f} %)" if cfg.selection_interval
                   else "")
                + (f", then {cfg.int8_aware_steps:,} steps of int8-aware fine-tuning"
                   if cfg.int8_aware_steps else ""))
        else:
            self.bar.say(f"resuming {run_dir} at {trainer.state.env_steps:,} steps "
                         f"({format_duration(self.resumed_at_s)} of training so far)")

    def announce_phases(self, trainer) -> None:
        """A line when the run stops early and when int8-aware fine-tuning starts."""
        cfg, st = trainer.cfg, trainer.state
        if st.stopped_early and "stopped" not in self._announced:
            self._announced.add("stopped")
            self.bar.say(_stopped_early_line(trainer))
            self.bar.set_total(st.env_steps + cfg.int8_aware_steps)
        if st.int8_aware_until >= 0 and "int8" not in self._announced:
            self._announced.add("int8")
            self.bar.set_total(st.int8_aware_until)
            self.bar.say(f"int8-aware fine-tuning: {cfg.int8_aware_steps:,} steps with the "
                         f"actor's weights on the int8 export grid (to step "
                         f"{st.int8_aware_until:,})")

    def on_progress(self, trainer) -> None:
        """The bar with the latest return, survival rate and hover check."""
        self.announce_phases(trainer)
        m = trainer.metrics()
        fields = {"return": f"{m['mean_return']:.0f}" if m["mean_return"] is not None else "-",
                  "survived 5 s": f"{100 * m['survival_rate']:.0f}%" if m["survival_rate"] is not None else "-"}
        if m["selection"]:
            fields["hover success (check)"] = (f"{100 * m['selection']['success_rate']:.0f}% "
                                               f"(best {100 * m['selection']['best_success_rate']:.0f}%)")
        self.bar.update(m["env_steps"], m["wall_time_s"] - self.resumed_at_s, fields)

    def say_end(self, trainer) -> None:
        """After the loop: how it ended (stopped early, or the whole budget trained)."""
        cfg = trainer.cfg
        self.announce_phases(trainer)
        if not trainer.state.stopped_early:
            self.bar.say(f"trained {trainer.state.env_steps:,} steps: the whole budget"
                         + (f" ({cfg.total_env_steps:,} + {cfg.int8_aware_steps:,} int8-aware)"
                            if cfg.int8_aware_steps else ""))


def _train(trainer, run_dir: Path, policy_path: Path, log_file, progress) -> int | None:
    """The training loop, appending its metrics to ``log_file`` (closed after). None when it
    ran to its end; else the exit status of a run that was interrupted, diverged or failed,
    after saving a checkpoint (and on divergence the best finite policy) where possible."""
    from .td3 import Diverged, Interrupted, run_loop

    def close_log() -> None:  # after a failed write its buffer fails again: already reported
        try:
            log_file.close()
        except OSError:
            pass

    def on_log(metrics: dict) -> None:
        log_file.write(json.dumps(_json_safe(metrics), allow_nan=False) + "\n")
        log_file.flush()

    try:
        run_loop(trainer, on_progress=progress.on_progress,
                 progress_every=max(trainer.cfg.num_envs, 5000), on_log=on_log)
    except Interrupted as stopped:
        progress.bar.close()
        close_log()
        return _report_interrupted(stopped, trainer, run_dir)
    except Diverged as diverged:
        progress.bar.close()
        close_log()
        return _report_divergence(diverged, trainer, run_dir, policy_path)
    except Exception as exc:  # noqa: BLE001 - a checkpoint first, then one line
        progress.bar.close()
        close_log()
        return _keep_checkpoint(trainer, run_dir, f"training stopped at "
                                                  f"{trainer.state.env_steps} steps: "
                                                  f"{_one_line(exc)}")
    finally:
        progress.bar.close()
    close_log()
    progress.say_end(trainer)
    return None


def _keep_checkpoint(trainer, run_dir: Path, message: str, resume_note: str | None = None) -> int:
    """A failed run: save a checkpoint if possible, then say what happened in one line."""
    from .checkpoint_file import save_checkpoint

    try:
        save_checkpoint(run_dir / CHECKPOINT_NAME, trainer.checkpoint())
        kept = f"; saved {run_dir / CHECKPOINT_NAME}" + (
            resume_note or f": continue with: nanofly train --resume {run_dir}")
    except Exception as exc:  # noqa: BLE001 - reported, the original failure stands
        kept = f"; no checkpoint either ({_one_line(exc)})"
    print(f"error: {message}{kept}", file=sys.stderr)
    return 1


def _report_interrupted(stopped, trainer, run_dir: Path) -> int:
    """A signal stopped the run: save a checkpoint, say how to continue; exit 128 + N."""
    from .checkpoint_file import save_checkpoint

    try:
        save_checkpoint(run_dir / CHECKPOINT_NAME, trainer.checkpoint())
    except Exception as exc:  # noqa: BLE001
        print(f"\nerror: {stopped} at {trainer.state.env_steps} steps, and the checkpoint "
              f"could not be saved ({_one_line(exc)})", file=sys.stderr)
        return 128 + stopped.signal_number
    print(f"\n{stopped} at {trainer.state.env_steps} steps: saved "
          f"{run_dir / CHECKPOINT_NAME}; continue with: nanofly train --resume {run_dir}",
          file=sys.stderr)
    return 128 + stopped.signal_number  # the shell's convention: 130 for Ctrl-C


def _report_divergence(diverged, trainer, run_dir: Path, policy_path: Path) -> int:
    """The run diverged: keep the best finite snapshot (if selection kept one) as the policy,
    and a checkpoint; one line says which."""
    from nanofly.policy.file import save_policy

    st = trainer.state
    if trainer.best_actor_params is not None:
        try:
            save_policy(policy_path, trainer.policy_weights(), **trainer.policy_payload(),
                        metrics={"train_wall_time_s": st.wall_time_s, "env_steps": st.env_steps,
                                 "selected_snapshot": {"env_steps": st.best_selection_step,
                                                       "success_rate": st.best_selection_score},
                                 "diverged": {"env_steps": st.env_steps,
                                              "reason": diverged.reason}})
            kept = (f"kept the best finite snapshot (hover success "
                    f"{100 * st.best_selection_score:.1f}% at {st.best_selection_step} steps) as "
                    f"{policy_path}")
        except Exception as exc:  # noqa: BLE001
            kept = f"the best finite snapshot could not be saved ({_one_line(exc)})"
    else:
        kept = (f"no policy saved: no finite snapshot was kept (checkpoint selection starts at "
                f"{trainer.cfg.selection_start} steps)" if trainer.cfg.selection_interval else
                "no policy saved: checkpoint selection is off, so no finite snapshot was kept")
    return _keep_checkpoint(trainer, run_dir, f"{diverged}; {kept}",
                            " (the state at the divergence: resumed, it diverges again; a new "
                            "run with a lower learning_rate may not)")


def _stopped_early_line(trainer) -> str:
    """Why the run ended before its step budget: the selection check that stopped it."""
    cfg, st = trainer.cfg, trainer.state
    step, success = st.selection_history[-1][:2] if st.selection_history else (st.env_steps, None)
    reached = "" if success is None else f"{100 * success:.0f} %"
    return (f"stopped early at {step:,} of {cfg.total_env_steps:,} steps: the hover check "
            f"({cfg.selection_episodes} episodes) reached {reached}, at least "
            f"stop_at_selection_success {100 * cfg.stop_at_selection_success:.0f} %")


def _finish_run(args, trainer, run_dir: Path, policy_path: Path, metrics_path: Path,
                resumed_at_s: float = 0.0) -> int:
    """Save the policy, evaluate it, plot, write summary.json and report. Exit status 1 when
    the final evaluation misses its threshold (as ``nanofly eval``; everything is saved)."""
    actor = trainer.policy_weights()
    summary, time_to_policy_s = _save_trained_policy(trainer, actor, run_dir, policy_path)
    hover = None
    if args.eval_episodes > 0:
        hover = _final_evaluation(args, trainer, actor, policy_path, summary)
    if not args.no_plots:
        from .plots import plot_hover_rollouts, plot_learning_curve

        plot_learning_curve(metrics_path, run_dir / "learning_curve.png")
        if hover is not None:
            plot_hover_rollouts(hover["_trajectories"], run_dir)
    summary = _json_safe(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    passed = summary.get("eval", {}).get("hover", {}).get("passed", True)
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        _report_finished(summary, trainer, run_dir, policy_path, time_to_policy_s, resumed_at_s)
    return 0 if passed else 1


def _selected_snapshot(trainer) -> dict[str, Any] | None:
    """The snapshot checkpoint selection kept (its step, hover success and check history), or
    None when selection kept none."""
    cfg, st = trainer.cfg, trainer.state
    if st.best_selection_step < 0:
        return None
    return {"env_steps": st.best_selection_step, "success_rate": st.best_selection_score,
            "episodes": cfg.selection_episodes, "seed": cfg.selection_seed,
            "history": st.selection_history}


def _save_trained_policy(trainer, actor, run_dir: Path, policy_path: Path):
    """Save ``actor`` as the policy and remove the checkpoint (the run is complete): (the summary's
    training figures, seconds from the command's start to the saved policy)."""
    from nanofly.policy.file import save_policy

    cfg, st = trainer.cfg, trainer.state
    selection = _selected_snapshot(trainer)
    save_policy(policy_path, actor, **trainer.policy_payload(),
                metrics={"train_wall_time_s": st.wall_time_s, "env_steps": st.env_steps,
                         "selected_snapshot": selection})
    time_to_policy_s = time.perf_counter() - PROCESS_START
    saved_at = time.time()
    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "policy": str(policy_path), "seed": cfg.seed,
        "train_wall_time_s": round(st.wall_time_s, 3),
        "selection_wall_time_s": round(st.selection_wall_time_s, 3),  # part of train_wall_time_s
        "cli_start_to_saved_policy_s": round(time_to_policy_s, 3),
        "policy_saved_at_unix": saved_at,
        "env_steps": st.env_steps, "critic_updates": st.critic_updates,
        "actor_updates": st.actor_updates,
        "one_thread_updates": trainer.core.updates_without_helper,  # a busy machine: speed only
        "selected_snapshot": selection,
        "stopped_early": st.stopped_early,
        "int8_aware_steps": (st.env_steps - (st.int8_aware_until - cfg.int8_aware_steps)
                             if st.int8_aware_until >= 0 else 0),
    }
    return summary, time_to_policy_s


def _final_evaluation(args, trainer, actor, policy_path: Path, summary: dict[str, Any]):
    """The hover suite on the saved policy (``--eval-episodes`` episodes, 8 recorded for the
    plots): its figures go into ``summary`` and the policy file (saved again with ``actor``).
    Returns the suite's result."""
    from nanofly.policy.file import save_policy

    from .evaluate import TorchPolicy, hover_suite, policy_mdp, public

    policy = TorchPolicy(policy_path)
    preset, mdp = policy_mdp(policy.payload)
    t0 = time.perf_counter()
    bar = ProgressBar(mdp.episode_steps, enabled=not args.json, line_every_s=10.0,
                      label=f"final evaluation, hover suite, {args.eval_episodes} episodes")
    result = hover_suite(policy, preset=preset, mdp=mdp, episodes=args.eval_episodes,
                         record=8, progress=lambda done, total: bar.update(
                             done, time.perf_counter() - t0))
    bar.close()
    summary["eval_wall_time_s"] = round(time.perf_counter() - t0, 3)
    summary["eval"] = {"hover": public(result)}
    # store the figures in the policy file too (self-describing)
    st = trainer.state
    save_policy(policy_path, actor, **trainer.policy_payload(),
                metrics={"train_wall_time_s": st.wall_time_s, "env_steps": st.env_steps,
                         "selected_snapshot": summary["selected_snapshot"],
                         "hover": public(result)})
    return result


def _report_finished(summary: dict[str, Any], trainer, run_dir: Path, policy_path: Path,
                     time_to_policy_s: float, resumed_at_s: float) -> None:
    """The closing lines: where the policy is, how long training took, the hover suite."""
    train_wall = trainer.state.wall_time_s
    if resumed_at_s > 0:
        took = (f"{format_duration(train_wall)} of training in all: "
                f"{format_duration(resumed_at_s)} before the resume and "
                f"{format_duration(train_wall - resumed_at_s)} in this run, "
                f"{format_duration(time_to_policy_s)} since this command started")
    else:
        took = (f"{format_duration(train_wall)} of training, "
                f"{format_duration(time_to_policy_s)} since the command started")
    print(f"saved {policy_path}: {took}")
    if "eval" in summary:
        h = summary["eval"]["hover"]
        passed = h.get("passed", True)
        rmse = h["final_position_rmse_m"]
        print(f"hover suite [{'PASS' if passed else 'FAIL'}]: success {100 * h['success_rate']:.1f} % "
              f"(threshold {100 * h['thresholds']['min_success_rate']:.0f} %) over "
              f"{h['episodes']} episodes, final position RMSE "
              f"{'-' if rmse is None else f'{rmse:.3f} m'}")
        if not passed:
            print(f"the policy misses the hover threshold: exit status 1 (the run directory "
                  f"{run_dir} and the policy are saved; train longer or check the settings)",
                  file=sys.stderr)
