"""n-step critic targets (TrainConfig.n_step_returns): the batch the trainer builds equals a
plain loop over the replay rows of the same environment, stopping at episode ends; the
update the trainer runs on it (gathered inside the kernel, TD3Core.update_sampled) is the
array calls' on that batch, bit for bit; the episode-end flags the sums need survive a
checkpoint; int8-aware fine-tuning runs with n-step targets."""
import numpy as np
import pytest

from nanofly.train.checkpoint_file import load_checkpoint, save_checkpoint
from nanofly.train.td3 import Trainer, TrainConfig, train
from nanofly.train.td3_core import TD3Core

N_STEP_CONFIG = TrainConfig(n_step_returns=3, total_env_steps=20_000, critic_warmup_steps=10**9,
                            selection_interval=0, update_threads=1)


@pytest.fixture(scope="module")
def stepped_trainer() -> Trainer:
    trainer = Trainer(N_STEP_CONFIG)
    for _ in range(300):  # ~100 episode ends (untrained policies crash), no updates
        trainer.step()
    return trainer


def test_n_step_batch_matches_a_loop(stepped_trainer):
    trainer = stepped_trainer
    n = trainer.cfg.n_step_returns
    buf, gamma, stride = trainer.buffer, trainer.cfg.gamma, trainer.cfg.num_envs
    idx = np.random.default_rng(1).integers(0, buf.size, 512).astype(np.int64)
    idx[:16] = np.arange(buf.size - 16, buf.size)  # the newest rows: nothing stored after them
    batch = trainer._n_step_batch(idx)
    short = 0
    for i, row in enumerate(idx):
        ret, discount, j = 0.0, 1.0, row
        for _ in range(n):
            ret += discount * float(buf.reward[j])
            discount *= gamma
            last = j
            if trainer.row_done[j] or j + stride >= buf.size:
                break
            j += stride
        bootstrap = discount * (1.0 - float(buf.terminated[last]))
        short += abs(bootstrap - gamma ** n) > 1e-9
        expected = buf.get(np.array([last]))
        assert abs(batch["reward"][i] - ret) < 1e-4
        # the core bootstraps with gamma^n * (1 - terminated)
        assert abs(gamma ** n * (1.0 - batch["terminated"][i]) - bootstrap) < 1e-6
        assert np.array_equal(batch["next_critic_obs"][i], expected["next_critic_obs"][0])
        assert np.array_equal(batch["next_obs"][i], expected["next_obs"][0])
        assert np.array_equal(batch["critic_obs"][i], buf.critic_obs[row])
    assert 16 <= short < len(idx)  # both kinds occur
    assert trainer.core.gamma == gamma ** n


def test_n_step_targets_match_the_n_step_batch(stepped_trainer):
    """What the fused update takes (Trainer._n_step_targets, a kernel) is _n_step_batch's
    rewards and terminated values, bit for bit, and the rows whose next observations it
    holds; on every stored row, in a buffer that has not wrapped and in one that has."""
    small = Trainer(TrainConfig(**{**N_STEP_CONFIG.__dict__, "replay_capacity": 1000}))
    for _ in range(70):  # 1120 rows in 1000: wrapped, ptr inside the buffer
        small.step()
    assert 0 < small.buffer.ptr < small.buffer.size  # rows past ptr are older
    for trainer in (stepped_trainer, small):
        buf = trainer.buffer
        idx = np.arange(buf.size, dtype=np.int64)
        targets, batch = trainer._n_step_targets(idx), trainer._n_step_batch(idx)
        assert np.array_equal(targets["reward"], batch["reward"])
        assert np.array_equal(targets["terminated"], batch["terminated"])
        tail = buf.get(targets["next_idx"])
        for name in ("next_obs", "next_critic_obs"):
            assert np.array_equal(tail[name], batch[name])
        assert (targets["next_idx"] != idx).mean() > 0.5  # mostly later rows
        assert (targets["terminated"] > 0).any() and (targets["terminated"] < 1).any()


