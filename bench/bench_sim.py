"""Simulator benchmark: steps/s of the dynamics kernel and of the full ``VecEnv.step``, for
several environment counts, plus numba compile and import times.

    python bench/bench_sim.py [--threads 2] [--envs N ...] [--no-compile-times]

prints one JSON object.

Speeds are the best of ``repeats`` runs of a fixed number of steps. When the reference
simulator is installed (``pip install l2f``: the C++ simulator of "Learning to Fly in Seconds"
with Python bindings; it compiles from source, a few minutes and ~6 GB of RAM), the same run
times its vectorized ``step`` and ``step`` + ``observe`` at the same environment counts, in a
subprocess with ``OMP_NUM_THREADS`` set to the thread count, and reports the ratios. Otherwise
figures measured for it earlier are quoted as labelled constants.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_ENV_COUNTS = (1, 64, 1024, 65536)
# The reference simulator's step rate, quoted when it is not installed (l2f 2.0.18, 1024 envs,
# measured once on a 2-core machine like CI's; measured in the same run it is lower, see
# docs/benchmarks.md).
REFERENCE_NOTE = {"l2f_steps_per_s_1_thread": 6.3e6, "l2f_steps_per_s_2_threads": 11.2e6,
                  "source": "quoted: l2f 2.0.18, 1024 envs, 2-core machine like CI's "
                            "(not measured in this run)"}


def bench_actions(hover_action: float, n: int, seed: int = 0) -> np.ndarray:
    """The benchmarks' (n, 4) float32 actions: the hover action plus 0.05 N(0, 1), clipped to
    [-1, 1], held fixed (open loop: most episodes crash within about a second)."""
    rng = np.random.default_rng(seed)
    return np.clip(hover_action + 0.05 * rng.standard_normal((n, 4)), -1, 1).astype(np.float32)


def _steps_for(n: int, target_env_steps: float) -> int:
    return int(max(20, min(20000, target_env_steps // n)))


def bench_dynamics(n: int, threads: int, repeats: int = 3, target_env_steps: float = 2e7) -> float:
    from nanofly.sim import dynamics as dyn
    from nanofly.sim.presets import crazyflie_paper as params

    states = np.tile(dyn.hover_state(params), (n, 1))
    blocks = dyn.make_blocks(states, bench_actions(params.hover_action, n),
                             np.tile(dyn.env_param_values(params), (n, 1)).astype(np.float32),
                             dyn.HOVER_PAD_STATE.astype(np.float32),
                             dyn.env_param_values(params).astype(np.float32))
    consts = dyn.make_consts(params, 0.01)
    steps = _steps_for(n, target_env_steps)
    dyn.step_blocks(blocks, consts, threads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            dyn.step_blocks(blocks, consts, threads)
        best = min(best, (time.perf_counter() - start) / steps)
    return n / best


def bench_env(n: int, threads: int, repeats: int = 3, target_env_steps: float = 4e6) -> float:
    from nanofly.sim.env import VecEnv

    env = VecEnv(n, seed=0, threads=threads)
    env.reset()
    actions = bench_actions(env.hover_action, n)
    steps = _steps_for(n, target_env_steps)
    for _ in range(3):
        env.step(actions)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            env.step(actions)
        best = min(best, (time.perf_counter() - start) / steps)
    return n / best


_FIRST_STEP_SCRIPT = r"""
import time
t0 = time.perf_counter()
import numpy as np
from nanofly.sim import VecEnv
env = VecEnv(64, seed=0)
env.reset()
env.step(np.zeros((64, 4), np.float32))
from nanofly.sim import dynamics
from nanofly.sim.presets import crazyflie_paper as p
dynamics.step(np.tile(dynamics.hover_state(p), (3, 1)), np.zeros((3, 4), np.float32), p)
print(time.perf_counter() - t0)
"""


def import_to_first_step(cache_dir: str | None) -> float:
    """Seconds from interpreter start (after Python itself) to the first VecEnv step, in a fresh
    process; ``cache_dir`` points numba's cache somewhere (an empty dir = cold compile)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", _FIRST_STEP_SCRIPT], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def reference_installed() -> bool:
    """Whether the reference simulator (``pip install l2f``) is importable."""
    import importlib.util

    return importlib.util.find_spec("l2f") is not None


