"""``nanofly sweep``: many ``nanofly train`` runs (seeds x a grid or random samples of options)
as Ray tasks, on this machine or a Ray cluster, with one results table.

Each trial is one ``python -m nanofly train`` process (a fresh interpreter: numba's and the
update threads' state never leak from one trial into the next, and a killed worker is simply
run again) inside a Ray task that asks for ``cpus_per_trial`` CPUs. Trials are a fixed,
ordered list (a grid, or random samples drawn with a fixed seed), so the same command always
makes the same trials: a re-run skips the finished ones.

Where run directories go: every trial's run directory ends up under the driver's ``--out``.
A worker that sees the driver's ``--out`` (the same machine, or a filesystem shared by the
nodes; checked by reading a random token the driver wrote there) trains into it directly. Any
other worker trains into a temporary folder and returns the run directory as a gzipped tar
through Ray's object store; the driver unpacks it. docs/sweeps.md has the details.

This module imports neither Ray nor numpy at import time (``nanofly --help`` stays fast); Ray
is an optional dependency: ``pip install "nanofly[sweep]"``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from nanofly.train.commands import ABLATIONS  # --no-<name> switches (TrainConfig booleans)

INSTALL_HINT = 'pip install "nanofly[sweep]"'
SWEEP_DIR = ".sweep"  # under --out: the token, the trials' config files, attempt logs
TRIAL_RECORD = "sweep_trial.json"  # in each run directory: the trial's row of results.json
# `nanofly train` options that are not TrainConfig fields, with their key in a sweep
TRAIN_CLI_KEYS = {"steps": "total_env_steps"}
RUN_KEYS = ("eval_episodes",)  # options of the run, not of the TrainConfig
VEHICLE_PREFIX = "vehicle."
RESULT_COLUMNS = ("trial", "seed", "status", "time_to_policy_s", "env_steps", "hover_success",
                  "figure8_rmse_m", "attempts", "node", "error")
DEFAULT_FIGURE8_EPISODES = 16  # the figure8 suite's own default


class SweepError(ValueError):
    """Bad sweep input (one line; the CLI prints it and exits with status 2)."""


class TrialProcessLost(RuntimeError):
    """The trial's training process was killed by a signal it did not handle (the OOM killer,
    a kill -9): Ray runs the trial again (``max_retries``)."""


def require_ray():
    """The ``ray`` module, or a SweepError naming the extra to install."""
    try:
        import ray
    except ModuleNotFoundError:
        raise SweepError(f"nanofly sweep needs Ray, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------
def parse_seeds(text: str | list | int) -> list[int]:
    """``"0-9"``, ``"0,3,5"``, ``"0-4,7"`` (or a list / an int from TOML) -> seeds in order,
    each once."""
    if isinstance(text, bool):
        raise SweepError(f"seeds: expected integers like 0-9 or 0,3,5, got {text!r}")
    if isinstance(text, int):
        return [text]
    items = text if isinstance(text, list) else str(text).split(",")
    seeds: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            part = [item]
        else:
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(item))
            if not m:
                raise SweepError(f"seeds: expected integers like 0-9 or 0,3,5, got {item!r}")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise SweepError(f"seeds: range {item!r} runs backwards (write {hi}-{lo})")
            part = list(range(lo, hi + 1))
        seeds += [s for s in part if s not in seeds]
    return seeds


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: ``[64,64],[32,32]`` -> two items."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _parse_value(text: str) -> Any:
    """One value written as TOML (``1e-3``, ``true``, ``[64, 64]``, ``"x"``); anything else is
    a bare string (a preset name)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@dataclasses.dataclass(frozen=True)
class Range:
    """A continuous range for random samples (``key=LOW..HIGH``, ``log:LOW..HIGH``)."""

    low: float
    high: float
    log: bool = False

    def draw(self, rng: random.Random) -> float | int:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.log:
            return int(round(value))
        return float(f"{value:.6g}")  # a readable value, the same in the file and the table


def parse_set(item: str) -> tuple[str, list[Any] | Range]:
    """``KEY=V1,V2,...`` (or ``KEY=LOW..HIGH`` / ``KEY=log:LOW..HIGH`` for random samples)."""
    key, sep, values = item.partition("=")
    key = normalize_key(key.strip())
    if not sep or not key or not values.strip():
        raise SweepError(f"--set expects KEY=V1,V2,... (e.g. learning_rate=1e-3,5e-4), "
                         f"got {item!r}")
    m = re.fullmatch(r"\s*(log:)?\s*([-+0-9.eE]+)\s*\.\.\s*([-+0-9.eE]+)\s*", values)
    if m:
        low, high = _parse_value(m.group(2)), _parse_value(m.group(3))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise SweepError(f"--set {key}: a range needs two numbers, got {values!r}")
        if not low < high or (m.group(1) and low <= 0):
            raise SweepError(f"--set {key}: range {values!r} must have LOW < HIGH"
                             + (" and LOW > 0 (log scale)" if m.group(1) else ""))
        return key, Range(low, high, bool(m.group(1)))
    return key, [_parse_value(v) for v in _split_top_level(values)]


