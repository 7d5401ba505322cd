"""Fast TD3 core with an asymmetric actor-critic: networks, TD3 updates and Adam in numba.

A fast implementation of ``nanofly.train.td3_reference`` (``ReferenceTD3``, plain PyTorch, the
statement of the algorithm): the same updates on the same batches give the same parameters to
~1e-5 (tests/test_td3_core.py). Read the reference for what is computed; this module and
``td3_kernels`` are how it is made fast.

``TD3Core`` owns the actor, the twin critics, their three target copies, the Adam state and
preallocated workspaces, all as flat float32 buffers; one ``critic_update`` / ``actor_update``
is one call into a hand-written numba kernel (forward, backward, Adam, Polyak; with two
threads the second half of the batch runs on a helper thread) whose matrix products go to
BLAS. The training loop (replay buffer, environments, schedule) lives elsewhere
and calls it. Measured costs: ``bench/bench_td3_update.py``.

Construction (all sizes are runtime arguments; defaults are the paper's: the observation
contract's ``OBSERVATION_DIM`` and ``ACTION_DIM``, the simulator's 28-value privileged
observation)::

    core = TD3Core(actor_obs_dim=OBSERVATION_DIM, critic_obs_dim=28, action_dim=ACTION_DIM,
                   actor_hidden=(64, 64), critic_hidden=(64, 64),
                   lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4,
                   gamma=0.99, polyak=0.995, smoothing_std=0.2, smoothing_clip=0.5,
                   batch_size=256, seed=0, threads=1, critic_layer_norm=False)
    core.warmup()  # optional: compile / load the kernels now (seconds cold, ~0.3 s cached)

- actor: ``[actor_obs_dim, *actor_hidden, action_dim]``, tanh after every layer (the output
  too); same layout and semantics as ``nanofly.policy.actor.Actor``.
- critics Q1, Q2: ``[critic_obs_dim + action_dim, *critic_hidden, 1]``, tanh on the hidden
  layers, linear output; the input is ``concat(critic_obs, action)``. ``critic_obs_dim`` is the
  privileged observation (28, asymmetric) or the actor observation (ablation "asymmetric
  critic off": pass the actor observation as ``critic_obs`` too). ``critic_layer_norm``: a
  LayerNorm (torch's: biased variance, eps 1e-5, a gain and an offset per unit) between each
  hidden Linear and its tanh, in both critics and their targets (the trainer's default; the
  paper's critics have none).
- init: every weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default
  ``nn.Linear`` distribution, drawn from ``numpy.random.default_rng(seed)`` (same distribution
  as torch, not the same numbers); targets start as exact copies. ``load_actor`` /
  ``load_critics`` take torch weights instead.
- Adam = ``torch.optim.Adam(lr, betas, eps, weight_decay)``: L2 weight decay added to the
  gradient (biases included), bias correction, one optimizer state for the actor and one for
  the two critics (step counts ``actor_steps`` / ``critic_steps``). ``actor_lr`` and
  ``critic_lr`` attributes may be changed between calls.
- ``batch_size`` only sizes the workspaces: any batch of 1..batch_size rows may be passed (a
  larger one grows the workspace once).
- ``threads``: each update computes its batch as two halves and adds their gradients in a
  fixed order; 1 = both halves in turn on the calling thread; 2 = one on the calling thread
  and one on a helper thread (the kernels release the GIL): ~1.6x (critic) / ~1.5x (actor)
  faster when the second core is idle (bench; no gain when another process keeps it busy).
  The results are the same bits for 1 and 2 (tested). ``close()`` stops the helper thread
  (also done when the core is garbage-collected; it is a daemon thread either way).
  ``adaptive_threads`` (with 2): each update runs on one thread or two, whichever is measured
  faster now (``AdaptiveThreads``; the trainer's default).
- Construction sets the thread count of SciPy's BLAS (which the kernels call) to 1:
  ``core.blas_threads_info`` says what was done. NumPy's own BLAS is not touched.

Updates (arrays: float32, C-contiguous, B rows; ``reward``/``terminated`` may be (B,) or (B, 1)):

``critic_update(critic_obs (B, Oc), action (B, A), reward (B,), next_critic_obs (B, Oc),
next_actor_obs (B, Oa), terminated (B,), noise (B, A)) -> float``
    a' = clip(actor_target(next_actor_obs) + clip(smoothing_std * noise, -clip, clip), -1, 1)
    y  = reward + gamma * (1 - terminated) * min(Q1_target, Q2_target)(next_critic_obs, a')
    loss = mean((Q1(critic_obs, action) - y)^2) + mean((Q2(critic_obs, action) - y)^2)
    (``nn.MSELoss()`` mean reduction per critic, summed), y treated as a constant; one Adam
    step on both critics. ``noise`` is standard normal, sampled by the caller (seeded there).
    ``terminated`` is 1.0 where the episode ended by termination (it removes the bootstrap);
    a time-limit truncation must be passed as 0.0 (the next state is still bootstrapped).
    Returns the loss; ``core.critic_stats`` holds [loss_q1, loss_q2, mean_q1, mean_q2, mean_y]
    of the last call (overwritten by the next one).

``actor_update(actor_obs (B, Oa), critic_obs (B, Oc), update_targets=True) -> float``
    loss = -mean(Q1(critic_obs, actor(actor_obs))); one Adam step on the actor only (critic
    parameters are not changed), then, unless ``update_targets=False``, the Polyak update of
    all three targets. Returns the loss.

``update_targets()``: target = polyak * target + (1 - polyak) * online, for the actor and both
critics (polyak = 0.995 keeps 99.5 % of the target).

From a replay buffer (what the trainer uses; the same numbers as the calls above on
``replay.get(idx)``): ``update_sampled(replay, idx, noise, reward_scale=1.0,
critic_targets=False, actor_targets=None)`` gathers the rows ``idx`` inside the update (each
thread its own half: no batch is built in Python), can take the target critics' Polyak step,
and with ``actor_targets`` ("none" | "actor" | "all") runs the actor update on the same batch
in the same call; without ``actor_targets`` it is the critic half alone, and
``actor_update_sampled`` then runs the actor update on the same batch as a separate call (for
code that changes the actor's weights in between). For n-step targets it also takes, per
row, the row whose next observations are bootstrapped (``next_idx``) and the summed reward
and ``terminated`` value to use instead of the row's own.

Acting: ``actor_forward(obs (N, Oa), out=None) -> (N, A)`` with the online actor (N any; the
workspace grows once for a larger N); ``out`` lets the caller reuse an output array.

Torch: ``to_actor(target=False) -> nanofly.policy.actor.Actor``; ``actor_weights`` the same as
NumPy arrays (what ``save_policy`` takes too, without importing torch),
``load_actor(actor_or_state_dict, targets_too=True)``, ``to_critics(target=False) -> (Q1, Q2)``
as ``nn.Sequential(Linear, Tanh, Linear, Tanh, Linear)`` (a LayerNorm before each Tanh with
``critic_layer_norm``), ``load_critics(q1, q2, ...)``.
Checkpoint: ``state_dict()`` / ``load_state_dict()`` (NumPy arrays and ints).
Gradients of the last update: ``core.grads`` (same layout as ``params``).

Numerics: float32 throughout; tanh is a rational approximation (max abs error 2.7e-7,
tested); updates match a plain PyTorch TD3 (torch.optim.Adam) to ~1e-6 in the parameters
(tests/test_td3_core.py). The kernels are numba ``cache=True``: the first use on a machine
compiles them (~4-5 s CPU, see the bench), later processes load them in ~0.3 s. Needs SciPy
(its BLAS does the matrix products, as for ``np.dot`` inside numba).

Flat parameter layout (``core.params``; ``targets``, ``adam_m``, ``adam_v``, ``grads`` share
it): actor ``W1 (h1, Oa), b1, W2 (h2, h1), b2, W3 (A, h2), b3``, then the twin critics stacked
layer by layer: ``W1 (2*c1, Oc+A)`` (rows [0, c1) are Q1's, [c1, 2*c1) Q2's), ``b1 (2*c1)``,
``W2 (2, c2, c1)``, ``b2 (2, c2)``, ``W3 (2, c2)``, ``b3 (2)``, and with ``critic_layer_norm``
the LayerNorm gains and offsets ``g1 (2, c1)``, ``beta1 (2, c1)``, ``g2 (2, c2)``, ``beta2 (2,
c2)``. Stacking lets both critics' first layers run as one matrix product. Weights are (out,
in) as in torch.
"""
from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM
from nanofly.train import td3_kernels as _k

