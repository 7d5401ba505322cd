"""TD3 as nanofly trains it, in plain PyTorch: the statement of the algorithm, to be read.

The trainer (``nanofly.train.td3``) runs this algorithm with ``TD3Core``, whose numba kernels
(``td3_core.py``, ``td3_kernels.py``) are a fast implementation of this file: hand-written
forward and backward passes, Adam and Polyak steps on flat float32 buffers, the batch split
between two threads. On the same batches both give the same parameters to 1e-5 after many
updates (tests/test_td3_core.py). Read this file for *what* is computed, the kernels for how
it is made fast.

- **Asymmetric actor-critic**: the actor sees the actor observation (noisy state and the past
  actions); the twin critics see the privileged one (noise-free state, disturbance, rotor
  speeds) and the action.
- **TD3** (Fujimoto et al., 2018): the critics learn towards ``r + gamma (1 - terminated)
  min(Q1', Q2')(s', a')`` with the target actor's action ``a'`` smoothed by clipped Gaussian
  noise; the actor follows Q1's gradient, less often than the critics; target networks
  Polyak-average the online ones.
- **n-step returns** (``n_step_returns`` n): ``r`` is the discounted sum of up to n rewards
  of the same environment within its episode, ``r_t + gamma r_(t+1) + ... + gamma^(m-1)
  r_(t+m-1)``, and the bootstrap is from the state after the last of them, with ``gamma^m``
  (``ReferenceTrainer.batch``).
- **Reward curriculum** ("Learning to Fly in Seconds"): the reward weighs squared position,
  orientation, velocity and action errors (``reward``); every ``curriculum_interval`` steps
  the position, velocity and action weights grow (``nanofly.train.td3.curriculum_step``) and
  the rewards already stored are recomputed under the new weights
  (``ReferenceTrainer.step``).

``ReferenceTrainer`` is the whole loop, as ``nanofly.train.td3.Trainer`` runs it without the
checkpoint selection, int8-aware fine-tuning and checkpoints (same schedule, same random draws
in the same order). Hyperparameters: ``nanofly.train.td3.TrainConfig``; the reasons behind
nanofly's defaults: docs/training.md.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nanofly.policy.actor import Actor
from nanofly.sim.env import RewardWeights, VecEnv

from .td3 import curriculum_step  # the curriculum: x1.2 position, x1.4 velocity, action weights


def critic_network(input_dim: int, hidden: tuple[int, int], layer_norm: bool) -> nn.Sequential:
    """One critic: ``Linear, [LayerNorm,] Tanh, Linear, [LayerNorm,] Tanh, Linear(1)``; the
    input is ``concat(critic observation, action)``."""
    h1, h2 = hidden
    if layer_norm:
        return nn.Sequential(nn.Linear(input_dim, h1), nn.LayerNorm(h1), nn.Tanh(),
                             nn.Linear(h1, h2), nn.LayerNorm(h2), nn.Tanh(), nn.Linear(h2, 1))
    return nn.Sequential(nn.Linear(input_dim, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(),
                         nn.Linear(h2, 1))


def reward(next_privileged_obs: torch.Tensor, action: torch.Tensor, terminated: torch.Tensor,
           weights: RewardWeights, hover_action: float) -> torch.Tensor:
    """The reward of each transition from the privileged observation after the step (the
    simulator's reward; ``nanofly.sim.env.recompute_rewards`` is its fast version)."""
    p = next_privileged_obs
    position_error = (p[:, 0:3] ** 2).sum(1)
    orientation_error = (3.0 - (p[:, 3] + p[:, 7] + p[:, 11])) / 4.0  # 1 - qw^2 from trace(R)
    velocity_error = (p[:, 12:15] ** 2).sum(1)
    angular_velocity_error = (p[:, 15:18] ** 2).sum(1)
    action_error = ((action - hover_action) ** 2).sum(1)
    r = weights.constant - weights.scale * (
        weights.position * position_error + weights.orientation * orientation_error
        + weights.linear_velocity * velocity_error
        + weights.angular_velocity * angular_velocity_error + weights.action * action_error)
    if weights.non_negative:
        r = r.clamp(min=0.0)
    return torch.where(terminated != 0, torch.full_like(r, weights.termination_penalty), r)


class ReferenceTD3:
    """The networks, their targets, the two Adam optimizers and the TD3 updates."""

    def __init__(self, actor: nn.Module, critic1: nn.Module, critic2: nn.Module, *,
                 learning_rate: float = 1e-3, adam_betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 1e-4, gamma: float = 0.99,
                 polyak: float = 0.995, target_noise_std: float = 0.2,
                 target_noise_clip: float = 0.5):
        self.actor, self.critic1, self.critic2 = actor, critic1, critic2
        self.actor_target = copy.deepcopy(actor)
        self.critic1_target, self.critic2_target = copy.deepcopy(critic1), copy.deepcopy(critic2)
        adam = dict(lr=learning_rate, betas=adam_betas, eps=adam_eps, weight_decay=weight_decay)
        self.actor_optimizer = torch.optim.Adam(actor.parameters(), **adam)
        self.critic_optimizer = torch.optim.Adam([*critic1.parameters(), *critic2.parameters()],
                                                 **adam)
        self.gamma, self.polyak = gamma, polyak
        self.target_noise_std, self.target_noise_clip = target_noise_std, target_noise_clip

    @classmethod
    def from_core(cls, core: Any) -> "ReferenceTD3":
        """A reference with the weights and hyperparameters of a ``TD3Core``."""
        return cls(core.to_actor(), *core.to_critics(), learning_rate=core.actor_lr,
                   adam_betas=core.betas, adam_eps=core.eps, weight_decay=core.weight_decay,
                   gamma=core.gamma, polyak=core.polyak, target_noise_std=core.smoothing_std,
                   target_noise_clip=core.smoothing_clip)

    def td_target(self, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """The critics' regression target; ``noise`` ~ N(0, 1), (B, action dim)."""
        with torch.no_grad():
            # target policy smoothing: clipped noise on the target actor's next action
            smoothing = (noise * self.target_noise_std).clamp(-self.target_noise_clip,
                                                              self.target_noise_clip)
            next_action = (self.actor_target(batch["next_obs"]) + smoothing).clamp(-1.0, 1.0)
            next_input = torch.cat([batch["next_critic_obs"], next_action], 1)
            # clipped double Q: the smaller of the two target critics
            next_q = torch.min(self.critic1_target(next_input),
                               self.critic2_target(next_input)).view(-1)
            # a termination ends the return; a time-limit truncation (stored as not
            # terminated) bootstraps from the next state. An n-step batch brings its own
            # discount: gamma^m for m summed rewards, 0 where the last of them terminated.
            discount = batch.get("discount")
            if discount is None:
                discount = self.gamma * (1.0 - batch["terminated"])
            return batch["reward"] + discount * next_q

    def critic_update(self, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> float:
        """One Adam step of both critics towards ``td_target`` (mean squared errors, summed)."""
        target = self.td_target(batch, noise)
        inputs = torch.cat([batch["critic_obs"], batch["action"]], 1)
        loss = (F.mse_loss(self.critic1(inputs).view(-1), target)
                + F.mse_loss(self.critic2(inputs).view(-1), target))
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        return loss.item()

    def actor_update(self, batch: dict[str, torch.Tensor]) -> float:
        """One Adam step of the actor up Q1's gradient (the critics do not change)."""
        action = self.actor(batch["obs"])
        loss = -self.critic1(torch.cat([batch["critic_obs"], action], 1)).mean()
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        return loss.item()

    def update_targets(self, which: str) -> None:
        """Polyak step ``target = polyak target + (1 - polyak) online`` of "actor", "critics"
        or "all"."""
        pairs = {"actor": [(self.actor, self.actor_target)],
                 "critics": [(self.critic1, self.critic1_target),
                             (self.critic2, self.critic2_target)]}
        pairs["all"] = pairs["actor"] + pairs["critics"]
        with torch.no_grad():
            for online, target in pairs[which]:
                for w, w_target in zip(online.parameters(), target.parameters()):
                    w_target.mul_(self.polyak).add_(w, alpha=1.0 - self.polyak)

    def update(self, batch: dict[str, torch.Tensor], noise: torch.Tensor, at_step: int,
               cfg: Any) -> tuple[float, float | None]:
        """What the trainer does at the critic update due at env step ``at_step`` (``cfg``: a
        TrainConfig): the critic step; the target critics' Polyak step every
        ``critic_target_update_interval`` steps; after the actor warm-up, every
        ``actor_update_interval`` steps, the actor step on the same batch (it sees the
        stepped critics) and the target actor's Polyak step (with
        ``critic_target_update_interval`` 0: all three targets there). Returns the losses."""
        critic_loss, actor_loss = self.critic_update(batch, noise), None
        separate = cfg.critic_target_update_interval > 0
        if separate and at_step % cfg.critic_target_update_interval == 0:
            self.update_targets("critics")
        if at_step >= cfg.actor_warmup_steps and at_step % cfg.actor_update_interval == 0:
            actor_loss = self.actor_update(batch)
            self.update_targets("actor" if separate else "all")
        return critic_loss, actor_loss


class ReferenceTrainer:
    """The training loop of ``nanofly.train.td3.Trainer`` on ``ReferenceTD3`` (without
    checkpoint selection, int8-aware fine-tuning, checkpoints and the optional
    ``curriculum_min_survival`` gate); ``networks``: (actor, Q1, Q2) to start from, by default
    torch-initialized ones."""

    def __init__(self, cfg: Any, networks: tuple[nn.Module, nn.Module, nn.Module] | None = None):
        cfg.validate()
        self.cfg, self.rng = cfg, np.random.default_rng(cfg.seed)
        self.weights = cfg.initial_reward_weights
        self.env = VecEnv(cfg.num_envs, cfg.preset, seed=cfg.seed, config=cfg.mdp_config(),
                          reward_weights=self.weights)
        obs_dim, action_dim = self.env.observation_dim, 4
        critic_dim = self.env.privileged_dim if cfg.asymmetric_critic else obs_dim
        if networks is None:
            torch.manual_seed(cfg.seed)
            networks = (Actor([obs_dim, *cfg.actor_hidden, action_dim]),
                        *(critic_network(critic_dim + action_dim, cfg.critic_hidden,
                                         cfg.critic_layer_norm) for _ in range(2)))
            if cfg.init_actor_at_hover:  # the untrained actor outputs about the hover action
                with torch.no_grad():
                    networks[0].linear_layers()[-1].bias.fill_(math.atanh(self.env.hover_action))
        self.td3 = ReferenceTD3(*networks, learning_rate=cfg.learning_rate,
                                adam_betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                gamma=cfg.gamma, polyak=cfg.polyak,
                                target_noise_std=cfg.target_noise_std,
                                target_noise_clip=cfg.target_noise_clip)
        capacity = max(cfg.replay_capacity or cfg.total_env_steps, cfg.num_envs)
        widths = dict(obs=obs_dim, critic_obs=critic_dim, action=action_dim, reward=0,
                      next_obs=obs_dim, next_critic_obs=critic_dim, terminated=0,
                      next_privileged_obs=self.env.privileged_dim)
        self.replay = {k: np.zeros((capacity, w) if w else capacity, np.float32)
                       for k, w in widths.items()}
        # where an episode ended (terminated or truncated), per row: n-step sums stop there
        self.episode_end = np.zeros(capacity, bool)
        self.stored, self.next_row, self.env_steps = 0, 0, 0
        self.next_update, self.next_curriculum = cfg.critic_warmup_steps, cfg.curriculum_interval
        self.obs, info = self.env.reset()
        self.privileged_obs = info["privileged_obs"]

    def step(self) -> None:
        """One step of every environment, then the updates and the curriculum now due."""
        cfg, n = self.cfg, self.cfg.num_envs
        critic_obs = self.privileged_obs if cfg.asymmetric_critic else self.obs
        obs, critic_obs = self.obs.copy(), critic_obs.copy()  # the env reuses its arrays
        with torch.no_grad():
            action = self.td3.actor(torch.from_numpy(obs)).numpy()
        action = action + (cfg.exploration_noise_std * self.rng.standard_normal((n, 4))
                           ).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)
        self.obs, r, terminated, _, info = self.env.step(action)
        self.privileged_obs = info["privileged_obs"]
        # where an episode ended (and the env started the next), the next observation stored
        # is the episode's last one
        done = info["_final_obs"][:, None]
        next_obs = np.where(done, info["final_obs"], self.obs)
        next_priv = np.where(done, info["final_privileged_obs"], self.privileged_obs)
        rows = self._rows(n)
        for key, value in (("obs", obs), ("critic_obs", critic_obs), ("action", action),
                           ("reward", r), ("next_obs", next_obs), ("terminated", terminated),
                           ("next_critic_obs", next_priv if cfg.asymmetric_critic else next_obs),
                           ("next_privileged_obs", next_priv)):
            self.replay[key][rows] = value
        self.episode_end[rows] = info["_final_obs"]
        self.env_steps += n
        while self.env_steps >= self.next_update:
            idx = self.rng.integers(0, self.stored, size=cfg.batch_size)
            noise = self.rng.standard_normal((cfg.batch_size, 4), dtype=np.float32)
            batch = self.batch(idx)
            batch["reward"] = batch["reward"] * cfg.reward_scale
            self.td3.update(batch, torch.from_numpy(noise), self.next_update, cfg)
            self.next_update += cfg.critic_update_interval
        if cfg.curriculum and self.env_steps >= self.next_curriculum:
            self.next_curriculum += cfg.curriculum_interval
            self.weights = curriculum_step(self.weights, cfg)
            self.env.reward_weights = self.weights
            stored = slice(0, self.stored)  # the stored rewards under the new weights
            self.replay["reward"][stored] = reward(
                *(torch.from_numpy(self.replay[k][stored]) for k in (
                    "next_privileged_obs", "action", "terminated")),
                self.weights, self.env.hover_action).numpy()

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The replay rows ``idx`` as a batch. With ``n_step_returns`` n > 1 each row's reward
        is the discounted sum over the m <= n steps of its environment (``num_envs`` rows
        apart) that are stored and in the same episode, its next observations are those of
        the last step summed, and ``discount`` is gamma^m, 0 if that step terminated."""
        cfg = self.cfg
        batch = {k: torch.from_numpy(v[idx]) for k, v in self.replay.items()}
        if cfg.n_step_returns == 1:
            return batch
        wrapped = self.next_row < self.stored  # rows from next_row on are older ones
        rewards, discounts, last_rows = [], [], []
        for first in idx:
            total, last = 0.0, first
            for k in range(cfg.n_step_returns):
                row = first + k * cfg.num_envs
                if row >= self.stored or (wrapped and first < self.next_row <= row):
                    break  # not stored yet, or older than the first step
                total += cfg.gamma ** k * float(self.replay["reward"][row])
                last, m = row, k + 1
                if self.episode_end[row]:
                    break
            rewards.append(total)
            discounts.append(0.0 if self.replay["terminated"][last] else cfg.gamma ** m)
            last_rows.append(last)
        for key in ("next_obs", "next_critic_obs", "terminated"):
            batch[key] = torch.from_numpy(self.replay[key][last_rows])
        batch["reward"] = torch.tensor(rewards, dtype=torch.float32)
        batch["discount"] = torch.tensor(discounts, dtype=torch.float32)
        return batch

    def _rows(self, n: int) -> slice:
        """The next ``n`` replay rows (back to row 0 when the buffer is full)."""
        if self.next_row + n > len(self.replay["reward"]):
            self.next_row = 0
        rows = slice(self.next_row, self.next_row + n)
        self.next_row += n
        self.stored = max(self.stored, self.next_row)
        return rows
