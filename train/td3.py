"""TD3 with an asymmetric actor-critic and the reward curriculum of "Learning to Fly in Seconds".

The algorithm, in plain PyTorch to be read: ``nanofly.train.td3_reference`` (the update in
``ReferenceTD3``, the loop in ``ReferenceTrainer``). This module runs the same loop fast:
``TrainConfig`` holds every hyperparameter (the reasons behind its non-paper defaults:
docs/training.md); ``train`` acts with exploration noise in ``num_envs`` parallel simulators,
stores transitions, updates the twin critics every ``critic_update_interval`` environment steps
and the actor and the targets every ``actor_update_interval`` steps (after their warm-ups), and
applies the curriculum, recomputing the rewards already stored. The updates run in the numba
kernels of ``TD3Core``; around the reference's loop it adds checkpoint selection, early stop,
int8-aware fine-tuning and checkpoints. The saved actor is a torch module
(``nanofly.policy.actor.Actor``).

The actor sees the noisy observation (``nanofly.policy.observation``); the critics see the
privileged one (noise-free state, disturbance, rotor speeds; 28 values) plus the action. Every
ablation of the paper is a switch.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nanofly.policy.observation import (ACTION_DIM, ACTION_MAPPING, DEFAULT_HISTORY_LENGTH,
                                        observation_record, state_slice)
from nanofly.sim.env import MDPConfig, RewardWeights, VecEnv, recompute_rewards

from .compile_cache import start_if_cold
from .replay import ReplayBuffer, n_step_terms


# The int8 grid of int8-aware fine-tuning is chosen on the last this many training observations,
# with the angular-velocity inputs covering at least this range (rad/s): the Crazyflie gyro's full
# scale (2000 deg/s = 34.9 rad/s) times the exporter's 2x headroom. From the training peaks alone
# the grid stopped at +-32 rad/s and one evaluation rollout saturated it at 35-38 rad/s.
INT8_GRID_ROWS = 65_536
INT8_MIN_ANGULAR_VELOCITY_SPAN = 2 * 34.9
# Widest hidden layer a configuration may ask for: the update kernels hold each network four
# times (weights, targets, two Adam moments), ~200 MB for 2048-wide critics; the trained
# actor is 64 wide, and the MCU runtime takes at most 128 (export.blob.MAX_WIDTH).
MAX_HIDDEN_WIDTH = 2048


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run, one line each. Defaults are the paper's unless
    the line says "paper: ..."; docs/training.md gives the reason for each such default."""

    seed: int = 0  # seeds the simulator, the network initialization and all sampling
    preset: str = "crazyflie_paper"  # vehicle: preset name or .toml path
    total_env_steps: int = 700_000  # env steps, summed over the envs (paper: 300 000)
    num_envs: int = 16  # simulators stepped together, same schedule per env step (paper: 1)
    critic_update_interval: int = 10  # env steps per critic update (both critics)
    actor_update_interval: int = 20  # env steps per actor update (multiple of the above)
    critic_target_update_interval: int = 10  # target critics' Polyak interval (0: the actor's)
    critic_warmup_steps: int = 15_000  # no critic updates before this many env steps
    actor_warmup_steps: int = 30_000  # no actor updates before this many env steps
    batch_size: int = 128  # transitions per update (paper: 256)
    replay_capacity: int = 0  # replay rows; 0: total_env_steps (every transition is kept)
    actor_hidden: tuple[int, ...] = (64, 64)  # actor hidden widths; tanh everywhere, output too
    critic_hidden: tuple[int, ...] = (64, 64)  # critic hidden widths; tanh hidden, linear output
    critic_layer_norm: bool = True  # LayerNorm before each critic tanh (paper: none)
    learning_rate: float = 1e-3  # Adam step size, actor and critics
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    weight_decay: float = 1e-4  # L2 added to the gradient (torch.optim.Adam semantics)
    gamma: float = 0.99  # discount per 10 ms step
    n_step_returns: int = 3  # rewards summed per critic target, within an episode (1: TD3's)
    target_noise_std: float = 0.2  # target policy smoothing noise, normalized action units
    target_noise_clip: float = 0.5  # its clip, normalized action units
    polyak: float = 0.995  # target = polyak * target + (1 - polyak) * online
    exploration_noise_std: float = 0.1  # Gaussian, normalized action units
    reward_scale: float = 1.0  # the critics learn reward * reward_scale
    curriculum_interval: int = 25_000  # env steps per curriculum stage (paper: 100 000)
    curriculum_min_survival: float = 0.0  # advance only if this fraction of 100 episodes survived
    curriculum_position_factor: float = 1.2  # position weight growth per stage
    curriculum_position_max: float = 80.0  # position weight cap (paper: 40)
    curriculum_linear_velocity_factor: float = 1.4  # linear velocity weight growth per stage
    curriculum_linear_velocity_max: float = 1.0  # its cap
    curriculum_action_factor: float = 1.4  # action weight growth per stage
    curriculum_action_max: float = 1.0  # its cap
    # reward weights at the start (paper: position 5, no clipping at 0)
    initial_reward_weights: RewardWeights = field(
        default_factory=lambda: RewardWeights(position=20.0, non_negative=True))
    disturbance: bool = True  # ablation switch: random force and torque per episode
    observation_noise: bool = True  # ablation switch: Gaussian noise on the actor observation
    asymmetric_critic: bool = True  # ablation switch; False: the critics see the actor observation
    rotor_delay: bool = True  # ablation switch; False: rotors reach their set points at once
    action_history: bool = True  # ablation switch; False: no past actions in the observation
    curriculum: bool = True  # ablation switch; False: the initial reward weights throughout
    history_length: int = DEFAULT_HISTORY_LENGTH  # past actions observed (action_history on)
    guidance_probability: float = 0.1  # training episodes that start on target
    init_actor_at_hover: bool = True  # actor output bias atanh(hover action) at the start
    save_target_actor: bool = True  # save the target (Polyak-averaged) actor, not the online one
    selection_interval: int = 20_000  # env steps between checkpoint selection checks (0: off)
    selection_start: int = 160_000  # env step of the first check
    selection_episodes: int = 1000  # hover-suite episodes per check
    selection_seed: int = 2024  # their seed (not the evaluation suite's)
    selection_prescreen_episodes: int = 200  # score on these first when they succeed below ...
    selection_prescreen_success: float = 0.9  # ... this rate (the same episodes; 0 episodes: off)
    stop_at_selection_success: float = 0.97  # stop once a full check scores this (>= 1: never)
    int8_aware_steps: int = 0  # extra env steps of training on the int8 export grid (0: off)
    log_interval: int = 10_000  # env steps between metrics.jsonl lines
    update_threads: int = 2  # threads per network update (1 or 2; the same bits either way)
    adapt_update_threads: bool = True  # with 2: one thread while that is faster (same bits)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"TrainConfig.{f.name} must be finite, got {v}")
        for name in ("selection_prescreen_episodes", "critic_warmup_steps", "actor_warmup_steps",
                     "int8_aware_steps", "replay_capacity", "history_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("total_env_steps", "num_envs", "critic_update_interval",
                     "actor_update_interval", "batch_size", "curriculum_interval", "log_interval",
                     "selection_episodes", "n_step_returns"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.actor_update_interval % self.critic_update_interval:
            raise ValueError("TrainConfig.actor_update_interval must be a multiple of "
                             "critic_update_interval (the actor reuses a critic batch)")
        if self.critic_target_update_interval < 0 or (
                self.critic_target_update_interval % self.critic_update_interval):
            raise ValueError("TrainConfig.critic_target_update_interval must be 0 or a positive "
                             "multiple of critic_update_interval")
        if self.selection_interval < 0 or self.selection_start < 0:
            raise ValueError("TrainConfig.selection_interval and selection_start must be >= 0")
        if self.update_threads not in (1, 2):
            raise ValueError("TrainConfig.update_threads must be 1 or 2")
        if not 0 <= self.polyak <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError("TrainConfig.polyak and gamma must be in [0, 1]")
        for name in ("actor_hidden", "critic_hidden"):  # TD3Core: two hidden layers
            hidden = getattr(self, name)
            if (not isinstance(hidden, (tuple, list)) or len(hidden) != 2
                    or not all(isinstance(h, int) and not isinstance(h, bool)
                               and 1 <= h <= MAX_HIDDEN_WIDTH for h in hidden)):
                raise ValueError(f"TrainConfig.{name} must be two integers from 1 to "
                                 f"{MAX_HIDDEN_WIDTH} (the widths of the two hidden layers), "
                                 f"got {hidden!r}")
        betas = self.adam_betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                           and 0 <= b < 1 for b in betas)):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {betas!r}")
        if not isinstance(self.preset, str) or not self.preset:
            raise ValueError(f"TrainConfig.preset must be a preset name or a .toml path, got "
                             f"{self.preset!r}")
        self.mdp_config().validate()

    def mdp_config(self) -> MDPConfig:
        return MDPConfig(history_length=self.history_length if self.action_history else 0,
                         disturbance=self.disturbance, observation_noise=self.observation_noise,
                         rotor_delay=self.rotor_delay, guidance_probability=self.guidance_probability)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        kwargs = {}
        for k, v in data.items():
            if k == "initial_reward_weights":
                if not isinstance(v, dict):
                    raise ValueError("training option initial_reward_weights must be a table")
                for n, x in v.items():
                    if not isinstance(x, (bool, int, float)):
                        raise ValueError(f"training option initial_reward_weights.{n} must be "
                                         f"a number, got {x!r}")
                try:
                    kwargs[k] = RewardWeights(**{n: x if isinstance(x, bool) else float(x)
                                                 for n, x in v.items()})
                except TypeError as exc:
                    raise ValueError(f"initial_reward_weights: {exc}") from None
                continue
            default = names[k].default
            if isinstance(default, tuple):
                if not isinstance(v, (list, tuple)):
                    raise ValueError(f"training option {k} must be a list, got {v!r}")
                v = tuple(v)
            elif isinstance(default, str):
                if not isinstance(v, str):
                    raise ValueError(f"training option {k} must be a string, got {v!r}")
            elif isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ValueError(f"training option {k} must be true or false, got {v!r}")
            elif isinstance(default, int) and not (isinstance(v, int) and not isinstance(v, bool)):
                raise ValueError(f"training option {k} must be an integer, got {v!r}")
            elif isinstance(default, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"training option {k} must be a number, got {v!r}")
                v = float(v)
            kwargs[k] = v
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg


def config_of_checkpoint(ck: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint (``Trainer.checkpoint()``) was made with. Checkpoints from
    before an option existed lack its key and were made without it: ``critic_layer_norm``
    off, ``selection_prescreen_episodes`` 0."""
    data = dict(ck["config"])
    data.setdefault("critic_layer_norm", False)
    data.setdefault("selection_prescreen_episodes", 0)
    return TrainConfig.from_dict(data)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def initial_reward_weights(cfg: TrainConfig) -> RewardWeights:
    return cfg.initial_reward_weights


def curriculum_step(weights: RewardWeights, cfg: TrainConfig) -> RewardWeights:
    """The weights after one curriculum stage (x1.2 position, x1.4 velocity and action, capped)."""
    return dataclasses.replace(
        weights,
        position=min(weights.position * cfg.curriculum_position_factor, cfg.curriculum_position_max),
        linear_velocity=min(weights.linear_velocity * cfg.curriculum_linear_velocity_factor,
                            cfg.curriculum_linear_velocity_max),
        action=min(weights.action * cfg.curriculum_action_factor, cfg.curriculum_action_max))


@dataclass
class TrainState:
    """What the loop carries between steps (and what a checkpoint restores)."""

    env_steps: int = 0
    critic_updates: int = 0
    actor_updates: int = 0
    next_critic_update: int = 0
    curriculum_stage: int = 0
    next_curriculum_check: int = 0
    wall_time_s: float = 0.0
    episodes: int = 0
    recent_returns: list = field(default_factory=list)
    recent_lengths: list = field(default_factory=list)
    recent_survived: list = field(default_factory=list)
    next_selection: int = 0
    best_selection_score: float = -1.0  # hover success rate of the kept snapshot
    best_selection_step: int = -1
    # [step, success, termination, episodes scored]
    selection_history: list = field(default_factory=list)
    stopped_early: bool = False  # a selection check reached stop_at_selection_success
    selection_wall_time_s: float = 0.0  # the part of wall_time_s spent in selection checks
    int8_aware_until: int = -1  # env step where int8-aware fine-tuning ends (-1: not started)
    int8_input_multiplier: list | None = None  # its grid's input multipliers


class Trainer:
    """One training run; ``run()`` drives it, ``checkpoint()``/``restore()`` persist it."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        from .td3_core import TD3Core

        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.weights = initial_reward_weights(cfg)
        self.env = VecEnv(cfg.num_envs, cfg.preset, seed=cfg.seed, config=cfg.mdp_config(),
                          reward_weights=self.weights)
        self.obs_dim = self.env.observation_dim
        self.critic_obs_dim = self.env.privileged_dim if cfg.asymmetric_critic else self.obs_dim
        core_kwargs = dict(actor_obs_dim=self.obs_dim, critic_obs_dim=self.critic_obs_dim,
                           action_dim=4, actor_hidden=cfg.actor_hidden,
                           critic_hidden=cfg.critic_hidden, lr=cfg.learning_rate,
                           betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                           # the core bootstraps with gamma^n; shorter sums correct it through
                           # their terminated value (_n_step_batch)
                           gamma=cfg.gamma ** cfg.n_step_returns, polyak=cfg.polyak,
                           smoothing_std=cfg.target_noise_std,
                           smoothing_clip=cfg.target_noise_clip, batch_size=cfg.batch_size,
                           seed=cfg.seed, threads=cfg.update_threads,
                           critic_layer_norm=cfg.critic_layer_norm,
                           adaptive_threads=cfg.adapt_update_threads)
        # cold numba cache: the update kernels compile in a helper process meanwhile
        self._background_compile = start_if_cold(core_kwargs)
        self.core = TD3Core(**core_kwargs)
        if cfg.init_actor_at_hover:  # the output layer's bias, online and target actor
            for buf in (self.core.params, self.core.targets):
                self.core._actor_views(buf)[-1][1][:] = math.atanh(self.env.hover_action)
        capacity = cfg.replay_capacity or cfg.total_env_steps
        capacity = max(capacity, cfg.num_envs)
        self.buffer = ReplayBuffer(capacity, self.obs_dim, self.critic_obs_dim, 4)
        # where an episode ended (terminated or truncated), per row: n-step sums stop there
        self.row_done = np.zeros(capacity, bool) if cfg.n_step_returns > 1 else None
        # the n-step factors, computed as _n_step_batch computes them: gamma^k per step
        # summed, and gamma^(m - n) per number m of steps summed (index m)
        self._n_step_discounts = (cfg.gamma ** np.arange(cfg.n_step_returns)).astype(np.float32)
        self._n_step_bootstrap_powers = cfg.gamma ** (np.arange(cfg.n_step_returns + 1)
                                                      - cfg.n_step_returns)
        # The privileged next observation is always kept: rewards are recomputed from it.
        self.reward_priv = (np.empty((capacity, self.env.privileged_dim), np.float32)
                            if not cfg.asymmetric_critic else None)
        self.state = TrainState(next_critic_update=cfg.critic_warmup_steps,
                                next_curriculum_check=cfg.curriculum_interval,
                                next_selection=cfg.selection_start)
        self.best_actor_params: np.ndarray | None = None  # the kept snapshot (selection)
        self.divergence: str | None = None  # why the run diverged (a non-finite loss), if it did
        self.obs, info = self.env.reset()
        self.priv = info["privileged_obs"]
        self._episode_return = np.zeros(cfg.num_envs)
        self._episode_length = np.zeros(cfg.num_envs, dtype=np.int64)
        self._action = np.empty((cfg.num_envs, 4), np.float32)
        self._obs_now = np.empty((cfg.num_envs, self.obs_dim), np.float32)
        # the losses of the latest updates (None before the first: NaN is a divergence)
        self.last_critic_loss: float | None = None
        self.last_actor_loss: float | None = None

    # -- one environment step and its updates -----------------------------------------------
    def step(self) -> None:
        cfg, env, buf, st = self.cfg, self.env, self.buffer, self.state
        n = cfg.num_envs
        ptr, size = buf.ptr, buf.size  # to take the rows back if the actions are not finite
        rows = buf.rows(n)
        asymmetric = cfg.asymmetric_critic
        # store the observations now (the env reuses its arrays) and act on a contiguous copy
        buf.store_observations(rows, self.obs, self.priv if asymmetric else self.obs,
                               copy_to=self._obs_now)
        a = self.core.actor_forward(self._obs_now, out=self._action)
        a += (cfg.exploration_noise_std * self.rng.standard_normal((n, 4))).astype(np.float32)
        np.clip(a, -1.0, 1.0, out=a)
        try:
            obs, reward, terminated, truncated, info = env.step(a)
        except ValueError:
            if np.isfinite(a).all():
                raise
            # nothing was stepped: the buffer's rows are taken back (the exploration noise
            # was drawn), and the state is one a checkpoint can hold
            buf.ptr, buf.size = ptr, size
            raise Diverged(self, "the actor's actions are not finite (its weights hold NaN "
                                 "or Inf)") from None
        done = info["_final_obs"]
        if self.row_done is not None:
            self.row_done[rows] = done
        priv = info["privileged_obs"]
        final_obs, final_priv = info["final_obs"], info["final_privileged_obs"]
        if asymmetric:
            buf.store_outcomes(rows, a, reward, terminated, obs, priv, final_obs, final_priv,
                               done)
        else:  # the critics see the actor observation; rewards are recomputed from priv
            buf.store_outcomes(rows, a, reward, terminated, obs, obs, final_obs, final_obs, done)
            self.reward_priv[rows] = np.where(done[:, None], final_priv, priv)
        if done.any():
            self._finish_episodes(np.flatnonzero(done), reward, terminated)
        self._episode_return += reward
        self._episode_length += 1
        self._episode_return[done] = 0.0
        self._episode_length[done] = 0
        self.obs, self.priv = obs, priv
        st.env_steps += n

        while st.env_steps >= st.next_critic_update and st.env_steps >= cfg.critic_warmup_steps:
            self._update(st.next_critic_update)
            st.next_critic_update += cfg.critic_update_interval
            if self.divergence is not None:  # the rest of the step runs on resume
                raise Diverged(self, self.divergence)
        if cfg.curriculum and st.env_steps >= st.next_curriculum_check:
            st.next_curriculum_check += cfg.curriculum_interval
            survival = np.mean(st.recent_survived) if st.recent_survived else 0.0
            if survival >= cfg.curriculum_min_survival:
                self._advance_curriculum()
        if cfg.selection_interval and st.env_steps >= st.next_selection:
            self._select()  # (raises Diverged before changing anything)
            st.next_selection += cfg.selection_interval

    def _deployed_params(self) -> np.ndarray:
        """The actor part of the parameters that the saved policy would have now."""
        buf = self.core.targets if self.cfg.save_target_actor else self.core.params
        return buf[:self.core.n_actor_params]

    def _select(self) -> None:
        """Score the policy that would be saved now on the selection episodes (during int8-aware
        fine-tuning: snapped to the grid); keep it if it is the best."""
        from .evaluate import evaluation_mdp, hover_suite

        cfg, st, core = self.cfg, self.state, self.core
        started = time.perf_counter()
        candidate = self._deployed_params()
        if not np.isfinite(candidate).all():  # only finite snapshots are ever kept
            raise Diverged(self, "the actor's weights hold NaN or Inf")
        if st.int8_aware_until >= 0:
            candidate = self._snap_actor(candidate)

        def check(episodes: int) -> dict:
            return hover_suite(lambda obs: core.actor_forward(np.ascontiguousarray(obs),
                                                              actor_params=candidate),
                               preset=self.env.params,
                               mdp=evaluation_mdp(self.env.config.history_length),
                               episodes=episodes, seed=cfg.selection_seed)

        episodes = cfg.selection_episodes
        if 0 < cfg.selection_prescreen_episodes < episodes:
            result = check(cfg.selection_prescreen_episodes)
            if result["success_rate"] < cfg.selection_prescreen_success:
                episodes = cfg.selection_prescreen_episodes
        if episodes == cfg.selection_episodes:
            result = check(episodes)
        score = float(result["success_rate"])
        st.selection_history.append([st.env_steps, score, float(result["termination_rate"]),
                                     episodes])
        st.selection_wall_time_s += time.perf_counter() - started
        if score > st.best_selection_score:
            st.best_selection_score, st.best_selection_step = score, st.env_steps
            self.best_actor_params = candidate.copy()
        # only a full check can stop the run (a pre-screen score is of fewer episodes)
        if (score >= cfg.stop_at_selection_success and episodes == cfg.selection_episodes
                and st.int8_aware_until < 0):
            st.stopped_early = True

    def policy_weights(self):
        """The actor to save (``ActorWeights``, no torch): the best selection snapshot if
        checkpoint selection ran, otherwise the target (or online) actor as configured."""
        if self.best_actor_params is not None:
            return self.core.actor_weights(actor_params=self.best_actor_params)
        return self.core.actor_weights(target=self.cfg.save_target_actor)

    def policy_actor(self):
        """``policy_weights()`` as a torch ``Actor``."""
        from nanofly.policy.actor import Actor

        return Actor.from_weights(self.policy_weights())

    def _update(self, at_step: int) -> None:
        cfg, core = self.cfg, self.core
        if self._background_compile is not None:  # its kernels are in numba's cache then
            if cfg.curriculum:  # meanwhile compile the curriculum's kernel here (0 rows)
                self._recompute_rewards(0)
            self._background_compile.wait()
            self._background_compile = None
        # the batch: rows drawn here, gathered by the threads that use them (TD3Core)
        idx = self.rng.integers(0, self.buffer.size, size=cfg.batch_size)
        noise = self.rng.standard_normal((cfg.batch_size, 4), dtype=np.float32)
        separate = cfg.critic_target_update_interval > 0
        critic_targets = separate and at_step % cfg.critic_target_update_interval == 0
        actor = at_step >= cfg.actor_warmup_steps and at_step % cfg.actor_update_interval == 0
        int8_aware = self.state.int8_aware_until >= 0
        # n-step targets: the kernel gathers the next observations of the rows next_idx
        n_step = self._n_step_targets(idx) if cfg.n_step_returns > 1 else {}
        # the actor update runs in the same call unless int8-aware fine-tuning changes the
        # actor's weights around it (below)
        fused_actor = ("actor" if separate else "all") if actor and not int8_aware else None
        self.last_critic_loss, actor_loss = core.update_sampled(
            self.buffer, idx, noise, reward_scale=cfg.reward_scale,
            critic_targets=critic_targets, actor_targets=fused_actor, **n_step)
        if not math.isfinite(self.last_critic_loss):
            self.divergence = f"the critic loss is {self.last_critic_loss}"
        if actor_loss is not None:
            self.last_actor_loss = actor_loss
            if not math.isfinite(actor_loss):
                self.divergence = f"the actor loss is {actor_loss}"
        self.state.critic_updates += 1
        if actor and int8_aware:  # straight-through: the step is computed on the grid
            na = core.n_actor_params
            latent = core.params[:na].copy()
            snapped = self._snap_actor(latent)
            core.params[:na] = snapped
            # the target actor follows the weights after the fix-up below
            self.last_actor_loss = core.actor_update_sampled("none" if separate else "all")
            if not math.isfinite(self.last_actor_loss):
                self.divergence = f"the actor loss is {self.last_actor_loss}"
            core.params[:na] = latent + (core.params[:na] - snapped)  # ... on the float weights
            if separate:
                core.update_actor_target()
        if actor:
            self.state.actor_updates += 1

    def _n_step_targets(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """``TD3Core.update_sampled``'s n-step arguments for the rows ``idx``: the row whose
        next observations are bootstrapped (``next_idx``), the n-step reward and the
        ``terminated`` value; the same numbers as ``_n_step_batch`` (tested), without
        building the batch (replay.n_step_terms)."""
        cfg, buf = self.cfg, self.buffer
        n, b = cfg.n_step_returns, idx.shape[0]
        terms = np.empty((b, n), np.float32)
        next_idx = np.empty(b, np.int64)
        terminated = np.empty(b, np.float32)
        n_step_terms(idx, n, cfg.num_envs, buf.size, buf.ptr, buf.wrapped, self.row_done, buf.data,
                     buf.offsets, self._n_step_discounts, self._n_step_bootstrap_powers, terms,
                     next_idx, terminated)
        return {"next_idx": next_idx, "reward": terms.sum(axis=1), "terminated": terminated}

    def _n_step_batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The batch of rows ``idx`` with n-step targets: reward = sum_k gamma^k r_(t+k) over
        the m <= n steps of the same environment that are stored and in the same episode, the
        next observations of step t+m-1, and ``terminated`` set so that the core's
        gamma^n * (1 - terminated) is gamma^m (0 where the episode terminated). (What
        training computes, stated in NumPy: it gathers the same numbers inside the update,
        ``_n_step_targets``.)"""
        cfg, buf = self.cfg, self.buffer
        n, stride = cfg.n_step_returns, cfg.num_envs  # one env step = num_envs rows
        batch = buf.get(idx)
        rows = idx[:, None] + stride * np.arange(n)[None, :]
        valid = rows < buf.size
        if buf.wrapped:  # rows past ptr are older
            valid &= ~((idx[:, None] < buf.ptr) & (rows >= buf.ptr))
        rows = np.where(valid, rows, idx[:, None])
        done = self.row_done[rows]
        # step k is summed if it is stored and no earlier step ended the episode
        ended_before = np.concatenate([np.zeros((len(idx), 1), bool),
                                       np.cumsum(done[:, :-1], axis=1) > 0], axis=1)
        used = valid & ~ended_before
        m = used.sum(axis=1)
        discounts = (cfg.gamma ** np.arange(n)).astype(np.float32)
        batch["reward"] = (buf.reward[rows] * used * discounts).sum(axis=1).astype(np.float32)
        last = rows[np.arange(len(idx)), m - 1]
        tail = buf.get(last)
        bootstrap = (1.0 - tail["terminated"]) * cfg.gamma ** (m - n)  # gamma^m / gamma^n
        batch["terminated"] = (1.0 - bootstrap).astype(np.float32)
        batch["next_obs"], batch["next_critic_obs"] = tail["next_obs"], tail["next_critic_obs"]
        return batch

    # -- int8-aware fine-tuning (TrainConfig.int8_aware_steps) --------------------------------
    def _snap_actor(self, flat: np.ndarray) -> np.ndarray:
        """Actor parameters (flat) with the weights snapped to the int8 grid; biases as they are."""
        from nanofly.policy.int8_grid import snap_to_int8_grid

        out = flat.copy()
        views = self.core._actor_views(out)
        mult = np.asarray(self.state.int8_input_multiplier, np.float32)
        for (w, _), snapped in zip(views, snap_to_int8_grid([w for w, _ in views], mult)):
            w[...] = snapped
        return out

    def start_int8_aware(self) -> None:
        """Begin the fine-tuning phase: the kept snapshot becomes the online and target actor,
        and the grid's input multipliers are chosen on the last INT8_GRID_ROWS training
        observations (the finest grid covering twice each input's peak, angular velocities at
        least INT8_MIN_ANGULAR_VELOCITY_SPAN)."""
        # The grid is the exporter's definition, so the trainer asks export for it (this and
        # _snap_actor are train's only dependencies on export).
        from nanofly.policy.int8_grid import input_multipliers

        st, core = self.state, self.core
        na = core.n_actor_params
        kept = (self.best_actor_params if self.best_actor_params is not None
                else self._deployed_params()).copy()
        core.params[:na] = kept
        core.targets[:na] = kept
        n = self.buffer.size
        rows = np.linspace(max(0, n - INT8_GRID_ROWS), n - 1, min(n, 16384)).astype(np.int64)
        first_layer = core._actor_views(kept)[0][0]
        min_span = np.zeros(self.obs_dim)
        min_span[state_slice("angular_velocity")] = INT8_MIN_ANGULAR_VELOCITY_SPAN
        # search_octaves=0: the finest input grid that covers each range. The exporter's search
        # trades input against weight resolution for post-training rounding; here the weights
        # are trained on their grid, and a coarser input grid only adds input rounding error.
        st.int8_input_multiplier = input_multipliers(first_layer, self.buffer.obs[rows],
                                                     min_span=min_span,
                                                     search_octaves=0).tolist()
        st.int8_aware_until = st.env_steps + self.cfg.int8_aware_steps
        # From here, selection (if on) keeps the best snapped snapshot, starting with the kept
        # snapshot itself snapped: the fine-tuning continues TD3, which swings, so the saved
        # policy must not depend on where the phase happens to end.
        self.best_actor_params = None
        st.best_selection_score, st.best_selection_step = -1.0, -1
        if self.cfg.selection_interval:
            self._select()
            st.next_selection = st.env_steps + self.cfg.selection_interval

    def finish_int8_aware(self) -> None:
        """The policy to save: the best snapped snapshot if selection is on (a last check at
        the end), otherwise the target actor snapped to the grid."""
        if self.cfg.selection_interval:
            if self.state.selection_history[-1][0] != self.state.env_steps:
                self._select()
        else:
            self.best_actor_params = self._snap_actor(self._deployed_params())

    def _advance_curriculum(self) -> None:
        st, buf = self.state, self.buffer
        st.curriculum_stage += 1
        self.weights = curriculum_step(self.weights, self.cfg)
        self.env.reward_weights = self.weights
        self._recompute_rewards(buf.size)

    def _recompute_rewards(self, n: int) -> None:
        """The rewards of the first ``n`` stored transitions under the current weights."""
        buf = self.buffer
        priv = buf.next_critic_obs[:n] if self.cfg.asymmetric_critic else self.reward_priv[:n]
        recompute_rewards(priv, buf.action[:n], buf.terminated[:n], self.weights,
                          self.env.hover_action, out=buf.reward[:n])

    def _finish_episodes(self, ids, reward, terminated) -> None:
        st = self.state
        for i in ids:
            st.episodes += 1
            st.recent_returns.append(float(self._episode_return[i] + reward[i]))
            st.recent_lengths.append(int(self._episode_length[i] + 1))
            st.recent_survived.append(not bool(terminated[i]))
        keep = 100
        del st.recent_returns[:-keep], st.recent_lengths[:-keep], st.recent_survived[:-keep]

    # -- reporting ---------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        st = self.state
        return {
            "env_steps": st.env_steps, "wall_time_s": round(st.wall_time_s, 3),
            "critic_updates": st.critic_updates, "actor_updates": st.actor_updates,
            "episodes": st.episodes,
            "mean_return": float(np.mean(st.recent_returns)) if st.recent_returns else None,
            "mean_episode_length": float(np.mean(st.recent_lengths)) if st.recent_lengths else None,
            # Fraction of recent training episodes that reached the time limit without
            # crashing. Shown live instead of a success estimate: it is an upper bound only
            # (policies that survive can still miss the 0.1 m success radius).
            "survival_rate": float(np.mean(st.recent_survived)) if st.recent_survived else None,
            # None (JSON null) before the first update, and if not finite
            "critic_loss": _finite_or_none(self.last_critic_loss),
            "actor_loss": _finite_or_none(self.last_actor_loss),
            # updates run on one thread although two were allowed (a busy machine): speed only
            "one_thread_updates": self.core.updates_without_helper,
            "reward_weights": dataclasses.asdict(self.weights),
            "selection": (dict(zip(("env_steps", "success_rate", "termination_rate",
                                    "episodes"), st.selection_history[-1]),
                               best_success_rate=st.best_selection_score,
                               best_env_steps=st.best_selection_step)
                          if st.selection_history else None),
        }

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(), "state": dataclasses.asdict(self.state),
            "weights": dataclasses.asdict(self.weights), "core": self.core.state_dict(),
            "buffer": self.buffer.state_dict(),
            "reward_priv": None if self.reward_priv is None else self.reward_priv[:self.buffer.size].copy(),
            "row_done": None if self.row_done is None else self.row_done[:self.buffer.size].copy(),
            "env": self.env.get_state(), "obs": self.obs.copy(), "priv": self.priv.copy(),
            "rng": self.rng.bit_generator.state,
            "episode_return": self._episode_return.copy(),
            "episode_length": self._episode_length.copy(),
            "best_actor_params": None if self.best_actor_params is None
            else self.best_actor_params.copy(),
        }

    def restore(self, ck: dict[str, Any]) -> None:
        # the update threads change no result, so a run may resume with other settings
        made_with = dataclasses.replace(config_of_checkpoint(ck),
                                        update_threads=self.cfg.update_threads,
                                        adapt_update_threads=self.cfg.adapt_update_threads)
        if made_with != self.cfg:
            raise ValueError("checkpoint was made with a different training configuration")
        self.state = TrainState(**ck["state"])
        self.weights = RewardWeights(**ck["weights"])
        self.core.load_state_dict(ck["core"])
        self.buffer.load_state_dict(ck["buffer"])
        if self.reward_priv is not None:
            self.reward_priv[:len(ck["reward_priv"])] = ck["reward_priv"]
        if self.row_done is not None:
            self.row_done[:len(ck["row_done"])] = ck["row_done"]
        self.env.set_state(ck["env"])
        self.env.reward_weights = self.weights
        # the env's current observation lives in its own storage; obs/priv must be its views
        self.obs = self.env.obs
        self.priv = self.env._info["privileged_obs"]
        if not np.array_equal(self.obs, ck["obs"]):
            raise ValueError("checkpoint is inconsistent (observation mismatch)")
        self.rng.bit_generator.state = ck["rng"]
        self._episode_return[:] = ck["episode_return"]
        self._episode_length[:] = ck["episode_length"]
        best = ck.get("best_actor_params")
        self.best_actor_params = None if best is None else np.array(best, np.float32)

    def policy_payload(self) -> dict[str, Any]:
        """The keyword arguments of ``save_policy`` describing this run's actor."""

        mdp = self.env.config
        return {
            "observation": observation_record(mdp.history_length),
            "action": {"dim": ACTION_DIM, "hover_action": self.env.hover_action,
                       "mapping": ACTION_MAPPING,
                       "rotor_speed_unit": self.env.params.rotor_speed_unit},
            "vehicle": {"preset": self.env.params.name, "params": self.env.params.to_dict()},
            "mdp": mdp.to_dict(),
            "train_config": self.cfg.to_dict(),
            "extra": ({"int8_grid": {"input_multiplier": list(self.state.int8_input_multiplier)}}
                      if self.state.int8_aware_until >= 0 else {}),
        }


# Signals that stop a run cleanly (a checkpoint is saved): Ctrl-C, and what `kill`, `timeout`,
# container stops and batch schedulers send (SIGTERM), or a closed terminal (SIGHUP).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Interrupted(Exception):
    """Training stopped by a signal (``STOP_SIGNALS``; ``signal_number``) between two steps;
    ``trainer`` is consistent and can be checkpointed."""

    def __init__(self, trainer: Trainer, signal_number: int = signal.SIGINT):
        super().__init__(f"training interrupted ({signal.Signals(signal_number).name})")
        self.trainer = trainer
        self.signal_number = int(signal_number)


class Diverged(Exception):
    """Training stopped because it diverged: a loss or the actor's output is not finite
    (``reason``). ``trainer`` is consistent (a checkpoint of it resumes, and diverges again
    unless something changes); ``trainer.best_actor_params`` is the best finite snapshot that
    checkpoint selection kept, or None."""

    def __init__(self, trainer: Trainer, reason: str):
        super().__init__(f"training diverged at {trainer.state.env_steps} env steps: {reason}")
        self.trainer = trainer
        self.reason = reason


def run_loop(trainer: Trainer, *, on_progress: Callable[[Trainer], None] | None = None,
             progress_every: int = 2000, on_log: Callable[[dict], None] | None = None) -> Trainer:
    """Step ``trainer`` to the end of its schedule. Ctrl-C (SIGINT), SIGTERM and SIGHUP are
    deferred to the end of the current step and raised as ``Interrupted`` with the trainer in a
    consistent state (in the main thread; elsewhere signals keep their handlers, as do signals
    that are ignored, like SIGHUP under ``nohup``)."""
    cfg, st = trainer.cfg, trainer.state
    start = time.perf_counter() - st.wall_time_s
    next_progress = st.env_steps + progress_every
    next_log = (st.env_steps // cfg.log_interval + 1) * cfg.log_interval
    stop: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is signal.SIG_IGN:  # e.g. SIGHUP under nohup: keep
                continue
            previous[number] = signal.signal(number, lambda signum, _frame: stop.append(signum))
    except ValueError:  # not the main thread: no deferral
        pass
    try:
        while True:
            if st.int8_aware_until < 0 and (st.env_steps >= cfg.total_env_steps or st.stopped_early):
                if cfg.int8_aware_steps <= 0:
                    break
                trainer.start_int8_aware()
            if 0 <= st.int8_aware_until <= st.env_steps:
                trainer.finish_int8_aware()
                break
            trainer.step()
            if stop:
                st.wall_time_s = time.perf_counter() - start
                raise Interrupted(trainer, stop[0])
            if st.env_steps >= next_progress or st.env_steps >= next_log:
                st.wall_time_s = time.perf_counter() - start
                if on_progress and st.env_steps >= next_progress:
                    on_progress(trainer)
                    next_progress += progress_every
                if on_log and st.env_steps >= next_log:
                    on_log(trainer.metrics())
                    next_log += cfg.log_interval
    finally:
        st.wall_time_s = time.perf_counter() - start
        for number, handler in previous.items():
            signal.signal(number, handler)
    return trainer


def train(cfg: TrainConfig, *, resume: dict | None = None, **loop_kwargs) -> Trainer:
    """Run the whole schedule; returns the trainer (``trainer.policy_actor()`` is the policy)."""
    trainer = Trainer(cfg)
    if resume is not None:
        trainer.restore(resume)
    return run_loop(trainer, **loop_kwargs)