def normalize_key(key: str) -> str:
    """A sweep key in the form results use: underscores, ``steps`` -> ``total_env_steps``;
    ``no-<ablation>`` stays (its values are negated when the trial is built)."""
    key = key.strip()
    if key.startswith(VEHICLE_PREFIX):
        return key
    key = key.lstrip("-").replace("-", "_")
    return TRAIN_CLI_KEYS.get(key, key)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run of a sweep: a seed and the options it sets (sweep keys -> values)."""

    seed: int
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The run directory's name: readable, the same for the same trial in every run."""
        parts = [f"{key.removeprefix(VEHICLE_PREFIX)}={_short(value)}"
                 for key, value in self.params]
        name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "_".join([*parts, f"seed{self.seed}"]))
        if len(name) > 80:
            digest = hashlib.sha1(json.dumps([self.seed, self.params]).encode()).hexdigest()[:8]
            name = f"{name[:60]}-{digest}_seed{self.seed}"
        return name

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "x".join(_short(v) for v in value)
    return str(value)


def build_trials(seeds: list[int], sets: dict[str, list[Any] | Range], samples: int = 0,
                 sample_seed: int = 0) -> list[Trial]:
    """Every seed x (the grid of the ``sets``, or ``samples`` random draws from them)."""
    swept = dict(sets)
    if samples:
        rng = random.Random(sample_seed)
        combos = [tuple((k, v.draw(rng) if isinstance(v, Range) else rng.choice(v))
                        for k, v in swept.items()) for _ in range(samples)]
    else:
        ranges = [k for k, v in swept.items() if isinstance(v, Range)]
        if ranges:
            raise SweepError(f"--set {ranges[0]}: a LOW..HIGH range needs --samples N (random "
                             f"draws); a grid takes listed values")
        combos = [()]
        for key, values in swept.items():
            combos = [(*c, (key, v)) for c in combos for v in values]
    return [Trial(seed, combo) for combo in combos for seed in seeds]


@dataclasses.dataclass
class TrialPlan:
    """What a worker needs to run one trial (plain data: it travels to the worker)."""

    name: str
    seed: int
    params: dict[str, Any]
    train: dict[str, Any]  # the [train] table of the trial's config file (TrainConfig keys)
    vehicle_toml: str | None  # a preset with changed fields, or None
    eval_episodes: int | None  # nanofly train --eval-episodes (None: its default)


def plan_trials(trials: list[Trial], fixed: dict[str, Any], base_train: dict[str, Any],
                cpus_per_trial: int) -> list[TrialPlan]:
    """Each trial's TrainConfig (and vehicle), checked now: a bad key or value is a SweepError
    before anything runs."""
    from nanofly.sim.presets import PresetError, get_preset
    from nanofly.train.td3 import TrainConfig

    config_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    plans = []
    for trial in trials:
        train = dict(base_train)
        vehicle: dict[str, Any] = {}
        eval_episodes = None
        for key, value in [*fixed.items(), *trial.params]:
            if key.startswith(VEHICLE_PREFIX):
                vehicle[key[len(VEHICLE_PREFIX):]] = value
            elif key == "eval_episodes":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise SweepError(f"eval_episodes must be an integer >= 0, got {value!r}")
                eval_episodes = value
            elif key.startswith("no_") and key[3:] in ABLATIONS:
                if not isinstance(value, bool):
                    raise SweepError(f"{key} takes true or false, got {value!r}")
                train[key[3:]] = not value
            elif key in config_keys:
                train[key] = value
            else:
                raise SweepError(
                    f"unknown option {key!r}: a sweep sets TrainConfig fields (e.g. "
                    f"learning_rate), steps, eval_episodes, no_<ablation> or vehicle.<field> "
                    f"(known TrainConfig fields: {', '.join(sorted(config_keys))})")
        train["seed"] = trial.seed
        if cpus_per_trial < 2 and "update_threads" not in train:
            train["update_threads"] = 1  # the same bits, without two threads sharing one CPU
        try:
            cfg = TrainConfig.from_dict(train)
        except ValueError as exc:
            raise SweepError(f"trial {trial.name}: {exc}") from None
        vehicle_toml = None
        try:
            preset = get_preset(cfg.preset)
            if vehicle:
                from nanofly.sim.presets import VehicleParams

                known = {f.name for f in dataclasses.fields(VehicleParams)}
                unknown = sorted(set(vehicle) - known)
                if unknown:
                    raise SweepError(f"unknown vehicle field(s) {unknown}; known: {sorted(known)}")
                data = {**preset.to_dict(), **vehicle}
                data["name"] = f"{preset.name}-{trial.name}"
                vehicle_toml = VehicleParams.from_dict(data, source=f"trial {trial.name}").to_toml()
        except (PresetError, OSError) as exc:
            raise SweepError(f"trial {trial.name}: preset: {exc}") from None
        plans.append(TrialPlan(trial.name, trial.seed, trial.as_dict(), train, vehicle_toml,
                               eval_episodes))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"two trials would share the run directory {dup!r} (a value listed "
                         f"twice?)")
    return plans


