"""Evaluation rollout plots split at resets: the batched simulator starts a new episode as soon
as one ends, so a recorded column holds several episodes; each must be its own line, and a
terminated one must end there (marked), not run on into the next episode."""
from __future__ import annotations

import numpy as np

from nanofly.sim.env import MDPConfig
from nanofly.train.evaluate import figure8_suite, hover_suite
from nanofly.train.plots import episode_segments, plot_figure8_rollouts, plot_hover_rollouts


def test_episode_segments_split_after_each_episode_end():
    ends = np.zeros((10, 3), bool)
    ends[3, 0] = ends[7, 0] = True  # column 0: three episodes
    ends[9, 1] = True               # column 1: one, ending on the last sample
    assert episode_segments(ends) == [[(0, 4), (4, 8), (8, 10)], [(0, 10)], [(0, 10)]]


def _motors_off(obs: np.ndarray) -> np.ndarray:
    return np.full((len(obs), 4), -1.0, np.float32)  # falls: every episode is terminated


def test_hover_rollouts_of_crashing_episodes_split_at_each_termination(tmp_path):
    mdp = MDPConfig()
    result = hover_suite(_motors_off, episodes=3, record=3, seed=5)
    assert result["termination_rate"] == 1.0
    traj = result["_trajectories"]
    pos, crashed = traj["positions"], traj["terminated"]
    for k, segments in enumerate(episode_segments(traj["episode_end"])):
        assert len(segments) >= 2, segments  # crashed, reset, flew (fell) again
        assert segments[0][0] == 0 and segments[-1][1] == len(pos)
        for (a, b), (c, _) in zip(segments, segments[1:]):
            assert b == c  # contiguous, nothing dropped
            # the episode ends at its termination, out of the allowed box ...
            assert crashed[b - 1, k]
            assert np.abs(pos[b - 1, k]).max() > mdp.termination_position - 0.05
            # ... and the next starts near the target, as the initial-state distribution does
            assert np.abs(pos[c, k]).max() < mdp.init_max_position + 0.05
    paths = plot_hover_rollouts(traj, tmp_path, prefix="hover_")
    assert [p.name for p in paths] == ["hover_rollouts_xy.png", "hover_position_vs_time.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_figure8_rollouts_record_terminations_and_plot(tmp_path):
    result = figure8_suite(_motors_off, episodes=2, laps=1, record=2)
    traj = result["_trajectories"]
    first = [segments[0] for segments in episode_segments(traj["episode_end"])]
    assert all(traj["terminated"][b - 1, k] for k, (_, b) in enumerate(first))
    assert all(b < len(traj["positions"]) for _, b in first)  # ended well before the lap did
    paths = plot_figure8_rollouts(traj, tmp_path)
    assert sorted(p.name for p in paths) == ["figure8_position_vs_time.png",
                                              "figure8_tracking_error.png", "figure8_xy.png"]