_F32 = np.float32
_F32_DTYPE = np.dtype(np.float32)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class AdaptiveThreads:
    """Picks, update by update, whether the helper thread computes the second half of the
    batch (``TD3Core(threads=2, adaptive_threads=True)``). Either way the halves are computed
    and added the same way, so the choice changes the speed only, never a bit.

    Why: on an idle machine two threads are faster per update, but when another process keeps a
    core busy the helper is queued behind it and every update waits a scheduler time slice for
    it, several times what the update itself costs (`bench/bench_busy_machine.py`,
    docs/benchmarks.md). So: run in the current mode,
    keep a moving average of its seconds per update (per kind of update: critic, or critic
    and actor), and every ``PROBE_INTERVAL`` updates run two in the other mode, the first
    to wake the helper or fill caches, the second timed (the other mode's latest figure).
    Switch when the other mode's figure is below ``SWITCH_RATIO`` times the current
    mode's average: after a probe, and with two threads as soon as they slow down. An idle
    two-core machine pays the probes only: two slower updates in ``PROBE_INTERVAL`` (~0.2 %)."""

    PROBE_INTERVAL = 400
    SWITCH_RATIO = 0.8
    SMOOTHING = 0.05  # weight of a new update in the moving average
    # Until an average holds this many updates it is their minimum, and the mode does not
    # switch between probes: the first updates of a run or after a switch pay for starting or
    # waking the helper and for cold caches (the very first two-thread update: ~2 ms).
    MIN_SAMPLES = 8

    def __init__(self) -> None:
        self.helper = True  # the current mode: two threads
        self.updates = 0
        self.updates_without_helper = 0
        self.switches = 0
        self._average: dict[tuple[bool, int], float] = {}
        self._samples: dict[tuple[bool, int], int] = {}  # updates in each average

    def pick(self) -> bool:
        """Whether the next update uses the helper thread."""
        probing = self.updates % self.PROBE_INTERVAL in (0, 1)
        return self.helper != probing

    def record(self, helper: bool, phases: int, seconds: float) -> None:
        """The update just made (as ``pick`` said) took ``seconds``."""
        step = self.updates % self.PROBE_INTERVAL
        self.updates += 1
        self.updates_without_helper += not helper
        if step == 0:  # the first probe only wakes the other mode
            return
        key = (helper, phases)
        samples = 0 if step == 1 else self._samples.get(key, 0)
        if samples == 0:  # a probe (the other mode's latest figure), or the first of a kind
            self._average[key] = seconds
        elif samples < self.MIN_SAMPLES:  # the fastest while few: the first ones are slow
            self._average[key] = min(self._average[key], seconds)
        else:
            self._average[key] += self.SMOOTHING * (seconds - self._average[key])
        self._samples[key] = samples + 1
        # switch when the other mode is clearly faster: found by a probe, or, with two threads,
        # because they became slow (the helper queued behind another process) since the last
        # one. (One thread slows down too on a busy machine, but then so would two: back to
        # two threads only after a probe, else the modes would take turns.)
        if step != 1 and (not self.helper or self._samples[key] < self.MIN_SAMPLES):
            return
        mine = self._average.get((self.helper, phases))
        other = self._average.get((not self.helper, phases))
        if mine is not None and other is not None and other < self.SWITCH_RATIO * mine:
            self.helper = not self.helper
            self.switches += 1