# --------------------------------------------------------------------------------------------
# One trial (runs inside a Ray task, on any node)
# --------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the training process: SIGKILL when the Ray worker that started it dies, so that a
    killed worker leaves no orphan writing into the run directory its retry starts again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the orphan finishes on its own
        pass


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    text = (errors or lines or ["(no message)"])[-1]
    return text if len(text) <= 400 else text[:397] + "..."


def run_trial(plan: TrialPlan, out: str, token: str, transfer: str, figure8_episodes: int,
              plots: bool, env: dict[str, str] | None = None,
              trial_fn: Callable | None = None, cold_numba_cache: bool = False) -> dict[str, Any]:
    """Train one trial (``nanofly train`` in a subprocess, or ``trial_fn(plan, run_dir)``) and
    return its row of the results (with ``archive``: the run directory as tar.gz bytes when it
    was trained away from the driver's ``out``)."""
    sweep_dir = Path(out) / SWEEP_DIR
    try:
        direct = (sweep_dir / "token").read_text() == token
    except OSError:
        direct = False
    if direct:  # attempts are counted where the driver can read them
        with open(sweep_dir / "attempts" / plan.name, "a") as log:
            log.write(f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n")
    local = direct and transfer != "object-store"
    root = Path(out) if local else Path(tempfile.mkdtemp(prefix="nanofly-sweep-"))
    cache = tempfile.mkdtemp(prefix="nanofly-cold-numba-") if cold_numba_cache else None
    if cache:  # an empty numba cache: the trial compiles every kernel (time to policy, cold)
        env = {**(env or {}), "NUMBA_CACHE_DIR": cache}
    try:
        row = _train_trial(plan, root, figure8_episodes, plots, env, trial_fn)
        if direct:
            row["attempts"] = len((sweep_dir / "attempts" / plan.name).read_text().splitlines())
        row["node"] = socket.gethostname()
        run_dir = root / plan.name
        run_dir.mkdir(parents=True, exist_ok=True)  # a trial that failed early made none
        (run_dir / TRIAL_RECORD).write_text(json.dumps(row, indent=2, allow_nan=False))
        if not local:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(run_dir, arcname=plan.name)
            row["archive"] = buffer.getvalue()
        return row
    finally:
        if not local:
            shutil.rmtree(root, ignore_errors=True)
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


def _row(plan: TrialPlan, status: str, error: str | None = None, **figures: Any) -> dict[str, Any]:
    return {"trial": plan.name, "seed": plan.seed, "parameters": plan.params, "status": status,
            "time_to_policy_s": None, "env_steps": None, "hover_success": None,
            "figure8_rmse_m": None, "attempts": None, "node": None, "error": error, **figures}


def _train_trial(plan: TrialPlan, root: Path, figure8_episodes: int, plots: bool,
                 env: dict[str, str] | None, trial_fn: Callable | None) -> dict[str, Any]:
    run_dir = root / plan.name
    files = root / SWEEP_DIR / "trials"
    files.mkdir(parents=True, exist_ok=True)
    previous = _read_record(run_dir)
    resume = ((run_dir / "checkpoint.npz").is_file() and trial_fn is None
              and (previous or {}).get("status") != "failed")
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a failed or killed attempt: start again
    train = dict(plan.train)
    if plan.vehicle_toml:
        vehicle = files / f"{plan.name}.vehicle.toml"
        vehicle.write_text(plan.vehicle_toml)
        train["preset"] = str(vehicle)
    if trial_fn is not None:
        run_dir.mkdir(parents=True)
        figures = trial_fn(plan, train, run_dir)
        return _row(plan, "ok", **figures)
    from nanofly.sim.presets import dumps_toml

    config = files / f"{plan.name}.toml"
    config.write_text(dumps_toml({"train": train}))
    command = [sys.executable, "-m", "nanofly", "train", "--json"]
    command += (["--resume", str(run_dir)] if resume
                else ["--out", str(run_dir), "--config", str(config)])
    if plan.eval_episodes is not None:
        command += ["--eval-episodes", str(plan.eval_episodes)]
    if not plots:
        command.append("--no-plots")
    launched = time.time()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            # in short waits: Ray's cancel (Ctrl-C at the driver) interrupts this thread only
            # between Python steps, never inside one long wait
            while proc.poll() is None:
                time.sleep(0.2)
        except BaseException:  # cancelled: the training saves a checkpoint and stops
            # SIGTERM, not SIGINT: Ray workers ignore SIGINT, and so would their children
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    process_wall_s = round(time.time() - launched, 3)  # launch to exit of `nanofly train`
    if proc.returncode < 0 and proc.returncode != -signal.SIGINT:
        raise TrialProcessLost(f"trial {plan.name}: the training process was killed by signal "
                               f"{-proc.returncode}")
    if proc.returncode in (130, 143, 129):
        return _row(plan, "interrupted", _last_error_line(stderr))
    # exit status 1 with the summary printed: trained and saved, but the final evaluation
    # missed its threshold (a row with its figures, hover_passed false)
    gate_missed = proc.returncode == 1 and stdout.lstrip().startswith("{")
    if proc.returncode != 0 and not gate_missed:
        return _row(plan, "failed", _last_error_line(stderr))
    summary = json.loads(stdout)
    hover = (summary.get("eval") or {}).get("hover") or {}
    row = _row(plan, "ok",
               time_to_policy_s=round(summary["policy_saved_at_unix"] - launched, 3),
               train_process_wall_s=process_wall_s,
               env_steps=summary["env_steps"], hover_success=hover.get("success_rate"),
               train_wall_time_s=summary["train_wall_time_s"],
               selection_wall_time_s=summary.get("selection_wall_time_s"),
               hover_final_position_rmse_m=hover.get("final_position_rmse_m"),
               hover_termination_rate=hover.get("termination_rate"),
               hover_mean_steps_before_termination=hover.get("mean_steps_before_termination"),
               hover_passed=hover.get("passed"),
               stopped_early=summary.get("stopped_early"),
               selected_env_steps=(summary.get("selected_snapshot") or {}).get("env_steps"))
    if resume:
        row["time_to_policy_s"] = None  # resumed: the time of the parts is not one launch
    if figure8_episodes > 0:
        ev = subprocess.run([sys.executable, "-m", "nanofly", "eval", str(run_dir / "policy.pt"),
                             "--suite", "figure8", "--episodes", str(figure8_episodes), "--json"],
                            capture_output=True, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=_die_with_parent)
        if ev.returncode in (0, 1):  # 1: below the suite's threshold, figures still printed
            figure8 = json.loads(ev.stdout)["suites"]["figure8"]
            (run_dir / "eval_figure8.json").write_text(json.dumps(figure8, indent=2))
            row["figure8_rmse_m"] = figure8.get("position_rmse_m")
        else:
            row["status"], row["error"] = "failed", f"figure8 eval: {_last_error_line(ev.stderr)}"
    return row


def _read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / TRIAL_RECORD).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def check_address(address: str | None, timeout_s: float = 3.0) -> None:
    """A SweepError unless ``HOST:PORT`` accepts a TCP connection (``auto``: Ray finds it)."""
    if address in (None, "auto", "local"):
        return
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("ray://").strip("[]")
    if not sep or not port.isdigit():
        raise SweepError(f"--address expects HOST:PORT (the head's `ray start --head --port`), "
                         f"or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SweepError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); "
                         f"start one with: ray start --head --port {port}") from None


