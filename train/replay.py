"""Replay buffer for TD3: one preallocated float32 row per environment step.

Each row holds the actor observation, the privileged (critic) observation, the action, the
reward, the next actor and privileged observations, and whether the step *terminated* (a
time-limit truncation is stored as 0: it is still bootstrapped). ``gather_rows`` copies rows
into contiguous batch arrays (the trainer's updates call it inside their kernels:
``TD3Core.update_sampled``).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import register_jitable

from nanofly.policy.observation import STATE_DIM
from nanofly.sim.cpu import copy_into

STATE_PART = STATE_DIM  # observation values before the action history

# Stored per row. The next actor observation is not stored whole: its action history is the
# action just taken followed by the current observation's history minus its oldest action, so
# only its state part is kept (a 904-byte row instead of 1 416 with the default history).
FIELDS = ("obs", "critic_obs", "action", "reward", "next_obs_state", "next_critic_obs",
          "terminated")
BATCH_FIELDS = ("obs", "critic_obs", "action", "reward", "next_obs", "next_critic_obs",
                "terminated")


@register_jitable
def gather_rows(idx, data, offsets, b_obs, b_cobs, b_act, b_rew, b_nobs, b_ncobs, b_term,
                next_idx, n_step):
    """Copy rows ``idx`` of ``data`` into the batch arrays (``next_obs`` rebuilt). With
    ``n_step`` (an n-step batch) the next observations come from rows ``next_idx`` (the last
    step summed) instead, and ``b_rew`` / ``b_term`` are left as they are (the caller's
    summed rewards and bootstrap flags); without it ``next_idx`` is not read.

    Two passes, because the rows are random reads from a buffer of hundreds of MB: the first
    only loads one value of every cache line of every row, a tight loop whose independent
    misses the CPU overlaps (~20 in flight); the copy then hits the cache. Copying straight
    from memory kept only ~2 misses in flight, and took about three times as long."""
    o_obs, o_cobs, o_act, o_rew, o_nst, o_ncobs, o_term = (
        offsets[0], offsets[1], offsets[2], offsets[3], offsets[4], offsets[5], offsets[6])
    obs_dim = b_obs.shape[1]
    act_dim = b_act.shape[1]
    width = data.shape[1]
    touched = np.float32(0.0)
    for j in range(idx.shape[0]):
        row = data[idx[j]]
        for k in range(0, width, 16):  # 16 float32 = one 64-byte line
            touched += row[k]
        touched += row[width - 1]
        if n_step:
            row = data[next_idx[j]]
            for k in range(0, width, 16):
                touched += row[k]
            touched += row[width - 1]
    for j in range(idx.shape[0]):
        row = data[idx[j]]
        copy_into(b_obs[j], row[o_obs:o_obs + obs_dim])
        copy_into(b_cobs[j], row[o_cobs:o_cobs + b_cobs.shape[1]])
        copy_into(b_act[j], row[o_act:o_act + act_dim])
        if n_step:
            row = data[next_idx[j]]
        else:
            b_rew[j] = row[o_rew]
            b_term[j] = row[o_term]
        copy_into(b_nobs[j, :STATE_PART], row[o_nst:o_nst + STATE_PART])
        if obs_dim > STATE_PART:  # history: newest action, then the older ones shifted
            copy_into(b_nobs[j, STATE_PART:STATE_PART + act_dim], row[o_act:o_act + act_dim])
            copy_into(b_nobs[j, STATE_PART + act_dim:], row[o_obs + STATE_PART:o_obs + obs_dim - act_dim])
        copy_into(b_ncobs[j], row[o_ncobs:o_ncobs + b_ncobs.shape[1]])
    return touched  # returned so the first pass is not optimized away


@njit(cache=True)
def _gather_kernel(idx, data, offsets, b_obs, b_cobs, b_act, b_rew, b_nobs, b_ncobs, b_term):
    return gather_rows(idx, data, offsets, b_obs, b_cobs, b_act, b_rew, b_nobs, b_ncobs, b_term,
                       idx, False)


@njit(cache=True)
def _store_observations(data, offsets, first, obs, critic_obs, copy_to):
    """Rows ``first``.. of ``data``: the observations a step starts from; ``obs`` also into
    ``copy_to`` (the caller's contiguous copy: the environment reuses its arrays)."""
    o_obs, o_cobs = offsets[0], offsets[1]
    obs_dim, cobs_dim = obs.shape[1], critic_obs.shape[1]
    for j in range(obs.shape[0]):
        row = data[first + j]
        copy_into(row[o_obs:o_obs + obs_dim], obs[j])
        copy_into(row[o_cobs:o_cobs + cobs_dim], critic_obs[j])
        copy_into(copy_to[j], obs[j])


@njit(cache=True)
def _store_outcomes(data, offsets, first, action, reward, terminated, next_obs, next_critic_obs,
                    final_obs, final_critic_obs, done):
    """Rows ``first``.. of ``data``: the rest of a step's transitions; where ``done``, the
    episode's final observations instead of the next ones (those begin the next episode)."""
    o_act, o_rew, o_nst, o_ncobs, o_term = (offsets[2], offsets[3], offsets[4], offsets[5],
                                            offsets[6])
    act_dim, cobs_dim = action.shape[1], next_critic_obs.shape[1]
    for j in range(action.shape[0]):
        row = data[first + j]
        copy_into(row[o_act:o_act + act_dim], action[j])
        row[o_rew] = reward[j]
        row[o_term] = np.float32(terminated[j])
        nxt = final_obs[j] if done[j] else next_obs[j]
        nxt_c = final_critic_obs[j] if done[j] else next_critic_obs[j]
        copy_into(row[o_nst:o_nst + STATE_PART], nxt[:STATE_PART])
        copy_into(row[o_ncobs:o_ncobs + cobs_dim], nxt_c)


@njit(cache=True)
def n_step_terms(idx, n, stride, size, ptr, wrapped, row_done, data, offsets, discounts,
                 bootstrap_powers, terms, next_idx, terminated):
    """The per-row parts of n-step targets for the rows ``idx`` (the trainer's
    ``Trainer._n_step_batch`` states them in NumPy; these are the same numbers, without
    building the batch): step k of row i is row i + k * ``stride`` (the same environment),
    summed if it is stored (below ``size``; when ``wrapped``, not past ``ptr`` from below it)
    and no earlier step ended the episode (``row_done``). Writes ``terms[j, k]`` =
    reward * used * ``discounts[k]`` (float32, in NumPy's order; their row sums are the
    n-step rewards), ``next_idx[j]`` = the last summed row (m steps), and ``terminated[j]`` =
    1 - (1 - that row's terminated) * ``bootstrap_powers[m]`` (gamma^(m - n), computed by
    the caller), rounded to float32 as NumPy does. ``idx`` must be stored rows (not checked)."""
    o_rew, o_term = offsets[3], offsets[6]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    # first only load the rewards and terminated flags (random rows: misses the CPU
    # overlaps, as in gather_rows), then the loop below, whose branches would otherwise wait
    # for each miss in turn
    touched = zero
    for j in range(idx.shape[0]):
        for k in range(n):
            row = idx[j] + stride * k
            if row < size:
                touched += data[row, o_rew] + data[row, o_term]
    for j in range(idx.shape[0]):
        i = idx[j]
        ended = False
        m = 0
        last = i
        for k in range(n):
            row = i + stride * k
            valid = row < size and not (wrapped and i < ptr and row >= ptr)
            if not valid:
                row = i
            used = valid and not ended
            terms[j, k] = data[row, o_rew] * (one if used else zero) * discounts[k]
            if used:
                m += 1
                last = row
            ended = ended or row_done[row]
        next_idx[j] = last
        bootstrap = np.float64(one - data[last, o_term]) * bootstrap_powers[m]
        terminated[j] = np.float32(1.0 - bootstrap)
    return touched  # returned so the first pass is not optimized away


class ReplayBuffer:
    """Fixed-capacity FIFO buffer (oldest rows are overwritten when full).

    All fields of a transition live in one packed row of ``data``, so a random row is one
    contiguous read. The attributes ``obs``, ``critic_obs``, ``action``, ``reward``,
    ``next_obs_state`` (first 18 values of the next observation), ``next_critic_obs`` and
    ``terminated`` are column views of ``data`` for writing rows."""

    def __init__(self, capacity: int, obs_dim: int, critic_obs_dim: int, action_dim: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if obs_dim < STATE_PART:
            raise ValueError(f"obs_dim must be >= {STATE_PART}")
        self.capacity = int(capacity)
        self.size = 0
        self.ptr = 0
        widths = {"obs": obs_dim, "critic_obs": critic_obs_dim, "action": action_dim,
                  "reward": 1, "next_obs_state": STATE_PART, "next_critic_obs": critic_obs_dim,
                  "terminated": 1}
        offsets, start = [], 0
        for name in FIELDS:
            offsets.append(start)
            start += widths[name]
        self.offsets = np.array(offsets, dtype=np.int64)
        # np.empty: pages are only touched (and paid for) as the buffer fills.
        self.data = np.empty((capacity, start), np.float32)
        for name, off in zip(FIELDS, offsets):
            view = self.data[:, off:off + widths[name]]
            setattr(self, name, view[:, 0] if name in ("reward", "terminated") else view)
        self._batch_widths = {**widths, "next_obs": obs_dim}

    @property
    def wrapped(self) -> bool:
        """Whether writing has gone around: the stored rows from ``ptr`` on are then older than
        those below it (an environment's next step is not after its row there)."""
        return self.size == self.capacity or self.ptr < self.size

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

    def store_observations(self, rows: slice, obs: np.ndarray, critic_obs: np.ndarray,
                           copy_to: np.ndarray) -> None:
        """The first half of storing one step of ``n`` environments in ``rows`` (from
        ``rows(n)``): the actor and critic observations it starts from, before the step (the
        environment overwrites them); ``obs`` is also copied into ``copy_to`` (n, obs_dim)."""
        _store_observations(self.data, self.offsets, rows.start, obs, critic_obs, copy_to)

    def store_outcomes(self, rows: slice, action: np.ndarray, reward: np.ndarray,
                       terminated: np.ndarray, next_obs: np.ndarray, next_critic_obs: np.ndarray,
                       final_obs: np.ndarray, final_critic_obs: np.ndarray,
                       done: np.ndarray) -> None:
        """The second half: the actions, rewards, terminations and next observations, the
        episodes' final observations where ``done`` (Gymnasium's ``info["final_obs"]``)."""
        _store_outcomes(self.data, self.offsets, rows.start, action, reward, terminated,
                        next_obs, next_critic_obs, final_obs, final_critic_obs, done)

    def get(self, idx: np.ndarray, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The transitions at row indices ``idx`` as contiguous arrays (``next_obs`` rebuilt)."""
        if out is None:
            out = {name: np.empty((len(idx),) + ((self._batch_widths[name],) if name not in (
                "reward", "terminated") else ()), np.float32) for name in BATCH_FIELDS}
        _gather_kernel(np.asarray(idx, dtype=np.int64), self.data, self.offsets, out["obs"],
                       out["critic_obs"], out["action"], out["reward"], out["next_obs"],
                       out["next_critic_obs"], out["terminated"])
        return out

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"data": self.data[:self.size].copy(), "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["data"])
        if n > self.capacity or state["data"].shape[1] != self.data.shape[1]:
            raise ValueError(f"checkpoint buffer ({state['data'].shape}) does not fit this "
                             f"buffer ({self.data.shape})")
        self.data[:n] = state["data"]
        self.size = n
        self.ptr = int(state["ptr"])
