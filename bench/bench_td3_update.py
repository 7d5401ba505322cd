"""Cost of one TD3 critic / actor update: nanofly's numba core vs plain eager PyTorch.

Prints one JSON object. Paper sizes by default (actor 146-64-64-4, twin critics 32-64-64-1,
batch 256), the same pre-generated batches for both implementations. For each thread count the
core and the torch baseline run in separate worker processes (so one's spinning threads do not
slow the other), alternating core, torch, core, torch; reported: median and 10th/90th
percentile of the per-update times over both rounds, their ratio, and the full schedule
(30 000 critic + 15 000 actor updates) at the median. Compile cost: a worker with an empty
numba cache (cold compile) and a second one reusing it (warm load from cache).

    python bench/bench_td3_update.py                  # ~40 s
    python bench/bench_td3_update.py --updates 1000 --critic-obs-dim 146
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CRITIC_UPDATES = 30_000  # the paper's schedule: 300 k steps, critic every 10, actor every 20
ACTOR_UPDATES = 15_000
ROUNDS = 2  # core, torch, core, torch


def _thread_env(threads: int, cache_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["NUMBA_CACHE_DIR"] = cache_dir
    return env


def _run_worker(args: argparse.Namespace, mode: str, threads: int, cache_dir: str,
                impl: str = "core", updates: int = 0, seconds: float = 0.0) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--impl", impl, "--threads", str(threads),
           "--updates", str(updates or args.updates), "--batch", str(args.batch),
           "--critic-obs-dim", str(args.critic_obs_dim), "--seed", str(args.seed),
           "--max-seconds", str(seconds or args.max_seconds)]
    out = subprocess.run(cmd, env=_thread_env(threads, cache_dir), capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode}/{impl} (threads={threads}) failed:\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- worker side
def _make_batches(np, rng, n, b, dims):
    oa, oc, na = dims
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return [dict(critic_obs=f(b, oc), action=rng.uniform(-1, 1, (b, na)).astype(np.float32),
                 reward=f(b), next_critic_obs=f(b, oc), next_actor_obs=f(b, oa),
                 terminated=(rng.random(b) < 0.01).astype(np.float32), noise=f(b, na))
            for _ in range(n)]


def worker_compile() -> dict:
    """Import + first call of every kernel (compiles, or loads from the numba cache).

    Covers both thread modes (threads=2 adds the helper thread's loop).
    """
    t0 = time.perf_counter()
    import numpy as np

    from nanofly.train.td3_core import TD3Core

    t_import = time.perf_counter() - t0
    cores = [TD3Core(threads=1), TD3Core(threads=2)]
    batch = _make_batches(np, np.random.default_rng(0), 1, 256, (146, 28, 4))[0]

    def every_call():
        for core in cores:
            core.critic_update(**batch)
            core.actor_update(batch["next_actor_obs"], batch["critic_obs"])
            core.update_targets()
            core.actor_forward(batch["next_actor_obs"][:1])

    t1 = time.perf_counter()
    c1 = time.process_time()
    every_call()
    t_first = time.perf_counter() - t1
    c_first = time.process_time() - c1
    t2 = time.perf_counter()  # subtract what the same calls cost once compiled
    every_call()
    t_again = time.perf_counter() - t2
    return {"import_s": round(t_import, 3), "first_calls_s": round(t_first - t_again, 3),
            "first_calls_cpu_s": round(c_first - t_again, 3)}


def worker_timing(args: argparse.Namespace) -> dict:
    """Per-update times (seconds) of one implementation at one thread count."""
    import numpy as np

    from nanofly.train.td3_core import TD3Core

    dims = (146, args.critic_obs_dim, 4)
    core = TD3Core(actor_obs_dim=dims[0], critic_obs_dim=dims[1], action_dim=dims[2],
                   batch_size=args.batch, seed=args.seed, threads=args.threads)
    rng = np.random.default_rng(args.seed)
    batches = _make_batches(np, rng, 16, args.batch, dims)
    if args.impl == "core":
        def critic(b):
            core.critic_update(**b)

        def actor(b):
            core.actor_update(b["next_actor_obs"], b["critic_obs"])
        data = batches
    else:
        import torch

        from nanofly.train.td3_reference import ReferenceTD3

        torch.set_num_threads(args.threads)
        reference = ReferenceTD3.from_core(core)  # plain eager PyTorch TD3, CleanRL style

        def critic(b):
            reference.critic_update(b, b["noise"])

        def actor(b):  # as TD3Core.actor_update: the actor step, then Polyak on all targets
            reference.actor_update({"obs": b["next_obs"], "critic_obs": b["critic_obs"]})
            reference.update_targets("all")
        data = [{"next_obs" if k == "next_actor_obs" else k: torch.from_numpy(v)
                 for k, v in b.items()} for b in batches]

    for i in range(20):  # warm-up (compiles / loads kernels, allocator caches)
        critic(data[i % len(data)])
        actor(data[i % len(data)])
    times: dict[str, list[float]] = {"critic": [], "actor": []}
    perf = time.perf_counter
    deadline = perf() + args.max_seconds
    for i in range(args.updates):  # critic and actor alternate, as in training
        if i >= 20 and perf() > deadline:  # a busy machine: keep the run short
            break
        b = data[i % len(data)]
        t = perf()
        critic(b)
        times["critic"].append(perf() - t)
        t = perf()
        actor(b)
        times["actor"].append(perf() - t)
    result: dict = {"times": times, "load_average_1min": round(os.getloadavg()[0], 2)}
    if args.impl == "core":  # acting: batched inference for a few batch sizes
        forward = {}
        for n in (1, 64, 1024):
            obs = rng.standard_normal((n, dims[0])).astype(np.float32)
            out = np.empty((n, dims[2]), np.float32)
            for _ in range(20):
                core.actor_forward(obs, out=out)
            ts = []
            for _ in range(300):
                t = perf()
                core.actor_forward(obs, out=out)
                ts.append(perf() - t)
            forward[f"N={n}"] = round(float(np.median(ts)) * 1e6, 2)
        result["actor_forward_us"] = forward
    core.close()
    return result


def _summary(times_s: list[float]) -> dict:
    import numpy as np

    t = np.asarray(times_s) * 1e3
    return {"median_ms": round(float(np.median(t)), 4),
            "p10_ms": round(float(np.percentile(t, 10)), 4),
            "p90_ms": round(float(np.percentile(t, 90)), 4), "n": int(t.size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=600,
                   help="timed critic (and actor) updates per implementation and thread count")
    p.add_argument("--max-seconds", type=float, default=8.0,
                   help="time budget per implementation and thread count (min 20 updates per "
                        "worker)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--critic-obs-dim", type=int, default=28,
                   help="28 = privileged (asymmetric); 146 = ablation 'asymmetric critic off'")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["compile", "timing"], help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["core", "torch"], default="core", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker == "compile":
        print(json.dumps(worker_compile()))
        return
    if args.worker == "timing":
        args.threads = args.threads[0]
        print(json.dumps(worker_timing(args)))
        return

    report: dict = {
        "bench": "td3_update", "batch": args.batch,
        "sizes": {"actor": [146, 64, 64, 4], "critic": [args.critic_obs_dim + 4, 64, 64, 1]},
        "seed": args.seed, "cpu_count": os.cpu_count(),
        "schedule": {"critic_updates": CRITIC_UPDATES, "actor_updates": ACTOR_UPDATES},
        "note": "core = nanofly TD3Core (numba + BLAS), torch = plain eager PyTorch TD3 (same "
                "maths, default Adam); threads_2 = TD3Core(threads=2) vs torch.set_num_threads"
                "(2). On a shared machine see load_average_1min and p10/p90."}
    with tempfile.TemporaryDirectory(prefix="nanofly-numba-cache-") as cache_dir:
        cold = _run_worker(args, "compile", 1, cache_dir)
        warm = _run_worker(args, "compile", 1, cache_dir)
        report["compile"] = {"cold_compile_s": cold["first_calls_s"],
                             "cold_compile_cpu_s": cold["first_calls_cpu_s"],
                             "warm_load_s": warm["first_calls_s"],
                             "import_cold_s": cold["import_s"], "import_warm_s": warm["import_s"]}
        per_round = max(1, args.updates // ROUNDS)
        for threads in args.threads:
            samples = {f"{impl}_{kind}": [] for impl in ("core", "torch")
                       for kind in ("critic", "actor")}
            loads, forward = [], None
            for _ in range(ROUNDS):
                for impl in ("core", "torch"):
                    r = _run_worker(args, "timing", threads, cache_dir, impl, per_round,
                                    args.max_seconds / ROUNDS)
                    for kind in ("critic", "actor"):
                        samples[f"{impl}_{kind}"] += r["times"][kind]
                    loads.append(r["load_average_1min"])
                    forward = r.get("actor_forward_us", forward)
            entry: dict = {name: _summary(ts) for name, ts in samples.items()}
            for kind in ("critic", "actor"):
                entry[f"speedup_{kind}"] = round(
                    entry[f"torch_{kind}"]["median_ms"] / entry[f"core_{kind}"]["median_ms"], 2)
            for impl in ("core", "torch"):
                entry[f"full_schedule_s_{impl}"] = round(
                    (CRITIC_UPDATES * entry[f"{impl}_critic"]["median_ms"]
                     + ACTOR_UPDATES * entry[f"{impl}_actor"]["median_ms"]) / 1e3, 2)
            entry["full_schedule_s_core_with_cold_compile"] = round(
                entry["full_schedule_s_core"] + cold["first_calls_s"], 2)
            entry["actor_forward_us"] = forward
            entry["load_average_1min"] = loads
            report[f"threads_{threads}"] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
