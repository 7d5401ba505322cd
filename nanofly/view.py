"""``nanofly view``: a 3D replay of evaluation rollouts as one self-contained HTML file.

The rollouts are flown by the evaluation suites themselves (``nanofly.train.evaluate``: the hover
suite's first episodes and one figure-eight episode, with the suites' noise, disturbances and
seeds), through a policy wrapper that records, before each control step, every recorded
environment's position (m), attitude quaternion, the rotor commands the policy returns
(normalized, [-1, 1]) and the target (m). The page shows them with three.js (vendored from the
npm package ``three`` with its licence in ``nanofly/view_assets``; inlined, so the page needs no
network), with the run's learning curve (``metrics.jsonl``) beside it.

This module sits above every stage and may import all of them; only the standard library is
imported at module level (``nanofly --help`` registers ``view`` from here).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent / "view_assets"
DEFAULT_HOVER_EPISODES = 6
# The vehicle is a few centimetres across in a metre-sized scene: drawn this many times larger.
DRAW_SCALE = 3.0


def register(sub) -> None:
    v = sub.add_parser(
        "view", help="write a 3D replay of evaluation rollouts (one HTML file, no network)",
        description="Fly the hover suite's first episodes and one figure-eight episode with the "
                    "policy (torch, the suites' noise, disturbances and seeds) and write one "
                    "self-contained HTML file that replays them in 3D (attitude, rotor commands, "
                    "target, trail; play/pause/speed) beside the run's learning curve. Open it "
                    "in any browser with WebGL; it needs no network. Exit status 2 on bad input.")
    v.add_argument("policy", metavar="RUN_DIR|POLICY",
                   help="a run directory (its policy.pt, and metrics.jsonl for the learning "
                        "curve) or a policy file")
    v.add_argument("--out", default=None, metavar="FILE.html",
                   help="where to write the page (default RUN_DIR/replay.html, or "
                        "POLICY_replay.html beside a policy file)")
    v.add_argument("--episodes", type=int, default=DEFAULT_HOVER_EPISODES, metavar="N",
                   help=f"hover-suite episodes to replay (default {DEFAULT_HOVER_EPISODES}; the "
                        f"figure-eight episode comes after them)")
    v.add_argument("--seed", type=int, default=None, metavar="S",
                   help="evaluation seed for both suites (default: each suite's own, so the "
                        "hover episodes are the first episodes nanofly eval scores)")
    v.set_defaults(handler=_view)


def _view(args) -> int:
    started = time.perf_counter()
    problem = None
    if args.episodes < 1 or args.episodes > 100:
        problem = f"--episodes must be from 1 to 100, got {args.episodes}"
    if problem:
        return _fail(problem)
    try:
        policy_path, run_dir = _resolve_input(Path(args.policy))
    except ValueError as exc:
        return _fail(str(exc))
    if args.out:
        out = Path(args.out)
    elif run_dir:
        out = run_dir / "replay.html"
    else:
        out = policy_path.with_name(policy_path.stem + "_replay.html")
    if out.is_dir():
        return _fail(f"--out {out} is a directory; name the HTML file to write, e.g. "
                     f"{out / 'replay.html'}")
    if not out.parent.is_dir():
        return _fail(f"--out {out}: the folder {out.parent} does not exist; create it first")

    from nanofly.evaluate import open_for_eval

    try:
        policy, vehicle, mdp = open_for_eval(policy_path, "torch")
    except (ValueError, OSError) as exc:  # PolicyFileError is a ValueError
        return _fail(str(exc))
    curve, curve_note = learning_curve(run_dir)
    _progress(f"flying {args.episodes} hover episode{'s' if args.episodes > 1 else ''} and 1 "
              f"figure-eight episode with {policy_path} ...")
    rollouts = record_rollouts(policy, vehicle, mdp, hover_episodes=args.episodes, seed=args.seed)
    data = {
        "format": "nanofly-replay", "source": str(policy_path),
        "dt_s": mdp.dt, "termination_box_m": mdp.termination_position, "draw_scale": DRAW_SCALE,
        "vehicle": {"name": vehicle.name,
                    "rotor_positions_m": [[round(float(c), 5) for c in row]
                                          for row in vehicle.rotor_positions],
                    "hover_command": float(vehicle.hover_action)},
        **rollouts,
        "learning_curve": curve, "learning_curve_note": curve_note,
    }
    page = render_page(data, title=f"nanofly replay: {policy_path}")
    from nanofly.policy.file import atomic_write_bytes

    try:
        atomic_write_bytes(out, page.encode("utf-8"))  # a page whole or none
    except OSError as exc:
        return _fail(f"could not write {out}: {exc.strerror or exc}")
    seconds = time.perf_counter() - started
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB, {len(data['episodes'])} episodes, "
          f"{seconds:.1f} s); open it in a browser: {out.resolve().as_uri()}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resolve_input(path: Path) -> tuple[Path, Path | None]:
    """``(policy file, run directory or None)`` for ``nanofly view PATH``; ``ValueError`` naming
    what is wrong otherwise."""
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass a run directory (from nanofly train) or a "
                         f"policy file (policy.pt)")
    if path.is_dir():
        if not (path / "policy.pt").is_file():
            raise ValueError(f"{path} has no policy.pt; pass a run directory from nanofly train "
                             f"or a policy file")
        return path / "policy.pt", path
    return path, None


# -- rollouts -----------------------------------------------------------------------------------
class RecordingPolicy:
    """Wraps a policy for the evaluation suites and records, at every call (before each step),
    the first ``count`` environments' state and the commands returned. An environment's
    recording ends when its episode ends (the simulator starts the next one in its place)."""

    def __init__(self, policy, count: int):
        self.policy = policy
        self.count = int(count)
        self.env = None
        self.positions: list[Any] = []
        self.quaternions: list[Any] = []
        self.commands: list[Any] = []
        self.targets: list[Any] = []
        self.steps: list[Any] = []

    def bind_env(self, env) -> None:
        self.env = env
        bind = getattr(self.policy, "bind_env", None)
        if bind is not None:
            bind(env)

    def __call__(self, obs):
        import numpy as np

        actions = np.asarray(self.policy(obs), dtype=np.float32)
        n = self.count
        states = self.env.states[:n]  # (n, 17): position, quaternion (w, x, y, z), ...
        self.positions.append(states[:, 0:3].copy())
        self.quaternions.append(states[:, 3:7].copy())
        self.commands.append(np.clip(actions[:n], -1.0, 1.0))
        self.targets.append(self.env.target_position[:n].copy())
        self.steps.append(self.env.episode_step[:n])
        return actions

    def episodes(self) -> list[dict[str, Any]]:
        """Per recorded environment: its first episode's arrays up to the step before it ended,
        and the step at which it terminated (None when it flew to the end)."""
        import numpy as np

        steps = np.stack(self.steps)  # (T, n) steps taken in the current episode at each call
        positions, quaternions, commands, targets = (
            np.stack(a) for a in (self.positions, self.quaternions, self.commands, self.targets))
        out = []
        for k in range(self.count):
            # a new episode began where the episode's step count fell back to 0
            restarts = np.flatnonzero(np.diff(steps[:, k]) < 0)
            length = int(restarts[0]) + 1 if restarts.size else steps.shape[0]
            terminated = length if restarts.size else None
            out.append({"length": length, "terminated_at_step": terminated,
                        "position_m": positions[:length, k],
                        "quaternion_wxyz": quaternions[:length, k],
                        "rotor_command_normalized": commands[:length, k],
                        "target_m": targets[:length, k]})
        return out


def record_rollouts(policy, vehicle, mdp, *, hover_episodes: int,
                    seed: int | None = None) -> dict[str, Any]:
    """Fly the hover suite with ``hover_episodes`` episodes and the figure-eight suite with one,
    recording every step; returns ``{"episodes": [...], "suites": {...}}`` ready for the page
    (floats rounded: positions to 0.1 mm, quaternions to 1e-4, commands to 1e-3)."""
    import numpy as np

    from nanofly.sim.targets import figure_eight
    from nanofly.train.evaluate import figure8_suite, hover_suite, public

    seeds = {} if seed is None else {"seed": seed}
    episodes: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    recorder = RecordingPolicy(policy, hover_episodes)
    hover = public(hover_suite(recorder, preset=vehicle, mdp=mdp, episodes=hover_episodes, **seeds))
    for k, ep in enumerate(recorder.episodes()):
        episodes.append(_page_episode(f"hover {k + 1}", "hover", ep))
    _progress(f"  hover: {hover_episodes} x {mdp.episode_steps} steps in "
              f"{time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    recorder = RecordingPolicy(policy, 1)
    figure8 = public(figure8_suite(recorder, preset=vehicle, mdp=mdp, episodes=1, **seeds))
    ep = recorder.episodes()[0]
    page_ep = _page_episode("figure-eight", "figure8", ep)
    lap = np.linspace(0.0, figure8["period_s"], 241)
    reference, _ = figure_eight(lap, figure8["scale_m"], figure8["period_s"])
    page_ep["reference_m"] = _flat(reference, 4)
    episodes.append(page_ep)
    _progress(f"  figure-eight: {ep['length']} steps in {time.perf_counter() - t0:.1f} s")

    shown_hover = {k: hover[k] for k in ("episodes", "seed", "success_rate", "termination_rate",
                                         "final_position_rmse_m")}
    shown_figure8 = {k: figure8[k] for k in ("episodes", "seed", "laps", "completion_rate",
                                             "position_rmse_m", "max_position_error_m")}
    return {"episodes": episodes, "suites": {"hover": shown_hover, "figure8": shown_figure8}}


def _flat(array, decimals: int) -> list[float]:
    import numpy as np

    values = np.round(np.asarray(array, dtype=np.float64).reshape(-1), decimals)
    return [0.0 if v == 0 else float(v) for v in values]  # no "-0.0" in the page


def _page_episode(name: str, kind: str, ep: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "kind": kind, "steps": ep["length"],
            "terminated_at_step": ep["terminated_at_step"],
            "position_m": _flat(ep["position_m"], 4),
            "quaternion_wxyz": _flat(ep["quaternion_wxyz"], 4),
            "rotor_command_normalized": _flat(ep["rotor_command_normalized"], 3),
            "target_m": _flat(ep["target_m"], 4), "reference_m": None}


# -- learning curve -----------------------------------------------------------------------------
def learning_curve(run_dir: Path | None) -> tuple[dict[str, list] | None, str]:
    """The learning curve from ``run_dir/metrics.jsonl`` (env steps, mean return, survival rate,
    checkpoint-selection success rate) and a note for the page; ``(None, why)`` when there is
    none to show."""
    if run_dir is None:
        return None, ("No learning curve: a policy file alone has no training metrics. Pass the "
                      "run directory (with metrics.jsonl) to see it.")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None, f"No learning curve: {metrics} does not exist."
    rows = []
    try:
        lines = metrics.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"No learning curve: {metrics} is not readable ({exc})."
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interrupted run
        if isinstance(row, dict) and isinstance(row.get("env_steps"), (int, float)):
            rows.append(row)
    if not rows:
        return None, f"No learning curve: {metrics} holds no rows with env_steps."

    def number(value, decimals):
        return round(float(value), decimals) if isinstance(value, (int, float)) else None

    def selection_success(row):
        selection = row.get("selection")
        return number(selection.get("success_rate"), 4) if isinstance(selection, dict) else None

    curve = {"env_steps": [int(r["env_steps"]) for r in rows],
             "mean_return": [number(r.get("mean_return"), 2) for r in rows],
             "survival_rate": [number(r.get("survival_rate"), 4) for r in rows],
             "selection_success_rate": [selection_success(r) for r in rows]}
    return curve, (f"{metrics.name}: {len(rows)} rows. Mean return over the last training "
                   f"episodes (left axis), the share of training episodes reaching the time limit "
                   f"and the checkpoint selection's hover success (right axis).")


# -- page ---------------------------------------------------------------------------------------
def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element ("</" cannot close it)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_page(data: dict[str, Any], *, title: str) -> str:
    """The replay page for ``data`` (the format ``nanofly view`` writes), three.js inlined."""
    import html
    import re

    def asset(name: str) -> str:
        return (ASSETS / name).read_text(encoding="utf-8")

    template = asset("replay.html")
    parts = {
        "__TITLE__": html.escape(title),
        "__DATA__": _script_json(data),
        "__THREE_LICENSE__": _script_json(asset("three.LICENSE")),
        "__THREE_CORE__": _script_json(asset("three.core.min.js")),
        "__THREE_MODULE__": _script_json(asset("three.module.min.js")),
        "__REPLAY_JS__": asset("replay.js"),
    }
    # one pass, so that text inside an inserted part is never taken for a placeholder
    return re.sub("|".join(map(re.escape, parts)), lambda m: parts[m.group(0)], template)
