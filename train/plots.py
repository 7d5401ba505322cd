"""PNG plots of a training run and of evaluation rollouts: the learning curve, the hover suite
(x-y and position vs time) and the figure-eight suite (x-y against the reference, position vs
time, tracking error).

Evaluation rollouts come from vectorized environments that reset an episode as soon as it ends,
so one recorded column holds several episodes in a row. The plots draw each episode as its own
line (``episode_segments``) and mark where an episode was terminated (left the allowed box or
flew too fast) with an x: a crash is never drawn as if it flew on into the next episode.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(metrics_path: Path, out: Path) -> Path | None:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("mean_return") is not None]
    if not rows:
        return None
    plt = _pyplot()
    steps = np.array([r["env_steps"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["mean_return"] for r in rows], color="tab:blue", label="mean return (last 100 episodes)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [100 * (r["survival_rate"] or 0) for r in rows], color="tab:orange",
             label="episodes reaching the time limit")
    ax2.set_ylabel("survived to time limit (%)", color="tab:orange")
    ax2.set_ylim(0, 100)
    ax.set_title("nanofly training")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def episode_segments(episode_end: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per recorded column, the ``(start, stop)`` sample ranges (stop exclusive) of the episodes
    it holds, in order. ``episode_end``: (T + 1, K) bools, True where a sample is the last one
    of an episode (the environment reset after it); the next sample starts the next episode."""
    episode_end = np.asarray(episode_end, dtype=bool)
    samples, columns = episode_end.shape
    segments = []
    for k in range(columns):
        starts = [0, *(int(i) + 1 for i in np.flatnonzero(episode_end[:, k]) if i + 1 < samples)]
        stops = [*starts[1:], samples]
        segments.append(list(zip(starts, stops)))
    return segments


def _segments_and_crashes(trajectories: dict, columns: int, samples: int):
    """``episode_segments`` of a trajectories dict and its (T + 1, K) crash marks; recordings
    without episode ends are one episode per column."""
    ends = trajectories.get("episode_end")
    if ends is None:
        ends = np.zeros((samples, columns), dtype=bool)
    crashed = trajectories.get("terminated")
    if crashed is None:
        crashed = np.zeros((samples, columns), dtype=bool)
    return episode_segments(ends), np.asarray(crashed, dtype=bool)


def _color(k: int):
    return f"C{k % 10}"


def _draw_episodes(ax, x: np.ndarray, y: np.ndarray, segments, crashed, *, start_dot=False):
    """Columns of ``x``/``y`` (T + 1, K) drawn as one line per episode; the first episode of a
    column solid, later ones (after an automatic reset) thin and dashed; an x where an episode
    was terminated. Returns whether any x was drawn."""
    any_crash = False
    for k, column in enumerate(segments):
        for n, (a, b) in enumerate(column):
            style = {"lw": 1.0} if n == 0 else {"lw": 0.6, "ls": "--", "alpha": 0.6}
            ax.plot(x[a:b, k], y[a:b, k], color=_color(k), **style)
            if start_dot and n == 0:
                ax.plot(x[a, k], y[a, k], "o", ms=3, color="gray")
            if crashed[b - 1, k]:
                ax.plot(x[b - 1, k], y[b - 1, k], "x", ms=7, mew=2, color=_color(k))
                any_crash = True
    return any_crash


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hover_rollouts(trajectories: dict, out_dir: Path, prefix: str = "eval_") -> list[Path]:
    """x-y view and position-vs-time of the recorded hover-suite episodes (position error,
    m; the target is the origin): ``{prefix}rollouts_xy.png``, ``{prefix}position_vs_time.png``."""
    plt = _pyplot()
    pos = np.asarray(trajectories["positions"])  # (T+1, K, 3) position error, m
    samples, columns = pos.shape[:2]
    t = np.arange(samples) * trajectories["dt"]
    segments, crashed = _segments_and_crashes(trajectories, columns, samples)
    out = []
    fig, ax = plt.subplots(figsize=(5, 5))
    crash = _draw_episodes(ax, pos[:, :, 0], pos[:, :, 1], segments, crashed, start_dot=True)
    ax.plot(0, 0, "k+", ms=12)
    ax.set_xlabel("x error (m)")
    ax.set_ylabel("y error (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("hover rollouts (start: gray dots, target: +"
                 + (", terminated: x)" if crash else ")"))
    out.append(_save(fig, Path(out_dir) / f"{prefix}rollouts_xy.png"))
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    tt = np.repeat(t[:, None], columns, axis=1)
    for i, name in enumerate("xyz"):
        _draw_episodes(axes[i], tt, pos[:, :, i], segments, crashed)
        axes[i].set_ylabel(f"{name} error (m)")
        axes[i].axhline(0, color="k", lw=0.5)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("hover rollouts: position error vs time"
                 + ("\n(x: terminated; dashed: the next episode after the reset)" if crash else ""))
    out.append(_save(fig, Path(out_dir) / f"{prefix}position_vs_time.png"))
    return out


def plot_figure8_rollouts(trajectories: dict, out_dir: Path, prefix: str = "figure8_") -> list[Path]:
    """The recorded figure-eight episodes against the reference path: x-y view, position vs
    time and tracking error (distance to the reference point, m) vs time:
    ``{prefix}xy.png``, ``{prefix}position_vs_time.png``, ``{prefix}tracking_error.png``.
    Only each column's first episode is drawn: the suite resets a terminated vehicle to the
    start, off the reference's schedule."""
    plt = _pyplot()
    pos = np.asarray(trajectories["positions"])  # (T+1, K, 3) world position, m
    ref = np.asarray(trajectories["reference"])  # (T+1, 3) reference position, m
    samples, columns = pos.shape[:2]
    t = np.arange(samples) * trajectories["dt"]
    segments, crashed = _segments_and_crashes(trajectories, columns, samples)
    first = [column[:1] for column in segments]
    out = []
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(ref[:, 0], ref[:, 1], color="k", lw=2, alpha=0.35, label="reference")
    crash = _draw_episodes(ax, pos[:, :, 0], pos[:, :, 1], first, crashed)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("figure-eight rollouts vs reference" + (" (x: terminated)" if crash else ""))
    out.append(_save(fig, Path(out_dir) / f"{prefix}xy.png"))
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    tt = np.repeat(t[:, None], columns, axis=1)
    for i, name in enumerate("xyz"):
        axes[i].plot(t, ref[:, i], color="k", lw=2, alpha=0.35)
        _draw_episodes(axes[i], tt, pos[:, :, i], first, crashed)
        axes[i].set_ylabel(f"{name} (m)")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("figure-eight rollouts: position vs time (gray: reference)")
    out.append(_save(fig, Path(out_dir) / f"{prefix}position_vs_time.png"))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    error = np.linalg.norm(pos - ref[:, None, :], axis=2)
    _draw_episodes(ax, tt, error, first, crashed)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tracking error (m)")
    ax.set_ylim(bottom=0)
    ax.set_title("figure-eight tracking error (distance to the reference point)")
    out.append(_save(fig, Path(out_dir) / f"{prefix}tracking_error.png"))
    return out