def prepare_out(out: Path) -> str:
    """Create ``out`` (or reopen an earlier sweep's), check that it takes files, and write the
    token by which workers recognize it; returns the token."""
    from nanofly.train.commands import probe_writable

    try:
        if out.exists() and not out.is_dir():
            raise SweepError(f"--out {out} is a file, not a directory")
        if out.is_dir() and any(out.iterdir()) and not (out / SWEEP_DIR).is_dir():
            raise SweepError(f"--out {out} holds other files (not an earlier sweep); give a new "
                             f"directory")
        (out / SWEEP_DIR / "attempts").mkdir(parents=True, exist_ok=True)
        probe_writable(out)
        token = os.urandom(16).hex()
        (out / SWEEP_DIR / "token").write_text(token)
        return token
    except OSError as exc:
        raise SweepError(f"cannot write --out {out}: {exc.strerror or exc}") from None


def _finished(out: Path, plans: list[TrialPlan]) -> dict[str, dict[str, Any]]:
    """Rows of trials an earlier run of the same sweep finished (their run directories
    hold a record with status ok and the same options); other options there are an error."""
    done = {}
    for plan in plans:
        record = _read_record(out / plan.name)
        if not record or record.get("status") != "ok":
            continue
        config = out / SWEEP_DIR / "trials" / f"{plan.name}.toml"
        try:
            earlier = tomllib.loads(config.read_text())["train"]
        except (OSError, tomllib.TOMLDecodeError, KeyError):
            earlier = None
        expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.train.items()}
        if plan.vehicle_toml:
            expected["preset"] = earlier.get("preset") if earlier else None
        if earlier is not None and earlier != expected:
            raise SweepError(f"--out {out} holds trial {plan.name} trained with other options; "
                             f"give a new --out for a changed sweep")
        done[plan.name] = record
    return done