# Runs in a fresh process (OpenMP reads OMP_NUM_THREADS at start). l2f's vectorized API has
# one module per power-of-two environment count up to 8192 (``l2f.vector1024`` ...); larger
# counts are timed as several such vectors stepped one after the other. Actions: a constant
# mid-range command (0 in l2f's normalized [-1, 1], below hover thrust: the vehicles sink, with
# finite values, and the cost of an RK4 step does not depend on them); its vectorized step
# never resets, so this times the reference without resets while VecEnv.step pays for its own.
_REFERENCE_SCRIPT = r"""
import json, sys, time
import numpy as np
import l2f
counts, target = json.loads(sys.argv[1]), float(sys.argv[2])
from importlib.metadata import version
out = {"version": version("l2f"), "step": {}, "step_observe": {}}
for n in counts:
    per = min(n, 8192)
    if per & (per - 1) or n % per:
        continue
    vector = getattr(l2f, f"vector{per}")
    device = l2f.Device()
    parts = []
    for k in range(n // per):
        env, params, rng = vector.VectorEnvironment(), vector.VectorParameters(), vector.VectorRng()
        state, next_state = vector.VectorState(), vector.VectorState()
        vector.initialize_rng(device, rng, k)
        vector.initialize_environment(device, env)
        vector.sample_initial_parameters(device, env, params, rng)
        vector.sample_initial_state(device, env, params, state, rng)
        obs = np.zeros((per, env.OBSERVATION_DIM), dtype=np.float32)
        parts.append((env, params, rng, state, next_state, obs))
    actions = np.zeros((per, 4), dtype=np.float32)
    steps = int(max(20, min(20000, target // n)))
    for name, observe in (("step", False), ("step_observe", True)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(steps):
                for k, (env, params, rng, state, next_state, obs) in enumerate(parts):
                    vector.step(device, env, params, state, actions, next_state, rng)
                    if observe:
                        vector.observe(device, env, params, next_state, obs, rng)
                    parts[k] = (env, params, rng, next_state, state, obs)  # the state evolves
            best = min(best, (time.perf_counter() - t) / steps)
        out[name][str(n)] = round(n / best)
print(json.dumps(out))
"""


def bench_reference(env_counts, threads: int, target_env_steps: float = 4e6) -> dict:
    """Steps/s of the reference simulator (``l2f``) at ``env_counts``, or {"error": why}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT, json.dumps(list(env_counts)),
                           str(target_env_steps)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(env_counts=DEFAULT_ENV_COUNTS, threads: int = 1, compile_times: bool = True) -> dict:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    result: dict = {"threads": threads, "dynamics_steps_per_s": {}, "env_steps_per_s": {}}
    if compile_times:
        with tempfile.TemporaryDirectory(prefix="nanofly-numba-") as cache:
            result["numba_cold_compile_s"] = round(import_to_first_step(cache), 3)
            result["import_to_first_step_warm_s"] = round(import_to_first_step(cache), 3)
    for n in env_counts:
        result["dynamics_steps_per_s"][str(n)] = round(bench_dynamics(n, threads))
        result["env_steps_per_s"][str(n)] = round(bench_env(n, threads))
    measured = None
    if reference_installed():
        measured = bench_reference(env_counts, threads)
        if "error" in measured:
            result["reference"] = f"l2f installed, but timing it failed: {measured['error']}"
            measured = None
    else:
        result["reference"] = "l2f not installed (pip install l2f); quoted figures below"
    if measured is not None:
        result["reference"] = f"l2f {measured['version']}, measured in this run"
        result["reference_steps_per_s"] = {"step": measured["step"],
                                           "step_observe": measured["step_observe"]}
        # nanofly's dynamics vs l2f's step; VecEnv.step (observation, reward, termination,
        # resets included) vs l2f's step + observe
        result["ratio_vs_reference"] = {
            "dynamics": {n: result["dynamics_steps_per_s"][n] / v for n, v in measured["step"].items()},
            "env": {n: result["env_steps_per_s"][n] / v for n, v in measured["step_observe"].items()},
        }
        return result
    result["reference_quoted"] = REFERENCE_NOTE
    key = str(max(env_counts))
    result["ratio_vs_quoted_reference"] = {
        "dynamics": result["dynamics_steps_per_s"][key] / (
            REFERENCE_NOTE["l2f_steps_per_s_1_thread"] if threads == 1
            else REFERENCE_NOTE["l2f_steps_per_s_2_threads"]),
    }
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, action="append",
                        help="environment count (repeatable; default 1, 64, 1024, 65536)")
    parser.add_argument("--threads", type=int, default=1, help="numba threads (default 1)")
    parser.add_argument("--no-compile-times", action="store_true",
                        help="skip the cold-compile and warm-import measurements")
    args = parser.parse_args(argv)
    counts = tuple(args.envs) if args.envs else DEFAULT_ENV_COUNTS
    if any(n < 1 for n in counts):
        print("error: --envs must be >= 1", file=sys.stderr)
        return 2
    print(json.dumps(run(counts, args.threads, not args.no_compile_times)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
