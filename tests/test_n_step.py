"""n-step critic targets (TrainConfig.n_step_returns): the batch the trainer builds equals a
plain loop over the replay rows of the same environment, stopping at episode ends; the
episode-end flags the sums need survive a checkpoint. (The refusal of n-step returns with
int8-aware fine-tuning is a case of tests/test_bad_input_train.py.)"""
import numpy as np
import pytest

from nanofly.train.checkpoint_file import load_checkpoint, save_checkpoint
from nanofly.train.td3 import Trainer, TrainConfig

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


def test_n_step_one_is_todays_default():
    assert TrainConfig().n_step_returns == 1


def test_n_step_with_int8_aware_steps_is_refused():
    with pytest.raises(ValueError, match="n_step_returns.*int8_aware_steps"):
        TrainConfig(n_step_returns=3, int8_aware_steps=1000).validate()