class SweepProgress:
    """One line: trials done / running / failed and an ETA (a line per change when stderr is
    not a terminal)."""

    def __init__(self, total: int, enabled: bool, stream=sys.stderr):
        self.total, self.enabled, self.stream = total, enabled, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = ""

    def update(self, done: int, running: int, failed: int, skipped: int, elapsed: float,
               eta_s: float | None) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * (done + failed) / max(1, self.total))
        eta = "-" if eta_s is None else f"{eta_s:.0f}s"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done + failed}/{self.total} trials | "
                f"{done} done ({skipped} earlier) | {running} running | {failed} failed | "
                f"{elapsed:.0f}s | eta {eta}")
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        elif line.split(" | ")[:4] != self.last.split(" | ")[:4]:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_sweep(plans: list[TrialPlan], out: str | Path, *, address: str | None = None,
              cpus_per_trial: int = 2, max_retries: int = 2, transfer: str = "auto",
              figure8_episodes: int = DEFAULT_FIGURE8_EPISODES, plots: bool = True,
              progress: bool = True, env: dict[str, str] | None = None,
              trial_fn: Callable | None = None, cold_numba_cache: bool = False,
              write_summary: bool = True) -> dict[str, Any]:
    """Run every trial not finished before; write results.{csv,json}, the summary plot and
    best_policy.pt under ``out``; return ``{"trials": rows, "interrupted": bool, ...}``.

    ``trial_fn(plan, train_options, run_dir) -> dict`` replaces ``nanofly train`` with a
    Python function (for experiments that change the training code itself); it is pickled to
    the workers. ``cold_numba_cache``: every trial starts with an empty numba cache."""
    if cpus_per_trial < 1:
        raise SweepError(f"--cpus-per-trial must be >= 1, got {cpus_per_trial}")
    if transfer not in ("auto", "object-store"):
        raise SweepError(f"--transfer must be auto or object-store, got {transfer!r}")
    if not plans:
        raise SweepError("the sweep has no trials (no seeds, or a --set with no values)")
    ray = require_ray()
    check_address(address)
    out = Path(out).absolute()
    new_out = not out.exists()
    token = prepare_out(out)
    done = _finished(out, plans)
    todo = [p for p in plans if p.name not in done]
    rows: dict[str, dict[str, Any]] = dict(done)
    interrupted = False
    started = time.perf_counter()
    bar = SweepProgress(len(plans), progress)
    ray_start_s = None
    if todo:
        # Ray prints the cluster's notices (a worker died, a task is retried) to stdout:
        # stderr keeps stdout for the results (--json)
        with contextlib.redirect_stdout(sys.stderr):
            try:
                _init_ray(ray, address, cpus_per_trial)
                ray_start_s = round(time.perf_counter() - started, 3)
            except SweepError:
                if new_out:  # nothing ran: leave nothing behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            try:
                interrupted = _drive(ray, todo, rows, out, token, bar, started, len(done),
                                     cpus_per_trial, max_retries, transfer,
                                     (figure8_episodes, plots, env, trial_fn, cold_numba_cache))
            finally:
                ray.shutdown()
    bar.update(sum(r["status"] == "ok" for r in rows.values()), 0,
               sum(r["status"] == "failed" for r in rows.values()), len(done),
               time.perf_counter() - started, 0.0)
    bar.close()
    ordered = [rows.get(p.name) or _row(p, "not run") for p in plans]
    result = {"out": str(out), "trials": ordered, "interrupted": interrupted,
              "wall_time_s": round(time.perf_counter() - started, 3),
              "ray_start_s": ray_start_s, "skipped_finished_earlier": len(done)}
    if write_summary:
        swept = list(dict.fromkeys(k for p in plans for k in p.params))  # in order of appearance
        result.update(write_results(out, ordered, swept))
    return result