@pytest.mark.parametrize("threads, adaptive", [(1, False), (2, False), (2, True)])
def test_fused_n_step_update_matches_array_calls_on_the_n_step_batch(stepped_trainer, threads,
                                                                     adaptive):
    """update_sampled with the trainer's n-step targets (each thread gathers its half, the
    next observations from the last summed rows) gives the same bits as critic_update /
    actor_update on Trainer._n_step_batch with the separate Polyak steps; the critic update
    alone followed by actor_update_sampled too (int8-aware fine-tuning's path). With adaptive
    threads the updates alternate between one thread and two."""
    trainer = stepped_trainer
    buf = trainer.buffer
    config = {**trainer.core.config(), "threads": threads, "adaptive_threads": adaptive}
    fused, plain = TD3Core(**config), TD3Core(**config)
    if adaptive:
        modes = iter([False, True] * 10)
        fused._adaptive.pick = lambda: next(modes)
    rng = np.random.default_rng(3)
    scale = np.float32(0.5)
    for step in range(6):
        idx = rng.integers(0, buf.size, size=64 - step)  # odd sizes: unequal halves
        noise = rng.standard_normal((idx.size, 4)).astype(np.float32)
        critic_targets = step % 3 != 0
        which = ("none", "actor", "all")[step % 3]
        targets = trainer._n_step_targets(idx)
        if step < 3:
            fused.update_sampled(buf, idx, noise, reward_scale=scale,
                                 critic_targets=critic_targets, actor_targets=which, **targets)
        else:
            fused.update_sampled(buf, idx, noise, reward_scale=scale,
                                 critic_targets=critic_targets, **targets)
            fused.actor_update_sampled(which)
        b = trainer._n_step_batch(idx)
        plain.critic_update(b["critic_obs"], b["action"], b["reward"] * scale,
                            b["next_critic_obs"], b["next_obs"], b["terminated"], noise)
        if critic_targets:
            plain.update_critic_targets()
        plain.actor_update(b["obs"], b["critic_obs"], update_targets=which == "all")
        if which == "actor":
            plain.update_actor_target()
        for name in ("params", "targets", "adam_m", "adam_v"):
            assert np.array_equal(getattr(fused, name), getattr(plain, name)), (step, name)
    assert not np.array_equal(fused.params, TD3Core(**config).params)  # they did train
    fused.close()
    plain.close()


def test_n_step_update_errors(stepped_trainer):
    core, buf = stepped_trainer.core, stepped_trainer.buffer
    idx = np.arange(4, dtype=np.int64)
    noise = np.zeros((4, 4), np.float32)
    targets = stepped_trainer._n_step_targets(idx)
    with pytest.raises(ValueError, match="next_idx, reward and terminated together"):
        core.update_sampled(buf, idx, noise, next_idx=targets["next_idx"])
    with pytest.raises(ValueError, match="next_idx"):
        core.update_sampled(buf, idx, noise, **{**targets, "next_idx": idx[:3]})
    state = core.state_dict()
    with pytest.raises(ValueError, match=r"\[0, 4800\)"):  # a next row not stored yet
        core.update_sampled(buf, idx, noise, **{**targets, "next_idx": idx + buf.size})
    assert np.array_equal(core.params, state["params"]) and core.critic_steps == 0


def test_episode_end_flags_survive_a_checkpoint(stepped_trainer, tmp_path):
    trainer = stepped_trainer
    assert trainer.row_done[:trainer.buffer.size].any()
    path = save_checkpoint(tmp_path / "checkpoint.npz", trainer.checkpoint())
    restored = Trainer(N_STEP_CONFIG)
    restored.restore(load_checkpoint(path))
    assert np.array_equal(restored.row_done, trainer.row_done)
    idx = np.arange(trainer.buffer.size, dtype=np.int64)
    for name, values in trainer._n_step_batch(idx).items():
        assert np.array_equal(restored._n_step_batch(idx)[name], values), name


def test_int8_aware_finetuning_with_n_step_returns_saves_an_actor_on_the_grid():
    from nanofly.policy.int8_grid import snap_to_int8_grid

    cfg = TrainConfig(n_step_returns=3, int8_aware_steps=800, total_env_steps=2400, num_envs=8,
                      critic_warmup_steps=800, actor_warmup_steps=1200, batch_size=64,
                      curriculum_interval=1000, selection_interval=0, seed=1)
    tr = train(cfg)
    st = tr.state
    assert st.env_steps == 3200 and st.int8_aware_until == 3200
    assert st.actor_updates == (3200 - 1200) // 20 + 1  # the fine-tuning's too
    mult = np.asarray(st.int8_input_multiplier, np.float32)
    weights = [lin.weight.detach().numpy() for lin in tr.policy_actor().linear_layers()]
    assert all(np.array_equal(w, s) for w, s in zip(weights, snap_to_int8_grid(weights, mult)))
