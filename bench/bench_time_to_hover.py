"""Time to hover: wall time from process start to a saved policy, for several seeds, with warm
and cold numba caches; each policy is then checked with the hover suite (1000 episodes).

    python bench/bench_time_to_hover.py [--seeds 0 1 2 3 4] [--cold] [--extra-args "..."]
    python bench/bench_time_to_hover.py --seeds 1000-1019 --baseline n_step_returns=1 ...

Prints one JSON object: per seed the wall time (launch of ``nanofly train`` to policy.pt on
disk), the whole process's wall time, the training wall time, env steps to the saved policy,
and the hover success rate; medians; and how many seeds pass (>= 95% success). The seeds run
through ``nanofly sweep``'s Python API, one at a time. Without ``--baseline`` the baseline is
the paper's figure (18 s on an M1) as a ratio; the reference implementation itself is not
installed here. With ``--baseline KEY=VALUE`` (repeatable: TrainConfig fields, as
``nanofly sweep --set`` takes them) each seed runs twice, alternating, with those settings
(the baseline) and with the defaults (or ``--extra-args``), and the JSON adds each side's
medians, worst case and pass count, and the ratios candidate / baseline of the median env
steps and median wall time.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAPER_SECONDS = 18.0


def run_seeds(seeds: list[int], out: Path, cold: bool, extra: list[str],
              baseline: tuple | None = None) -> list[dict]:
    """The seeds' runs through nanofly sweep's Python API, one at a time (each trial reserves
    every CPU: a time to hover is measured on an otherwise idle machine). With ``baseline``
    (sweep key, value pairs) each seed runs with it first and then without it (alternating);
    rows carry ``arm``: "baseline" or "candidate"."""
    from nanofly.sweep import Trial, options_from_train_args, sweep_trainings
    from nanofly.train.td3_core import usable_cpus

    shutil.rmtree(out, ignore_errors=True)
    trials = None
    if baseline:
        trials = [t for seed in seeds for t in (Trial(seed, baseline), Trial(seed))]
    result = sweep_trainings(out, seeds=seeds, trials=trials,
                             options=options_from_train_args(extra),
                             cpus_per_trial=usable_cpus(), cold_numba_cache=cold,
                             figure8_episodes=0, plots=False, progress=False,
                             write_summary=False)
    rows = []
    for r in result["trials"]:
        arm = {"arm": "baseline" if r["parameters"] else "candidate"} if baseline else {}
        if r["status"] != "ok":
            rows.append({"seed": r["seed"], **arm, "error": r["error"]})
            continue
        rows.append({"seed": r["seed"], **arm, "process_start_to_policy_s": r["time_to_policy_s"],
                     "process_wall_time_s": r["train_process_wall_s"],
                     "selection_wall_time_s": r["selection_wall_time_s"],
                     "train_wall_time_s": r["train_wall_time_s"], "env_steps": r["env_steps"],
                     "selected_env_steps": r["selected_env_steps"],
                     "hover_success_rate": r["hover_success"],
                     "final_position_rmse_m": r["hover_final_position_rmse_m"],
                     "passed": bool(r["hover_passed"])})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def summarize(runs: list[dict]) -> dict:
    """Medians, worst case and pass count of finished runs."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": len(runs), "finished": 0}
    steps = [r["env_steps"] for r in ok]  # trained before the policy was saved
    times = [r["process_start_to_policy_s"] for r in ok]
    return {"runs": len(runs), "finished": len(ok),
            "median_env_steps_to_policy": statistics.median(steps), "worst_env_steps": max(steps),
            "median_process_start_to_policy_s": statistics.median(times),
            "worst_process_start_to_policy_s": max(times),
            "median_process_wall_time_s": statistics.median(r["process_wall_time_s"] for r in ok),
            "median_train_wall_time_s": statistics.median(r["train_wall_time_s"] for r in ok),
            # the selection checks' share of the time to the saved policy
            "median_selection_share": (statistics.median(
                r["selection_wall_time_s"] / r["process_start_to_policy_s"] for r in ok)
                if all(r["selection_wall_time_s"] is not None for r in ok) else None),
            "seeds_passing": sum(r["passed"] for r in ok),
            "min_hover_success_rate": min(r["hover_success_rate"] for r in ok)}


def main(argv=None) -> int:
    from nanofly.sweep import options_from_train_args, parse_seeds, parse_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", default=["0-4"], help="seeds: 0 1 2, 0-4 or 0,3,5")
    parser.add_argument("--cold", action="store_true", help="also measure with an empty numba cache")
    parser.add_argument("--out", default=None, help="where run directories go (default: a temp dir)")
    parser.add_argument("--extra-args", default="", help="extra arguments for nanofly train")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the baseline side (repeatable): each seed also runs "
                             "with these, alternating with the candidate")
    args = parser.parse_args(argv)
    seeds = parse_seeds(",".join(args.seeds))
    baseline = tuple((k, v[0]) for k, v in map(parse_set, args.baseline)) or None
    out_root = Path(args.out or tempfile.mkdtemp(prefix="nanofly-tth-"))
    extra = shlex.split(args.extra_args)
    result: dict = {"seeds": seeds, "paper_seconds_m1": PAPER_SECONDS,
                    "baseline": dict(baseline or ()), "candidate_args": extra,
                    "warm": [], "cold": []}
    # warm the cache: past the first critic (15 k) and actor (30 k) updates, then a short hover
    # suite (the selection checks' kernels), so the first "warm" seed compiles nothing; once
    # per side (their updates may take other compiled paths)
    warm_ups = {"candidate": extra}
    if baseline:
        from nanofly.sim.presets import dumps_toml

        out_root.mkdir(parents=True, exist_ok=True)
        baseline_config = out_root / "baseline.toml"
        baseline_config.write_text(dumps_toml({"train": dict(baseline)}))
        warm_ups["baseline"] = ["--config", str(baseline_config)]
        options_from_train_args(warm_ups["baseline"])  # a bad key fails here
    for side, side_args in warm_ups.items():
        subprocess.run([sys.executable, "-m", "nanofly", "train", "--seed", str(seeds[0]),
                        "--out", str(out_root / f"warm-up-{side}"), "--json", "--no-plots",
                        *side_args, "--steps", "40000", "--eval-episodes", "20"],
                       capture_output=True)
    result["warm"] = run_seeds(seeds, out_root / "warm", False, extra, baseline)
    if args.cold:
        result["cold"] = run_seeds(seeds, out_root / "cold", True, extra, baseline)
    for kind in ("warm", "cold"):
        runs = [r for r in result[kind] if "error" not in r]
        if not runs:
            continue
        if baseline:
            sides = {side: summarize([r for r in result[kind] if r["arm"] == side])
                     for side in ("baseline", "candidate")}
            result[f"{kind}_summary"] = sides
            b, c = sides["baseline"], sides["candidate"]
            if b["finished"] and c["finished"]:
                result[f"{kind}_ratio_env_steps"] = round(
                    c["median_env_steps_to_policy"] / b["median_env_steps_to_policy"], 3)
                result[f"{kind}_ratio_process_start_to_policy"] = round(
                    c["median_process_start_to_policy_s"] / b["median_process_start_to_policy_s"], 3)
            runs = [r for r in runs if r["arm"] == "candidate"]
        med = statistics.median(r["process_start_to_policy_s"] for r in runs)
        result[f"{kind}_median_s"] = med
        result[f"{kind}_ratio_vs_paper"] = round(med / PAPER_SECONDS, 3)
        result[f"{kind}_seeds_passing"] = sum(r["passed"] for r in runs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