def _init_ray(ray, address: str | None, cpus_per_trial: int) -> None:
    import logging

    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    try:
        if address in (None, "local"):
            from nanofly.train.td3_core import usable_cpus

            # "local": a private Ray even where `ray start` left a cluster running here
            ray.init(address="local", num_cpus=max(usable_cpus(), cpus_per_trial),
                     include_dashboard=False, **kwargs)
        else:
            # A driver in token mode also joins a cluster without authentication, but not the
            # other way round (`ray start --head` turns tokens on in recent Ray): with a token
            # at hand and no mode chosen, use it.
            if "RAY_AUTH_MODE" not in os.environ and (
                    os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                    or (Path.home() / ".ray" / "auth_token").is_file()):
                os.environ["RAY_AUTH_MODE"] = "token"
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Failed to connect" in why:  # what a missing or wrong token looks like
            why += ("; a cluster with token authentication needs its token here: "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise SweepError(f"--address {address}: cannot join the Ray cluster ({why})") from None
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if largest < cpus_per_trial:
        ray.shutdown()
        raise SweepError(f"each trial asks for {cpus_per_trial} CPUs but the largest node has "
                         f"{largest:g}; lower --cpus-per-trial")


def _drive(ray, todo, rows, out: Path, token: str, bar: SweepProgress, started: float,
           skipped: int, cpus_per_trial: int, max_retries: int, transfer: str,
           trial_args: tuple) -> bool:
    """Submit the trials, collect rows as they finish; True when stopped by Ctrl-C."""
    task = ray.remote(run_trial).options(num_cpus=cpus_per_trial, max_retries=max_retries,
                                         retry_exceptions=[TrialProcessLost])
    pending = {task.remote(p, str(out), token, transfer, *trial_args): p for p in todo}
    interrupted = False

    def collect(ref) -> None:
        plan = pending.pop(ref)
        try:
            row = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            row = _row(plan, "interrupted", "stopped by Ctrl-C")
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            text = str(cause).strip().splitlines()
            row = _row(plan, "failed", f"{type(cause).__name__}: {text[-1] if text else ''}"[:400])
            try:  # the attempts the workers that see --out logged
                log = out / SWEEP_DIR / "attempts" / plan.name
                row["attempts"] = len(log.read_text().splitlines())
            except OSError:
                pass
        archive = row.pop("archive", None)
        if archive:
            target = out / plan.name
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                tar.extractall(out, filter="data")
        rows[plan.name] = row

    try:
        slots = _slots(ray, cpus_per_trial)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                collect(ref)
            ok = sum(r["status"] == "ok" for r in rows.values())
            failed = sum(r["status"] == "failed" for r in rows.values())
            elapsed = time.perf_counter() - started
            finished_here = len(rows) - skipped
            eta = (elapsed / finished_here * len(pending)) if finished_here else None
            bar.update(ok, min(len(pending), slots), failed, skipped, elapsed, eta)
    except KeyboardInterrupt:
        interrupted = True
        for ref in pending:
            ray.cancel(ref)  # the task sends SIGTERM to its training process: a checkpoint
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            try:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                break
            for ref in ready:
                collect(ref)
        for plan in pending.values():
            rows[plan.name] = _row(plan, "interrupted", "stopped by Ctrl-C")
    return interrupted


def _slots(ray, cpus_per_trial: int) -> int:
    return sum(int(n["Resources"].get("CPU", 0) // cpus_per_trial)
               for n in ray.nodes() if n.get("Alive")) or 1


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the highest hover success; ties: the lower figure-eight RMSE,
    then the shorter time to its policy."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    inf = float("inf")
    return min(ok, key=lambda r: (-(r["hover_success"] if r["hover_success"] is not None else -1),
                                  r["figure8_rmse_m"] if r["figure8_rmse_m"] is not None else inf,
                                  r["time_to_policy_s"] if r["time_to_policy_s"] is not None
                                  else inf))


def write_results(out: Path, rows: list[dict[str, Any]], swept: list[str]) -> dict[str, Any]:
    """results.json, results.csv, summary.png and best_policy.pt under ``out``."""
    best = best_trial(rows)
    (out / "results.json").write_text(json.dumps(
        {"trials": rows, "best": best["trial"] if best else None}, indent=2, allow_nan=False))
    keys = swept
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*RESULT_COLUMNS[:2], *keys, *RESULT_COLUMNS[2:]])
        for r in rows:
            writer.writerow([r["trial"], r["seed"], *(r["parameters"].get(k) for k in keys),
                             *("" if r.get(c) is None else r.get(c) for c in RESULT_COLUMNS[2:])])
    extra: dict[str, Any] = {"best": None}
    if best and (out / best["trial"] / "policy.pt").is_file():
        shutil.copyfile(out / best["trial"] / "policy.pt", out / "best_policy.pt")
        extra["best"] = {"trial": best["trial"], "policy": str(out / "best_policy.pt"),
                         "hover_success": best["hover_success"],
                         "figure8_rmse_m": best["figure8_rmse_m"]}
    if any(r["status"] == "ok" for r in rows):
        plot_summary(rows, keys, out / "summary.png")
        extra["plot"] = str(out / "summary.png")
    return extra


