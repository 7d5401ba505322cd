"""What a training run compiles on first use: ``python bench/bench_compile_time.py [--top 12]``.

Runs a short training (16 envs; first critic update after 1 000 steps, first selection check
after 20 000) in a fresh process twice: with an empty numba cache (``NUMBA_CACHE_DIR`` = a new
temporary directory) and again with that cache filled, and prints one JSON object: wall time
of each phase (import, ``Trainer()``, to the first critic update, to the first actor update, to
the first selection check), their sum for cold and warm and the ratio, and the functions numba
compiled in this process, by seconds (numba's compile events; nested, so a caller's time
includes its callees'). Kernels compiled by the trainer's helper process
(train/compile_cache.py) appear in the cold run's phases only as waiting.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from numba.core import event
compiled, started = {}, {}
def key(ev):  # start and end events are separate objects: match them by what compiles
    return id(ev.data["dispatcher"]), str(ev.data.get("args"))
class Listener(event.Listener):
    def on_start(self, ev):
        started[key(ev)] = time.perf_counter()
    def on_end(self, ev):
        d = ev.data["dispatcher"]
        name = d.py_func.__module__ + "." + d.py_func.__qualname__
        compiled[name] = compiled.get(name, 0.0) + time.perf_counter() - started.pop(key(ev))
event.register("numba:compile", Listener())
from nanofly.train.td3 import TrainConfig, Trainer
phases = {"import_s": time.perf_counter() - t0}
cfg = TrainConfig(seed=0, total_env_steps=40_000, critic_warmup_steps=1_000,
                  actor_warmup_steps=2_000, selection_start=20_000, selection_interval=20_000,
                  selection_episodes=64)
t = time.perf_counter(); trainer = Trainer(cfg); phases["trainer_init_s"] = time.perf_counter() - t
for until, name in ((1_016, "to_first_critic_update_s"), (2_016, "to_first_actor_update_s"),
                    (20_016, "to_first_selection_s")):
    t = time.perf_counter()
    while trainer.state.env_steps < until:
        trainer.step()
    phases[name] = time.perf_counter() - t
phases["total_s"] = time.perf_counter() - t0
print(json.dumps({"phases": phases, "compiled_s": compiled}))
"""


def _run(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=12, help="functions to list")
    args = parser.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="nanofly-compile-bench-")
    try:
        cold, warm = _run(cache), _run(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    top = sorted(cold["compiled_s"].items(), key=lambda kv: -kv[1])[:args.top]
    result = {
        "cold": {k: round(v, 3) for k, v in cold["phases"].items()},
        "warm": {k: round(v, 3) for k, v in warm["phases"].items()},
        "cold_over_warm": round(cold["phases"]["total_s"] / warm["phases"]["total_s"], 2),
        "compiled_in_trainer_process_s": {k: round(v, 3) for k, v in top},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
