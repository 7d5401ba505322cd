"""PNG plots of a training run: the learning curve and a few evaluation rollouts."""
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


def plot_hover_rollouts(trajectories: dict, run_dir: Path) -> list[Path]:
    """x-y view and position-vs-time of the first recorded hover-suite episodes."""
    plt = _pyplot()
    pos = np.asarray(trajectories["positions"])  # (T+1, K, 3) position error, m
    t = np.arange(pos.shape[0]) * trajectories["dt"]
    out = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for k in range(pos.shape[1]):
        ok = np.isfinite(pos[:, k, 0]) & (np.abs(pos[:, k]).max(axis=1) < 1.0)
        ax.plot(pos[ok, k, 0], pos[ok, k, 1], lw=1)
        ax.plot(pos[0, k, 0], pos[0, k, 1], "o", ms=3, color="gray")
    ax.plot(0, 0, "k+", ms=12)
    ax.set_xlabel("x error (m)")
    ax.set_ylabel("y error (m)")
    ax.set_aspect("equal")
    ax.set_title("hover rollouts (start: gray dots, target: +)")
    fig.tight_layout()
    path = Path(run_dir) / "eval_rollouts_xy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for i, name in enumerate("xyz"):
        for k in range(pos.shape[1]):
            axes[i].plot(t, pos[:, k, i], lw=1)
        axes[i].set_ylabel(f"{name} error (m)")
        axes[i].axhline(0, color="k", lw=0.5)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("hover rollouts: position error vs time")
    fig.tight_layout()
    path = Path(run_dir) / "eval_position_vs_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out
