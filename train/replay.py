"""Replay buffer for TD3: preallocated float32 arrays, one row per environment step.

Each row holds the actor observation, the privileged (critic) observation, the action, the
reward, the next actor and privileged observations, and whether the step *terminated* (a
time-limit truncation is stored as 0: it is still bootstrapped). Sampling gathers rows into
contiguous batch arrays with one numba kernel (PERF_NOTES.md: seven separate ``np.take`` calls
cost 3x more than one pass).
"""
from __future__ import annotations

import numpy as np
from numba import njit

FIELDS = ("obs", "critic_obs", "action", "reward", "next_obs", "next_critic_obs", "terminated")


@njit(cache=True)
def _gather(idx, obs, cobs, act, rew, nobs, ncobs, term, b_obs, b_cobs, b_act, b_rew, b_nobs,
            b_ncobs, b_term):
    for j in range(idx.shape[0]):
        i = idx[j]
        b_obs[j, :] = obs[i, :]
        b_cobs[j, :] = cobs[i, :]
        b_act[j, :] = act[i, :]
        b_rew[j] = rew[i]
        b_nobs[j, :] = nobs[i, :]
        b_ncobs[j, :] = ncobs[i, :]
        b_term[j] = term[i]


class ReplayBuffer:
    """Fixed-capacity FIFO buffer (oldest rows are overwritten when full)."""

    def __init__(self, capacity: int, obs_dim: int, critic_obs_dim: int, action_dim: int,
                 batch_size: int):
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self.capacity = int(capacity)
        self.size = 0
        self.ptr = 0
        f32 = np.float32
        # np.empty: pages are only touched (and paid for) as the buffer fills.
        self.obs = np.empty((capacity, obs_dim), f32)
        self.critic_obs = np.empty((capacity, critic_obs_dim), f32)
        self.action = np.empty((capacity, action_dim), f32)
        self.reward = np.empty(capacity, f32)
        self.next_obs = np.empty((capacity, obs_dim), f32)
        self.next_critic_obs = np.empty((capacity, critic_obs_dim), f32)
        self.terminated = np.empty(capacity, f32)
        self.batch = {name: np.empty((batch_size,) + getattr(self, name).shape[1:], f32)
                      for name in FIELDS}

    def rows(self, n: int) -> slice:
        """Reserve the next ``n`` rows (n <= capacity) and return their slice; callers fill
        every field of them. Wraps around by restarting at row 0."""
        if n > self.capacity:
            raise ValueError(f"cannot store {n} rows in a buffer of {self.capacity}")
        if self.ptr + n > self.capacity:
            self.ptr = 0
        rows = slice(self.ptr, self.ptr + n)
        self.ptr += n
        self.size = max(self.size, self.ptr)
        return rows

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A uniformly sampled batch (with replacement) in reused contiguous arrays."""
        b = self.batch
        idx = rng.integers(0, self.size, size=b["obs"].shape[0])
        _gather(idx, self.obs, self.critic_obs, self.action, self.reward, self.next_obs,
                self.next_critic_obs, self.terminated, b["obs"], b["critic_obs"], b["action"],
                b["reward"], b["next_obs"], b["next_critic_obs"], b["terminated"])
        return b

    def state_dict(self) -> dict[str, np.ndarray | int]:
        out: dict[str, np.ndarray | int] = {name: getattr(self, name)[:self.size].copy()
                                            for name in FIELDS}
        out["ptr"] = self.ptr
        return out

    def load_state_dict(self, state: dict) -> None:
        n = len(state["reward"])
        if n > self.capacity:
            raise ValueError(f"checkpoint buffer has {n} rows, capacity is {self.capacity}")
        for name in FIELDS:
            getattr(self, name)[:n] = state[name]
        self.size = n
        self.ptr = int(state["ptr"])