def plot_summary(rows: list[dict[str, Any]], keys: list[str], path: Path) -> Path:
    """Hover success and time to policy per value of each swept key (one column each; the
    seed when nothing else is swept), and the distribution of the time to policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    keys = keys or ["seed"]
    fig, axes = plt.subplots(2, len(keys) + 1, figsize=(4 * (len(keys) + 1), 6), squeeze=False)
    for col, key in enumerate(keys):
        values = sorted({_short(r["seed"] if key == "seed" else r["parameters"].get(key))
                         for r in ok}, key=_sort_key)
        where = {v: i for i, v in enumerate(values)}
        for row_index, (field, label) in enumerate((("hover_success", "hover success"),
                                                     ("time_to_policy_s", "time to policy (s)"))):
            ax = axes[row_index][col]
            for r in ok:
                if r[field] is not None:
                    x = where[_short(r["seed"] if key == "seed" else r["parameters"].get(key))]
                    ax.plot(x, r[field], "o", color="tab:blue", alpha=0.6)
            if field == "hover_success":
                ax.set_ylim(-0.02, 1.02)
            ax.set_xticks(range(len(values)), values, rotation=30, fontsize=8)
            ax.set_xlabel(key)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    times = [r["time_to_policy_s"] for r in ok if r["time_to_policy_s"] is not None]
    axes[0][-1].hist(times, bins=max(1, min(20, len(times))), color="tab:green")
    axes[0][-1].set_xlabel("time to policy (s)")
    axes[0][-1].set_ylabel("trials")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "interrupted")}
    axes[1][-1].bar(list(counts), list(counts.values()), color=["tab:green", "tab:red", "tab:gray"])
    axes[1][-1].set_ylabel("trials")
    fig.suptitle(f"nanofly sweep: {len(rows)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _sort_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def options_from_train_args(argv: list[str]) -> dict[str, Any]:
    """``nanofly train`` options (``["--steps", "300000", "--no-curriculum"]``) as sweep
    options (``{"total_env_steps": 300000, "no_curriculum": True}``), read by train's own
    parser; ``--config FILE`` gives its [train] table."""
    from nanofly.cli import build_parser
    from nanofly.train.commands import _given_options

    args = build_parser().parse_args(["train", *argv])
    try:
        options = _given_options(args)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    if "--eval-episodes" in argv:
        options["eval_episodes"] = args.eval_episodes
    if "seed" in options:
        raise SweepError("a sweep gives each trial its seed: leave --seed out of the options")
    return options


def sweep_trainings(out: str | Path, *, seeds: list[int], grid: dict[str, list] | None = None,
                    options: dict[str, Any] | None = None, trials: list[Trial] | None = None,
                    samples: int = 0, sample_seed: int = 0, cpus_per_trial: int = 2,
                    **run_options: Any) -> dict[str, Any]:
    """The Python entry point: ``seeds`` x ``grid`` (sweep keys -> values; or ``trials``
    given one by one), every trial with ``options``; ``run_options`` as ``run_sweep``'s."""
    grid = {normalize_key(k): v for k, v in (grid or {}).items()}
    if trials is None:
        trials = build_trials(seeds, grid, samples, sample_seed)
    options = {normalize_key(k): v for k, v in (options or {}).items()}
    plans = plan_trials(trials, options, {}, cpus_per_trial)
    return run_sweep(plans, out, cpus_per_trial=cpus_per_trial, **run_options)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="many training runs (seeds x options) on Ray, locally or on a cluster",
        description="Run `nanofly train` for every seed x option combination as Ray tasks "
                    "(a local Ray, or a cluster with --address) and collect results.csv, "
                    "results.json, summary.png and best_policy.pt under --out. Re-running the "
                    "same command skips finished trials. Exit status: 0 every trial finished; "
                    "1 some failed; 2 bad input (nothing runs); 130 Ctrl-C (finished trials "
                    f"are kept). Needs Ray: {INSTALL_HINT}. docs/sweeps.md.")
    p.add_argument("--out", required=True, help="sweep directory (new, or an earlier sweep's)")
    p.add_argument("--seeds", default=None, help="seeds: 0-9, 0,3,5 or 0-4,7 (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of an option (repeatable): a TrainConfig field "
                        "(learning_rate=1e-3,5e-4), steps, eval_episodes, no_<ablation> "
                        "(no_curriculum=false,true) or vehicle.<field> (vehicle.mass=0.027,0.03); "
                        "one value sets it for every trial; LOW..HIGH or log:LOW..HIGH with "
                        "--samples")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="N random draws from the --set values instead of the full grid")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--spec", default=None, metavar="TOML",
                   help="a sweep file: seeds, samples, sample_seed and a [set] table (KEY = "
                        "[values] or \"LOW..HIGH\"); command-line options add to it")
    p.add_argument("--config", default=None,
                   help="TOML with training options for every trial (as nanofly train --config)")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="join a Ray cluster (`ray start --head` prints it) or auto; default: "
                        "start a local Ray on this machine's CPUs")
    p.add_argument("--cpus-per-trial", type=int, default=2,
                   help="CPUs each trial reserves (default 2: two update threads; 1 trains "
                        "with one update thread, the same bits)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="times a trial runs again after its worker or training process is lost")
    p.add_argument("--transfer", choices=("auto", "object-store"), default="auto",
                   help="auto: workers that see --out write into it, others return a tar "
                        "through Ray's object store; object-store: always the tar")
    p.add_argument("--figure8-episodes", type=int, default=DEFAULT_FIGURE8_EPISODES,
                   help="figure-eight suite episodes per trial (0: skip)")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots in the run directories")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(handler=_sweep)


def _load_spec(path: str) -> dict[str, Any]:
    from nanofly.sim.presets import read_toml

    data = read_toml(path, SweepError, prefix="--spec ")
    unknown = sorted(set(data) - {"seeds", "samples", "sample_seed", "set"})
    if unknown:
        raise SweepError(f"--spec {path}: unknown key(s) {unknown}; known: seeds, samples, "
                         f"sample_seed, [set]")
    if not isinstance(data.get("set", {}), dict):
        raise SweepError(f"--spec {path}: 'set' must be a [set] table")
    return data


def _base_train(config: str | None) -> dict[str, Any]:
    if not config:
        return {}
    from nanofly.sim.presets import read_toml

    raw = read_toml(config, SweepError, prefix="--config ")
    table = raw.get("train", raw)
    if not isinstance(table, dict):
        raise SweepError(f"--config {config}: 'train' must be a [train] table")
    return table


def plans_from_args(args) -> list[TrialPlan]:
    """The trials of a ``nanofly sweep`` command line (every check before anything runs)."""
    spec = _load_spec(args.spec) if args.spec else {}
    seeds = parse_seeds(args.seeds if args.seeds is not None else spec.get("seeds", 0))
    sets: dict[str, list[Any] | Range] = {}
    for key, value in spec.get("set", {}).items():
        if isinstance(value, str) and ".." in value:
            sets[normalize_key(key)] = parse_set(f"{key}={value}")[1]
        else:
            sets[normalize_key(key)] = value if isinstance(value, list) else [value]
    for item in args.set:
        key, values = parse_set(item)
        sets[key] = values
    empty = [k for k, v in sets.items() if isinstance(v, list) and not v]
    if empty:
        raise SweepError(f"--set {empty[0]} has no values: the sweep would have no trials")
    samples = args.samples if args.samples else int(spec.get("samples", 0))
    if samples < 0:
        raise SweepError(f"--samples must be >= 0, got {samples}")
    fixed = {k: v[0] for k, v in sets.items() if isinstance(v, list) and len(v) == 1}
    swept = {k: v for k, v in sets.items() if k not in fixed}
    trials = build_trials(seeds, swept, samples,
                          args.sample_seed if args.sample_seed else int(spec.get("sample_seed", 0)))
    if not trials:
        raise SweepError("the sweep has no trials (no seeds, or a --set with no values)")
    if args.figure8_episodes < 0:
        raise SweepError(f"--figure8-episodes must be >= 0, got {args.figure8_episodes}")
    return plan_trials(trials, fixed, _base_train(args.config), args.cpus_per_trial)


def _sweep(args) -> int:
    try:
        require_ray()
        if args.cpus_per_trial < 1:
            raise SweepError(f"--cpus-per-trial must be >= 1, got {args.cpus_per_trial}")
        plans = plans_from_args(args)
        result = run_sweep(plans, args.out, address=args.address,
                           cpus_per_trial=args.cpus_per_trial, max_retries=args.max_retries,
                           transfer=args.transfer, figure8_episodes=args.figure8_episodes,
                           plots=not args.no_plots, progress=not args.json)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = result["trials"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "interrupted")}
    if args.json:
        print(json.dumps({"out": result["out"], "trials": len(rows), **counts,
                          "skipped_finished_earlier": result["skipped_finished_earlier"],
                          "wall_time_s": result["wall_time_s"],
                          "ray_start_s": result["ray_start_s"], "best": result.get("best"),
                          "results": str(Path(result["out"]) / "results.json")}))
    else:
        print(f"{counts['ok']} of {len(rows)} trials finished ({counts['failed']} failed, "
              f"{counts['interrupted']} interrupted) in {result['wall_time_s']:.1f} s: "
              f"{Path(result['out']) / 'results.csv'}")
        if result.get("best"):
            b = result["best"]
            print(f"best: {b['trial']} (hover success {b['hover_success']}, figure-eight RMSE "
                  f"{b['figure8_rmse_m']} m) -> {b['policy']}")
    if result["interrupted"]:
        print("interrupted: finished trials are kept; run the same command again to go on",
              file=sys.stderr)
        return 130
    return 0 if counts["ok"] == len(rows) else 1