class TD3Core:
    """Actor, twin critics, targets, Adam state and workspaces for fast TD3 updates."""

    def __init__(self, actor_obs_dim: int = OBSERVATION_DIM, critic_obs_dim: int = 28,
                 action_dim: int = ACTION_DIM,
                 actor_hidden: tuple[int, int] = (64, 64),
                 critic_hidden: tuple[int, int] = (64, 64), *,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-4, gamma: float = 0.99, polyak: float = 0.995,
                 smoothing_std: float = 0.2, smoothing_clip: float = 0.5,
                 batch_size: int = 256, seed: int = 0, threads: int = 1,
                 critic_layer_norm: bool = False, adaptive_threads: bool = False):
        for name, value in (("actor_obs_dim", actor_obs_dim), ("critic_obs_dim", critic_obs_dim),
                            ("action_dim", action_dim), ("batch_size", batch_size)):
            if int(value) != value or int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, hidden in (("actor_hidden", actor_hidden), ("critic_hidden", critic_hidden)):
            if len(hidden) != 2 or any(int(h) != h or int(h) <= 0 for h in hidden):
                raise ValueError(f"{name} must be two positive integers (two hidden layers), "
                                 f"got {hidden!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two values in [0, 1), got {betas!r}")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"need eps > 0 and weight_decay >= 0, got {eps!r}, {weight_decay!r}")
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= polyak <= 1.0:
            raise ValueError(f"gamma and polyak must be in [0, 1], got {gamma!r}, {polyak!r}")
        if threads not in (1, 2):
            raise ValueError(f"threads must be 1 or 2, got {threads!r}")
        if not smoothing_std >= 0 or not smoothing_clip >= 0:
            raise ValueError("smoothing_std and smoothing_clip must be >= 0, got "
                             f"{smoothing_std!r}, {smoothing_clip!r}")

        self.actor_obs_dim = int(actor_obs_dim)
        self.critic_obs_dim = int(critic_obs_dim)
        self.action_dim = int(action_dim)
        self.actor_hidden = (int(actor_hidden[0]), int(actor_hidden[1]))
        self.critic_hidden = (int(critic_hidden[0]), int(critic_hidden[1]))
        self.critic_in_dim = self.critic_obs_dim + self.action_dim
        self.actor_sizes = [self.actor_obs_dim, *self.actor_hidden, self.action_dim]
        self.critic_sizes = [self.critic_in_dim, *self.critic_hidden, 1]
        self.actor_lr = float(lr)
        self.critic_lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.gamma = float(gamma)
        self.polyak = float(polyak)
        self.smoothing_std = float(smoothing_std)
        self.smoothing_clip = float(smoothing_clip)
        self.seed = int(seed)
        self.critic_layer_norm = bool(critic_layer_norm)
        self.actor_steps = 0
        self.critic_steps = 0

        oa, oc, na = self.actor_obs_dim, self.critic_obs_dim, self.action_dim
        ha1, ha2 = self.actor_hidden
        hc1, hc2 = self.critic_hidden
        cin = self.critic_in_dim
        self.dims = np.zeros(_k.NUM_DIMS, dtype=np.int64)
        self.dims[_k.DIM_ACTOR_OBS] = oa
        self.dims[_k.DIM_CRITIC_OBS] = oc
        self.dims[_k.DIM_ACTION] = na
        self.dims[_k.DIM_ACTOR_H1], self.dims[_k.DIM_ACTOR_H2] = ha1, ha2
        self.dims[_k.DIM_CRITIC_H1], self.dims[_k.DIM_CRITIC_H2] = hc1, hc2
        self.dims[_k.DIM_LAYER_NORM] = int(self.critic_layer_norm)
        actor_sizes = [ha1 * oa, ha1, ha2 * ha1, ha2, na * ha2, na]
        offs = np.concatenate([[0], np.cumsum(actor_sizes)]).astype(np.int64)
        self.n_actor_params = int(offs[-1])
        self.n_critic_params = 2 * (hc1 * cin + hc1 + hc2 * hc1 + hc2 + hc2 + 1)
        if self.critic_layer_norm:  # a gain and an offset per hidden unit
            self.n_critic_params += 2 * 2 * (hc1 + hc2)
        # offs: start of actor W1, b1, W2, b2, W3, b3, critics, end (td3_kernels.OFF_)
        self.offs = np.append(offs, self.n_actor_params + self.n_critic_params).astype(np.int64)
        n = self.n_actor_params + self.n_critic_params

        self.params = np.zeros(n, dtype=_F32)
        self._init_params(np.random.default_rng(self.seed))
        self.targets = self.params.copy()
        self.adam_m = np.zeros(n, dtype=_F32)
        self.adam_v = np.zeros(n, dtype=_F32)
        # one gradient buffer per half of the batch: each update sums the gradients of the
        # two halves in the same order whether one thread computes both or two threads one
        # each, so the thread count changes no bits. grads (row 0) holds the summed gradient
        # of the last update (critic part after critic_update, actor part after actor_update)
        self.threads = int(threads)
        # threads=2 with adaptive_threads: each update runs on two threads or on this one
        # alone, whichever is measured faster now (AdaptiveThreads); the same bits either way
        self._adaptive = AdaptiveThreads() if adaptive_threads and self.threads == 2 else None
        self._sampled_helper = False  # whether the last sampled batch's second half is the helper's
        self._grads2 = np.zeros((2, n), dtype=_F32)
        self.grads = self._grads2[0]
        self.blas_threads_info = _k.limit_blas_threads(1)
        self._worker: _HalfWorker | None = None

        self.batch_size = int(batch_size)
        self._ws2 = np.zeros((self.threads, 0), dtype=_F32)
        self._batch: tuple[np.ndarray, ...] = ()
        # rows of the batch the last update_sampled gathered, which
        # actor_update_sampled reuses; None when there is none
        self._sampled_batch: int | None = None
        # update_kernel's job and counters when there is no helper thread; and the replay
        # arguments of updates that do not gather
        self._scalars = np.zeros(_k.NUM_SCALARS, dtype=_F32)  # td3_kernels.SCALAR_ fields
        # parameter ranges whose targets take a Polyak step (update_targets / critic_targets)
        self._polyak_ranges = {"none": (0, 0), "actor": (0, self.n_actor_params),
                               "critics": (self.n_actor_params, n), "all": (0, n)}
        self._solo_job = np.zeros(_k.JOB_FIELDS, dtype=np.int64)
        self._solo_counters = np.zeros(_k.COUNTER_FIELDS, dtype=np.int64)
        no_rows = np.zeros(1, dtype=np.int64)
        self._no_replay = (np.zeros((1, 1), dtype=_F32), np.zeros(7, dtype=np.int64), no_rows,
                           no_rows, 0)
        self._ensure_update_workspace(self.batch_size)
        self._fwd_ws = np.zeros(0, dtype=_F32)
        self._fwd_rows = 0  # rows the forward workspace holds
        self._ensure_forward_workspace(1)
        # the td3_kernels.HP_ fields of each optimizer (float64, read once per call)
        self._hp_critic = np.zeros(_k.NUM_HP, dtype=np.float64)
        self._hp_actor = np.zeros(_k.NUM_HP, dtype=np.float64)
        # statistics per half, as the gradients (td3_kernels.CSTAT_ / ASTAT_ fields)
        self._stats2 = np.zeros((2, _k.NUM_CSTATS), dtype=_F32)
        self._actor_stats2 = np.zeros((2, _k.NUM_ASTATS), dtype=_F32)
        # [loss_q1, loss_q2, mean_q1, mean_q2, mean_y] of the last critic update
        self.critic_stats = self._stats2[0, :_k.CSTAT_SUMS]

    # -------------------------------------------------------------------------------- layout
    def _actor_views(self, buf: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W (out, in), b (out,)), ...] views of the actor part of ``buf``."""
        o, sizes = self.offs, self.actor_sizes
        return [(buf[o[2 * i]:o[2 * i + 1]].reshape(sizes[i + 1], sizes[i]),
                 buf[o[2 * i + 1]:o[2 * i + 2]]) for i in range(3)]

    def _critic_views(self, buf: np.ndarray, which: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W, b), ...] views of critic ``which`` (0 = Q1, 1 = Q2) inside ``buf``."""
        cin, (c1, c2) = self.critic_in_dim, self.critic_hidden
        o = int(self.offs[_k.OFF_CRITICS])
        w1 = buf[o:o + 2 * c1 * cin].reshape(2, c1, cin)
        o += 2 * c1 * cin
        b1 = buf[o:o + 2 * c1].reshape(2, c1)
        o += 2 * c1
        w2 = buf[o:o + 2 * c2 * c1].reshape(2, c2, c1)
        o += 2 * c2 * c1
        b2 = buf[o:o + 2 * c2].reshape(2, c2)
        o += 2 * c2
        w3 = buf[o:o + 2 * c2].reshape(2, 1, c2)
        o += 2 * c2
        b3 = buf[o:o + 2].reshape(2, 1)
        return [(w1[which], b1[which]), (w2[which], b2[which]), (w3[which], b3[which])]

    def _critic_norm_views(self, buf: np.ndarray, which: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(gain, offset) of hidden layer 1, of layer 2] of critic ``which``'s LayerNorms
        (``critic_layer_norm``; after the linear layers: g1 (2, c1), beta1, g2 (2, c2), beta2)."""
        if not self.critic_layer_norm:
            return []
        c1, c2 = self.critic_hidden
        o = int(self.offs[_k.OFF_END]) - 2 * 2 * (c1 + c2)
        g1 = buf[o:o + 2 * c1].reshape(2, c1)
        beta1 = buf[o + 2 * c1:o + 4 * c1].reshape(2, c1)
        o += 4 * c1
        g2 = buf[o:o + 2 * c2].reshape(2, c2)
        beta2 = buf[o + 2 * c2:o + 4 * c2].reshape(2, c2)
        return [(g1[which], beta1[which]), (g2[which], beta2[which])]

    def _critic_layers(self, buf: np.ndarray, which: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(weight, bias), ...] views of critic ``which`` in its torch modules' order (see
        ``_critic_modules``): Linear, [LayerNorm,] Linear, [LayerNorm,] Linear."""
        linear = self._critic_views(buf, which)
        norm = self._critic_norm_views(buf, which)
        return [linear[0], *norm[:1], linear[1], *norm[1:], linear[2]]

    def _init_params(self, rng: np.random.Generator) -> None:
        # torch nn.Linear default: W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        layer_sets = [self._actor_views(self.params)]
        layer_sets += [self._critic_views(self.params, c) for c in (0, 1)]
        for layers in layer_sets:
            for weight, bias in layers:
                bound = 1.0 / math.sqrt(weight.shape[1])
                weight[...] = rng.uniform(-bound, bound, size=weight.shape)
                bias[...] = rng.uniform(-bound, bound, size=bias.shape)
        for c in (0, 1):  # torch.nn.LayerNorm's init: gain 1, offset 0
            for gain, offset in self._critic_norm_views(self.params, c):
                gain[...] = 1.0
                offset[...] = 0.0

    def _ensure_update_workspace(self, batch: int) -> None:
        rows = -(-batch // self.threads)  # rows per thread
        need = rows * max(_k.critic_ws_per_row(self.dims), _k.actor_ws_per_row(self.dims))
        if need > self._ws2.shape[1]:
            self._ws2 = np.zeros((self.threads, need), dtype=_F32)
            # this thread's rows of a batch that update_sampled gathers: all of them
            # when it may compute both halves itself
            self._batch = self._batch_arrays(batch if self._adaptive is not None else rows)
            self.close()  # the helper thread is bound to the old buffers

    def _batch_arrays(self, rows: int) -> tuple[np.ndarray, ...]:
        """Arrays for ``rows`` rows of an update's inputs, in update_kernel's order (the
        td3_kernels.BATCH_ slots): critic obs, action, reward, next critic obs, next actor obs,
        terminated, noise, actor obs."""
        oa, oc, na = self.actor_obs_dim, self.critic_obs_dim, self.action_dim
        return tuple(np.zeros(shape, dtype=_F32) for shape in (
            (rows, oc), (rows, na), (rows,), (rows, oc), (rows, oa), (rows,), (rows, na),
            (rows, oa)))

    def _ensure_forward_workspace(self, n: int) -> None:
        if n > self._fwd_rows:
            self._fwd_ws = np.zeros(n * int(_k.forward_ws_per_row(self.dims)), dtype=_F32)
            self._fwd_rows = n

    # -------------------------------------------------------------------------------- checks
    @staticmethod
    def _check(name: str, arr: Any, rows: int | None, cols: int | None) -> np.ndarray:
        """Validate one input array; 1-D (B,) columns also accept (B, 1). Returns the array."""
        if (type(arr) is np.ndarray and arr.dtype is _F32_DTYPE and arr.flags.c_contiguous
                and arr.ndim == (1 if cols is None else 2) and arr.shape[0] > 0
                and (rows is None or arr.shape[0] == rows)
                and (cols is None or arr.shape[1] == cols)):
            return arr  # the common case, checked in ~0.3 us
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: expected a numpy float32 array, got {type(arr).__name__}")
        if arr.dtype != _F32:
            raise TypeError(f"{name}: dtype {arr.dtype}, expected float32 "
                            f"(convert with arr.astype(np.float32))")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name}: array is not C-contiguous (np.ascontiguousarray(arr) "
                             f"or np.take(buffer, idx, axis=0, out=...) into a packed array)")
        if cols is None:  # a per-row scalar
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr.reshape(-1)
            if arr.ndim != 1 or (rows is not None and arr.shape[0] != rows):
                raise ValueError(f"{name}: shape {arr.shape}, expected ({rows},) or ({rows}, 1)")
            return arr
        if arr.ndim != 2 or arr.shape[1] != cols or (rows is not None and arr.shape[0] != rows):
            want = f"({'B' if rows is None else rows}, {cols})"
            raise ValueError(f"{name}: shape {arr.shape}, expected {want}")
        if arr.shape[0] == 0:
            raise ValueError(f"{name}: empty batch")
        return arr

    def _adam_hp(self, hp: np.ndarray, lr: float, step: int) -> None:
        beta1, beta2 = self.betas
        hp[_k.HP_GAMMA] = self.gamma
        hp[_k.HP_SMOOTHING_STD] = self.smoothing_std
        hp[_k.HP_SMOOTHING_CLIP] = self.smoothing_clip
        hp[_k.HP_STEP_SIZE] = lr / (1.0 - beta1 ** step)  # torch: lr / bias_correction1
        hp[_k.HP_INV_SQRT_BIAS_CORRECTION2] = 1.0 / math.sqrt(1.0 - beta2 ** step)
        hp[_k.HP_BETA1] = beta1
        hp[_k.HP_BETA2] = beta2
        hp[_k.HP_EPS] = self.eps
        hp[_k.HP_WEIGHT_DECAY] = self.weight_decay
        hp[_k.HP_POLYAK] = self.polyak

    # ------------------------------------------------------------------------------- updates
    def critic_update(self, critic_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                      next_critic_obs: np.ndarray, next_actor_obs: np.ndarray,
                      terminated: np.ndarray, noise: np.ndarray) -> float:
        """One TD3 step on both critics (see the module docstring); returns the summed loss."""
        critic_obs = self._check("critic_obs", critic_obs, None, self.critic_obs_dim)
        b = critic_obs.shape[0]
        action = self._check("action", action, b, self.action_dim)
        reward = self._check("reward", reward, b, None)
        next_critic_obs = self._check("next_critic_obs", next_critic_obs, b, self.critic_obs_dim)
        next_actor_obs = self._check("next_actor_obs", next_actor_obs, b, self.actor_obs_dim)
        terminated = self._check("terminated", terminated, b, None)
        noise = self._check("noise", noise, b, self.action_dim)
        self._grow(b)
        inputs = (critic_obs, action, reward, next_critic_obs, next_actor_obs, terminated, noise,
                  self._batch[_k.BATCH_ACTOR_OBS])
        self._sampled_batch = None  # the mailbox gets these rows
        self._run_update(_k.CRITIC_JOB, inputs, b, dict(enumerate(inputs[:_k.BATCH_ACTOR_OBS])),
                         None, _F32(1.0))
        return self._critic_loss()

    def _critic_loss(self) -> float:
        stats = self._stats2[0]
        return float(stats[_k.CSTAT_LOSS_Q1] + stats[_k.CSTAT_LOSS_Q2])

    def _actor_loss(self) -> float:
        return float(self._actor_stats2[0, _k.ASTAT_LOSS])

    def update_sampled(self, replay: Any, idx: np.ndarray, noise: np.ndarray,
                       reward_scale: float = 1.0, critic_targets: bool = False,
                       actor_targets: str | None = None, *, next_idx: np.ndarray | None = None,
                       reward: np.ndarray | None = None,
                       terminated: np.ndarray | None = None) -> tuple[float, float | None]:
        """``critic_update`` on the rows ``idx`` of a ``ReplayBuffer`` (gathered by the threads
        that use them: no batch arrays are built), rewards times ``reward_scale``; with
        ``critic_targets`` then the Polyak step of the two target critics; and with
        ``actor_targets`` ("none", "actor" or "all": which targets take a Polyak step after
        it) an ``actor_update`` on the same batch, in the same call. Returns (critic loss,
        actor loss or None). Same numbers as the array calls on ``replay.get(idx)``; rows
        outside the stored ones raise ValueError and change nothing.

        An n-step batch: ``next_idx`` (B,) int64, ``reward`` (B,) and ``terminated`` (B,)
        float32, all three or none: the next observations are those of the rows
        ``next_idx`` (the last step summed), and ``reward`` (before ``reward_scale``) and
        ``terminated`` replace the rows' own. Same numbers as the array calls on
        ``replay.get(idx)`` with these rewards, terminated values and
        ``replay.get(next_idx)``'s next observations."""
        if (type(idx) is not np.ndarray or idx.dtype != np.int64 or idx.ndim != 1
                or not idx.flags.c_contiguous or not 1 <= idx.shape[0]):
            raise ValueError("idx: expected a non-empty C-contiguous int64 array of row indices")
        b = idx.shape[0]
        noise = self._check("noise", noise, b, self.action_dim)
        outcomes = None
        if next_idx is not None or reward is not None or terminated is not None:
            if next_idx is None or reward is None or terminated is None:
                raise ValueError("an n-step batch needs next_idx, reward and terminated together")
            if (type(next_idx) is not np.ndarray or next_idx.dtype != np.int64
                    or next_idx.shape != idx.shape or not next_idx.flags.c_contiguous):
                raise ValueError(f"next_idx: expected a C-contiguous int64 array of {b} row "
                                 "indices (as idx)")
            outcomes = (self._check("reward", reward, b, None),
                        self._check("terminated", terminated, b, None))
        self._grow(b)
        self._sampled_batch = None
        phases = _k.CRITIC_JOB | (_k.ACTOR_JOB if actor_targets is not None else 0)
        inputs = list(self._batch)
        inputs[_k.BATCH_NOISE] = noise
        ok = self._run_update(phases, tuple(inputs), b, None,
                              (replay.data, replay.offsets, idx,
                               idx if next_idx is None else next_idx, replay.size),
                              _F32(reward_scale),
                              critic_polyak="critics" if critic_targets else "none",
                              actor_polyak=actor_targets or "none", outcomes=outcomes)
        if not ok:
            raise ValueError(f"idx: row indices must be in [0, {replay.size}) (the rows stored)")
        self._sampled_batch = b
        return self._critic_loss(), None if actor_targets is None else self._actor_loss()

    def actor_update(self, actor_obs: np.ndarray, critic_obs: np.ndarray,
                     update_targets: bool = True) -> float:
        """One TD3 actor step, then (by default) Polyak on all targets; returns the loss."""
        actor_obs = self._check("actor_obs", actor_obs, None, self.actor_obs_dim)
        b = actor_obs.shape[0]
        critic_obs = self._check("critic_obs", critic_obs, b, self.critic_obs_dim)
        self._grow(b)
        self._sampled_batch = None
        inputs = list(self._batch)
        inputs[_k.BATCH_CRITIC_OBS] = critic_obs
        inputs[_k.BATCH_ACTOR_OBS] = actor_obs
        self._run_update(_k.ACTOR_JOB, tuple(inputs), b,
                         {_k.BATCH_CRITIC_OBS: critic_obs, _k.BATCH_ACTOR_OBS: actor_obs}, None,
                         _F32(1.0), actor_polyak="all" if update_targets else "none")
        return self._actor_loss()

    def actor_update_sampled(self, update_targets: str = "none") -> float:
        """``actor_update`` on the batch of the last ``update_sampled``; then the Polyak
        step of ``update_targets``: "none", "actor" (the target actor) or "all" (all three
        targets). Returns the loss."""
        if self._sampled_batch is None:
            raise RuntimeError("actor_update_sampled needs an update_sampled before it "
                               "(and no critic_update / actor_update in between)")
        self._run_update(_k.ACTOR_JOB, self._batch, self._sampled_batch, None, None, _F32(1.0),
                         actor_polyak=update_targets, helper=self._sampled_helper)
        return self._actor_loss()

    def _grow(self, b: int) -> None:
        if b > self.batch_size:
            self.batch_size = b
            self._ensure_update_workspace(b)

    @property
    def updates_without_helper(self) -> int:
        """Updates that ran on one thread although ``threads=2`` (adaptive_threads)."""
        return 0 if self._adaptive is None else self._adaptive.updates_without_helper

    def _polyak_range(self, which: str) -> tuple[int, int]:
        if which not in self._polyak_ranges:
            raise ValueError(f"update_targets must be 'none', 'actor' or 'all', got {which!r}")
        return self._polyak_ranges[which]

    def _run_update(self, phases: int, inputs: tuple, b: int, mailbox_inputs, replay,
                    reward_scale: np.float32, critic_polyak: str = "none",
                    actor_polyak: str = "none", helper: bool | None = None,
                    outcomes: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
        """One job of ``update_kernel`` (``phases``: critic and/or actor update) on a batch of
        ``b`` rows as two halves, the first ``(b + 1) // 2`` rows of ``inputs`` (the kernel's
        eight batch arrays) and the rest: with two threads this thread computes the first and
        the helper thread the second, with one thread this one both.

        ``mailbox_inputs``: what to copy into the helper's mailbox first ({slot: array}; None:
        nothing, it gathers or has its rows);
        ``replay``: (data, offsets, idx, next_idx, rows stored) to gather from, or None;
        ``outcomes``: with ``replay``, an n-step batch's (reward, terminated), copied into the
        batch arrays (the rows' next observations then come from ``next_idx``); ``helper``:
        whether the helper thread computes the second half (None: threads=2, or what
        AdaptiveThreads picks). False (and nothing changed) when the replay rows were out of
        range."""
        critic_ranges = (0, 0, 0, 0)
        actor_ranges = (0, 0, 0, 0)
        c0, c1 = self.n_actor_params, self.n_actor_params + self.n_critic_params
        if phases & _k.CRITIC_JOB:
            critic_ranges = (c0, c1, *self._polyak_range(critic_polyak))
            self._adam_hp(self._hp_critic, self.critic_lr, self.critic_steps + 1)
        if phases & _k.ACTOR_JOB:
            actor_ranges = (0, c0, *self._polyak_range(actor_polyak))
            self._adam_hp(self._hp_actor, self.actor_lr, self.actor_steps + 1)
        gather = replay is not None
        data, offsets, idx, next_idx, stored = replay if gather else self._no_replay
        inv_batch = _F32(1.0 / b)
        rows = ((b + 1) // 2, b - (b + 1) // 2)  # the halves
        adaptive = self._adaptive
        if helper is None:
            helper = self.threads == 2 if adaptive is None else adaptive.pick()
        if gather:
            self._sampled_helper = helper
        if outcomes is not None:  # this thread's rows of them; the helper's below
            mine = b if not helper else rows[0]
            for slot, values in zip((_k.BATCH_REWARD, _k.BATCH_TERMINATED), outcomes):
                inputs[slot][:mine] = values[:mine]
        if not helper:
            job, counters, worker = self._solo_job, self._solo_counters, None
        else:
            worker = self._half_worker(data if gather else None, offsets)
            job, counters = worker.job, worker.counters
            if gather:
                worker.fill(_k.BATCH_NOISE, inputs[_k.BATCH_NOISE][rows[0]:])  # its noise rows
                worker.fill_index(idx[rows[0]:],
                                  None if outcomes is None else next_idx[rows[0]:])
                if outcomes is not None:
                    worker.fill(_k.BATCH_REWARD, outcomes[0][rows[0]:])
                    worker.fill(_k.BATCH_TERMINATED, outcomes[1][rows[0]:])
            for slot, array in (mailbox_inputs or {}).items():
                worker.fill(slot, array[rows[0]:])
            worker.scalars[_k.SCALAR_INV_BATCH] = inv_batch
            worker.scalars[_k.SCALAR_REWARD_SCALE] = reward_scale
        scalars = self._scalars
        scalars[_k.SCALAR_INV_BATCH] = inv_batch
        scalars[_k.SCALAR_REWARD_SCALE] = reward_scale
        gather_mode = (_k.GATHER_NONE if not gather
                       else _k.GATHER_ROWS if outcomes is None else _k.GATHER_N_STEP)
        job[:] = _k.pack_job(phases, helper_rows=rows[1], caller_rows=rows[0], gather=gather_mode,
                             stored_rows=stored, critic_ranges=critic_ranges,
                             actor_ranges=actor_ranges, solo=worker is None)
        started = time.perf_counter()
        counters[_k.COUNTER_POSTED] += 1
        if worker is not None:
            worker.wake()
        try:
            ok = _k.update_kernel(0, counters, job, 0, self.params, self.targets, self._grads2,
                                  self.adam_m, self.adam_v, self.dims, self.offs,
                                  self._hp_critic, self._hp_actor, self._ws2, self._stats2,
                                  self._actor_stats2, *inputs, scalars, idx, next_idx, data,
                                  offsets)
        except BaseException:
            if worker is not None:  # the helper must not finish a half-done update
                counters[_k.COUNTER_CANCELLED] = counters[_k.COUNTER_POSTED]
                worker.wait()
            raise
        if worker is not None:
            worker.wait()
        if adaptive is not None:
            adaptive.record(helper, phases, time.perf_counter() - started)
        if ok:
            self.critic_steps += phases & _k.CRITIC_JOB != 0
            self.actor_steps += phases & _k.ACTOR_JOB != 0
        return ok

    def _half_worker(self, data: np.ndarray | None, offsets: np.ndarray) -> "_HalfWorker":
        """The helper thread that computes the second half of each update (``threads=2``),
        bound to this core's buffers and to the replay ``data`` it gathers from (a new one
        after the workspace grew or for other replay data; ``data`` None: any)."""
        if self._worker is not None and data is not None and self._worker.data is not data:
            self.close()
        if self._worker is None:
            if data is None:
                data, offsets = self._no_replay[:2]
            rows = self.batch_size - (self.batch_size + 1) // 2  # the second half's rows
            mailbox = [*self._batch_arrays(rows), np.zeros(_k.NUM_SCALARS, dtype=_F32),
                       np.zeros(rows, dtype=np.int64),
                       np.zeros(rows, dtype=np.int64)]  # td3_kernels.MAILBOX_SLOTS
            buffers = (self.params, self.targets, self._grads2, self.adam_m, self.adam_v,
                       self.dims, self.offs, self._hp_critic, self._hp_actor, self._ws2,
                       self._stats2, self._actor_stats2, *mailbox, data, offsets)
            self._worker = _HalfWorker(buffers, mailbox, data)
            weakref.finalize(self, self._worker.close)
        return self._worker

    def warmup(self, acting: bool = True) -> float:
        """Compile (or load from numba's cache) every kernel this core uses, now; with
        ``acting=False`` only those of the updates (not ``actor_forward``'s and the separate
        Polyak steps').

        Runs each update once on a 2-row dummy batch and restores all state afterwards, so the
        compile cost lands where the caller wants it (e.g. before the clock starts, or during
        the replay warm-up). Returns the seconds it took.
        """
        import time

        start = time.perf_counter()
        saved = (self.params.copy(), self.targets.copy(), self.adam_m.copy(),
                 self.adam_v.copy(), self.actor_steps, self.critic_steps)
        rows = 2
        zeros = lambda cols: np.zeros((rows, cols), dtype=_F32)  # noqa: E731
        self.critic_update(zeros(self.critic_obs_dim), zeros(self.action_dim),
                           np.zeros(rows, _F32), zeros(self.critic_obs_dim),
                           zeros(self.actor_obs_dim), np.zeros(rows, _F32), zeros(self.action_dim))
        self.actor_update(zeros(self.actor_obs_dim), zeros(self.critic_obs_dim))
        if acting:
            self.update_targets()
            self.actor_forward(zeros(self.actor_obs_dim))
        (params, targets, adam_m, adam_v, self.actor_steps, self.critic_steps) = saved
        self.params[...] = params
        self.targets[...] = targets
        self.adam_m[...] = adam_m
        self.adam_v[...] = adam_v
        return time.perf_counter() - start

    def close(self) -> None:
        """Stop the helper thread of ``threads=2`` (also done when the core is collected)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def update_targets(self) -> None:
        """Polyak: target = polyak * target + (1 - polyak) * online, all three networks."""
        _k.polyak_kernel(self.params, self.targets, _F32(self.polyak))

    def update_critic_targets(self) -> None:
        """Polyak on the two target critics only."""
        c0 = self.n_actor_params
        _k.polyak_kernel(self.params[c0:], self.targets[c0:], _F32(self.polyak))

    def update_actor_target(self) -> None:
        """Polyak on the target actor only."""
        c0 = self.n_actor_params
        _k.polyak_kernel(self.params[:c0], self.targets[:c0], _F32(self.polyak))

    def actor_forward(self, obs: np.ndarray, out: np.ndarray | None = None,
                      target: bool = False, actor_params: np.ndarray | None = None) -> np.ndarray:
        """Batched actor inference: obs (N, Oa) float32 -> actions (N, A) in [-1, 1], with the
        online or target actor, or the flat ``actor_params`` given (the actor part's layout)."""
        obs = self._check("obs", obs, None, self.actor_obs_dim)
        theta = self.targets if target else self.params
        if actor_params is not None:
            theta = self._check("actor_params", actor_params, None, None)
            if theta.shape[0] != self.n_actor_params:
                raise ValueError(f"actor_params: expected {self.n_actor_params} values, "
                                 f"got {theta.shape[0]}")
        n = obs.shape[0]
        if out is None:
            out = np.empty((n, self.action_dim), dtype=_F32)
        else:
            out = self._check("out", out, n, self.action_dim)
        if n > self._fwd_rows:
            self._ensure_forward_workspace(n)
        _k.actor_forward_kernel(theta, self.dims, self.offs, obs, out, self._fwd_ws)
        return out

    # --------------------------------------------------------------------------------- torch
    def actor_weights(self, target: bool = False, actor_params: np.ndarray | None = None):
        """The (online or target) actor as ``nanofly.policy.file.ActorWeights`` (copied
        NumPy arrays, no torch); ``actor_params``: instead, the actor part of a parameter vector
        saved earlier (``params[:n_actor_params]``)."""
        from nanofly.policy.file import ActorWeights, parameter_shapes

        buf = actor_params if actor_params is not None else (self.targets if target else self.params)
        if len(buf) < self.n_actor_params:
            raise ValueError(f"actor_params has {len(buf)} values, the actor {self.n_actor_params}")
        arrays = [a.copy() for layer in self._actor_views(buf) for a in layer]  # W, b per layer
        return ActorWeights(list(self.actor_sizes),
                            dict(zip(parameter_shapes(self.actor_sizes), arrays)))

    def to_actor(self, target: bool = False, actor_params: np.ndarray | None = None):
        """``actor_weights(...)`` as a torch ``nanofly.policy.actor.Actor``."""
        from nanofly.policy.actor import Actor

        return Actor.from_weights(self.actor_weights(target, actor_params))

    def load_actor(self, actor: Any, targets_too: bool = True) -> None:
        """Set the online actor (and by default its target) from an ``Actor`` or its state_dict.

        Adam state is left as it is (reset it with ``reset_optimizers`` if that is wanted).
        """
        from nanofly.policy.file import parameter_shapes

        state = actor.state_dict() if hasattr(actor, "state_dict") else dict(actor)
        prefixes = [name[:-len("weight")] for name in parameter_shapes(self.actor_sizes)
                    if name.endswith(".weight")]  # net.0., net.2., net.4.
        self._load_sequential(state, self._actor_views, "actor", prefixes, self.actor_sizes,
                              targets_too)

    def _critic_modules(self):
        """One critic as torch modules: ``nn.Sequential(Linear, Tanh, Linear, Tanh, Linear)``,
        with ``critic_layer_norm`` ``(Linear, LayerNorm, Tanh, Linear, LayerNorm, Tanh,
        Linear)``; and the state_dict key prefixes of its layers with parameters, in the order
        of ``_critic_layers``."""
        from .td3_reference import critic_network

        net = critic_network(self.critic_in_dim, self.critic_hidden, self.critic_layer_norm)
        return net, (["0.", "1.", "3.", "4.", "6."] if self.critic_layer_norm
                     else ["0.", "2.", "4."])

    def to_critics(self, target: bool = False):
        """(Q1, Q2) as torch modules (copied weights): ``nn.Sequential(Linear, Tanh, Linear,
        Tanh, Linear)``, with ``critic_layer_norm`` a LayerNorm before each Tanh."""
        import torch

        buf = self.targets if target else self.params
        critics = []
        for which in (0, 1):
            net, keys = self._critic_modules()
            values = {}
            for key, (weight, bias) in zip(keys, self._critic_layers(buf, which)):
                values[key + "weight"], values[key + "bias"] = weight, bias
            net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in values.items()})
            critics.append(net)
        return tuple(critics)

    def load_critics(self, q1: Any, q2: Any, targets_too: bool = True) -> None:
        """Set both critics (and by default their targets) from the modules ``to_critics`` makes
        (or their state_dicts: keys ``0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias``;
        with ``critic_layer_norm`` ``0., 3., 6.`` for the Linear and ``1., 4.`` for the
        LayerNorm layers)."""
        _, keys = self._critic_modules()
        for which, critic in ((0, q1), (1, q2)):
            state = critic.state_dict() if hasattr(critic, "state_dict") else dict(critic)
            what = f"critic Q{which + 1}"
            if self.critic_layer_norm:
                what += " (this core's critics have LayerNorm layers at 1. and 4.)"
            self._load_sequential(state, lambda buf, w=which: self._critic_layers(buf, w), what,
                                  keys, self.critic_sizes, targets_too)

    def _load_sequential(self, state: dict, views_fn, what: str, layer_keys: list[str],
                         sizes: list[int], targets_too: bool) -> None:
        """The layers of ``state`` (key prefixes ``layer_keys``, each with a weight and a bias)
        into ``views_fn(buf)``'s (weight, bias) views, whose shapes they must have."""
        keys = [f"{key}{kind}" for key in layer_keys for kind in ("weight", "bias")]
        extra = sorted(set(state) - set(keys))
        missing = [k for k in keys if k not in state]
        if missing or extra:
            raise ValueError(f"{what}: state_dict keys do not match layer sizes {sizes}: "
                             f"missing {missing}, unexpected {extra}")
        shapes = [a.shape for layer in views_fn(self.params) for a in layer]
        arrays = []
        for name, shape in zip(keys, shapes):
            value = state[name]
            value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            if tuple(value.shape) != shape:
                raise ValueError(f"{what}: {name} has shape {value.shape}, "
                                 f"this core's layer sizes {sizes} need {shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{what}: {name} has NaN or Inf values (must be finite)")
            arrays.append(value.astype(_F32))
        bufs = [self.params, self.targets] if targets_too else [self.params]
        for buf in bufs:
            views = [a for layer in views_fn(buf) for a in layer]
            for view, value in zip(views, arrays):
                view[...] = value.reshape(view.shape)

    # ---------------------------------------------------------------------------- checkpoint
    def reset_optimizers(self) -> None:
        """Zero both Adam states and step counts (as freshly constructed optimizers)."""
        self.adam_m[...] = 0
        self.adam_v[...] = 0
        self.actor_steps = 0
        self.critic_steps = 0

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild an identically shaped core."""
        return dict(actor_obs_dim=self.actor_obs_dim, critic_obs_dim=self.critic_obs_dim,
                    action_dim=self.action_dim, actor_hidden=self.actor_hidden,
                    critic_hidden=self.critic_hidden, lr=self.actor_lr, betas=self.betas,
                    eps=self.eps, weight_decay=self.weight_decay, gamma=self.gamma,
                    polyak=self.polyak, smoothing_std=self.smoothing_std,
                    smoothing_clip=self.smoothing_clip, batch_size=self.batch_size,
                    seed=self.seed, threads=self.threads,
                    critic_layer_norm=self.critic_layer_norm,
                    adaptive_threads=self._adaptive is not None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, parameters, targets, Adam moments and steps."""
        return {"config": self.config(), "params": self.params.copy(),
                "targets": self.targets.copy(), "adam_m": self.adam_m.copy(),
                "adam_v": self.adam_v.copy(), "actor_steps": self.actor_steps,
                "critic_steps": self.critic_steps, "actor_lr": self.actor_lr,
                "critic_lr": self.critic_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("params", "targets", "adam_m", "adam_v"):
            value = np.asarray(state[key])
            if value.shape != self.params.shape:
                raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, this core has "
                                 f"{self.params.shape} parameters (different network sizes, or "
                                 f"critic_layer_norm {self.critic_layer_norm} here?)")
        for key in ("params", "targets", "adam_m", "adam_v"):
            getattr(self, key)[...] = np.asarray(state[key], dtype=_F32)
        self.actor_steps = int(state["actor_steps"])
        self.critic_steps = int(state["critic_steps"])
        self.actor_lr = float(state.get("actor_lr", self.actor_lr))
        self.critic_lr = float(state.get("critic_lr", self.critic_lr))


class _HalfWorker:
    """One daemon thread that computes the second half of each update (for ``threads=2``).

    The thread runs ``td3_kernels.update_kernel`` in its loop role, outside the GIL: it spins
    on a job counter and runs the job itself: a thread that had to return to Python for each
    job waited ~30 us for the GIL (the trainer's thread holds it between kernels) and then
    spent ~15 us unpacking the kernel's arguments, so the first half's thread waited for it at
    the end of every update. The second half's inputs are in the loop's own arrays (the
    "mailbox"; ~64 rows): gathered by the loop from the replay buffer (``update_sampled``)
    or copied in by the caller (``fill``). The two threads meet inside the kernel when both
    halves' gradients are ready (then each takes half of the Adam and Polyak steps), and once
    more between a critic and an actor update that run in the same job.
    Waking a sleeping thread costs a large part of an update, so both sides spin; a worker with
    nothing to do for ~2 ms returns to Python and blocks on an Event instead, so an idle
    trainer does not burn a core. Errors in the thread are re-raised by ``wait``.
    """

    # Spinning: the loop's ~2 ms (80 000 ``pause`` turns of ~25 ns) before it blocks; the
    # caller waits in bursts of ~50 us with a sched_yield between them, so on a machine where
    # both threads share one CPU the other thread still gets to run. With fewer than two
    # usable CPUs the worker does not spin at all.
    SPIN_BURST_TURNS = 2_000
    IDLE_SPIN_TURNS = 80_000

    def __init__(self, buffers: tuple, mailbox: list[np.ndarray], data: np.ndarray):
        """``buffers``: ``update_kernel``'s arguments after ``idle_turns``; ``mailbox``: the
        eleven of them from obs_c to next_idx (the td3_kernels.MAILBOX_SLOTS: the eight batch
        arrays, the scalars, the replay row indices and the rows of the next observations);
        ``data``: the replay data it gathers from."""
        self.counters = np.zeros(_k.COUNTER_FIELDS, dtype=np.int64)
        self.job = np.zeros(_k.JOB_FIELDS, dtype=np.int64)
        self.data = data
        self._buffers = buffers
        self._mailbox = mailbox
        self.scalars = mailbox[_k.MAILBOX_SCALARS]
        self._index = mailbox[_k.MAILBOX_INDEX]
        self._next_index = mailbox[_k.MAILBOX_NEXT_INDEX]
        self._wake = threading.Event()
        self._sleeping = False  # read and written with the GIL held (see _loop)
        self._error: BaseException | None = None
        self._closed = False
        self._idle_turns = self.IDLE_SPIN_TURNS if usable_cpus() >= 2 else 0
        self._thread = threading.Thread(target=self._loop, name="nanofly-td3-half", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                if _k.update_kernel(1, self.counters, self.job, self._idle_turns,
                                    *self._buffers):
                    return  # told to stop
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
                self.counters[_k.COUNTER_DONE] = self.counters[_k.COUNTER_POSTED]
                continue
            # Idle: block. Python code from here on runs with the GIL, as wake() does: the flag
            # and the counters are never read by one side between the other side's two steps.
            self._sleeping = True
            while self.counters[_k.COUNTER_POSTED] <= self.counters[_k.COUNTER_DONE]:
                self._wake.clear()
                if self.counters[_k.COUNTER_POSTED] > self.counters[_k.COUNTER_DONE]:
                    break
                self._wake.wait(0.1)
            self._sleeping = False

    def fill(self, slot: int, rows: np.ndarray) -> None:
        """Copy the helper's rows of one input into mailbox array ``slot``."""
        self._mailbox[slot][:rows.shape[0]] = rows

    def fill_index(self, idx: np.ndarray, next_idx: np.ndarray | None = None) -> None:
        """The helper's replay rows, and those of their next observations where they differ
        (an n-step batch)."""
        self._index[:idx.shape[0]] = idx
        if next_idx is not None:
            self._next_index[:next_idx.shape[0]] = next_idx

    def wake(self) -> None:
        """Call after posting a job (``counters[COUNTER_POSTED] += 1``)."""
        if self._sleeping:
            self._wake.set()

    def post(self, job: tuple[int, ...]) -> None:
        """Post a job (the fields of ``td3_kernels.JOB_FIELDS``) and wake the thread."""
        self.job[:len(job)] = job
        self.counters[_k.COUNTER_POSTED] += 1
        self.wake()

    def _spin(self, value: int, bursts: int) -> bool:
        for _ in range(bursts):
            if _k.spin_until_at_least(self.counters, _k.COUNTER_DONE, value, self.SPIN_BURST_TURNS):
                return True
            os.sched_yield()
        return bool(self.counters[_k.COUNTER_DONE] >= value)

    def wait(self) -> None:
        number = self.counters[_k.COUNTER_POSTED]
        while not self._spin(number, 20):
            if not self._thread.is_alive():
                raise RuntimeError("the second update thread has died")
            self.wake()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.post((_k.STOP_JOB,))
        self._thread.join(timeout=5.0)
