"""TD3Core (numba kernels) against the plain-PyTorch TD3 it implements
(``nanofly.train.td3_reference``): on the same batches, the same parameters.

Tolerances: both sides compute in float32 but sum in different orders (BLAS blocking vs
torch's kernels) and the kernels use a rational tanh approximation (max error ~3 float32 ulps,
tested below). Gradients then agree to ~1e-6 relative to their scale (asserted at 1e-4
relative to the largest |grad| of the network). Adam normalises each step to about
lr = 1e-3 per parameter, so after a few steps parameters agree to ~1e-7..1e-6 absolute
(up to ~7e-6 seen), and we assert 2e-5 absolute. A real bug (wrong
sign, missing term, wrong target) moves parameters by ~1e-3 per step, 50x above that.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nanofly.train import td3_kernels
from nanofly.policy.actor import Actor
from nanofly.train.td3_core import TD3Core
from nanofly.train.td3_reference import ReferenceTD3

PARAM_ATOL = 2e-5
GRAD_RTOL = 1e-4


# ------------------------------------------------------------------------------ reference
# The array API's batches (make_batch) as the reference's: one dict of tensors and the noise.
def reference_batch(batch):
    keys = {"critic_obs": "critic_obs", "action": "action", "reward": "reward",
            "next_critic_obs": "next_critic_obs", "next_obs": "next_actor_obs",
            "terminated": "terminated"}
    tensors = {k: torch.from_numpy(batch[v]) for k, v in keys.items()}
    return tensors, torch.from_numpy(batch["noise"])


def reference_critic_update(ref, batch):
    """ReferenceTD3.critic_update on a make_batch batch; returns (loss, TD target)."""
    tensors, noise = reference_batch(batch)
    target = ref.td_target(tensors, noise)
    return ref.critic_update(tensors, noise), target


def reference_actor_update(ref, actor_obs, critic_obs, update_targets=True):
    """ReferenceTD3's actor step, then (as TD3Core.actor_update) Polyak on all targets."""
    loss = ref.actor_update({"obs": torch.from_numpy(actor_obs),
                             "critic_obs": torch.from_numpy(critic_obs)})
    if update_targets:
        ref.update_targets("all")
    return loss


def torch_params(module: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in module.parameters()])


def torch_grads(module: nn.Module) -> np.ndarray:
    return np.concatenate([p.grad.numpy().ravel() for p in module.parameters()])


def core_actor_params(core, target=False):
    return torch_params(core.to_actor(target))


def core_critic_params(core, target=False):
    q1, q2 = core.to_critics(target)
    return torch_params(q1), torch_params(q2)


def core_grads(core):
    """The core's last gradients in torch parameter order (actor, Q1, Q2)."""
    actor = np.concatenate([a for w, b in core._actor_views(core.grads) for a in (w.ravel(), b)])
    critics = [np.concatenate([a.ravel() for w, b in core._critic_layers(core.grads, c)
                               for a in (w, b)]) for c in (0, 1)]  # torch's order
    return actor, critics[0], critics[1]


def make_batch(rng, core, b=64, terminal_fraction=0.2):
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return dict(
        critic_obs=f(b, core.critic_obs_dim),
        action=rng.uniform(-1, 1, (b, core.action_dim)).astype(np.float32),
        reward=f(b),
        next_critic_obs=f(b, core.critic_obs_dim),
        next_actor_obs=f(b, core.actor_obs_dim),
        terminated=(rng.random(b) < terminal_fraction).astype(np.float32),
        noise=f(b, core.action_dim),
    )


def small_core(**kw):
    args = dict(actor_obs_dim=20, critic_obs_dim=7, action_dim=3, actor_hidden=(16, 12),
                critic_hidden=(10, 14), batch_size=64, seed=3)
    args.update(kw)
    return TD3Core(**args)


def assert_agree(mine, theirs, what):
    """Parameters after many updates: all but 0.1 % within 1e-5, none beyond 5e-5. Adam
    divides each step by the gradient's size, so a parameter whose gradient is the sum of
    terms that almost cancel (|g| ~1e-6 against a median ~1e-4) takes a step whose rounding
    differs by up to ~2e-5 between two summation orders; a wrong term moves every parameter
    by ~1e-3 per step."""
    err = np.abs(np.asarray(mine) - np.asarray(theirs))
    assert np.quantile(err, 0.999) <= 1e-5 and err.max() <= 5e-5, (
        f"{what}: 99.9 % quantile of |diff| {np.quantile(err, 0.999):.3g}, max {err.max():.3g}")


def assert_close(a, b, atol=PARAM_ATOL, what=""):
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol:.3g}"


# --------------------------------------------------------------------------------- tests
@pytest.fixture(autouse=True)
def one_torch_thread():
    """The reference's matrices are tiny: on a busy machine torch's threads only wait for
    each other (a test took 10x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tanh_approximation_error():
    x = np.linspace(-10, 10, 400_001, dtype=np.float32)
    out = np.empty_like(x)
    td3_kernels.tanh_approx_array(x, out)
    err = np.abs(out.astype(np.float64) - np.tanh(x.astype(np.float64)))
    # measured 2.7e-7 (~5 float32 ulps; spacing near 1 is 6e-8); torch.tanh is 3e-8
    assert err.max() < 4e-7, err.max()
    assert np.all(np.abs(out) <= 1.0)
    assert np.array_equal(out, -out[::-1])  # odd


@pytest.mark.parametrize("dims", [dict(), dict(critic_obs_dim=20), dict(threads=2),
                                  dict(critic_layer_norm=True),
                                  dict(critic_layer_norm=True, threads=2)],
                         ids=["asymmetric", "symmetric-critic", "two-threads", "layer-norm",
                              "layer-norm-two-threads"])
def test_updates_match_torch_reference(dims):
    """A few interleaved critic/actor steps: gradients, parameters, targets and losses."""
    core = small_core(**dims)
    ref = ReferenceTD3.from_core(core)
    rng = np.random.default_rng(0)
    for step in range(4):
        batch = make_batch(rng, core)
        loss = core.critic_update(**batch)
        ref_loss, _ = reference_critic_update(ref, batch)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        _, g1, g2 = core_grads(core)
        for g, net in ((g1, ref.critic1), (g2, ref.critic2)):
            rg = torch_grads(net)
            assert_close(g, rg, GRAD_RTOL * np.abs(rg).max(), f"critic grads step {step}")
        if step % 2 == 1:
            a_loss = core.actor_update(batch["next_actor_obs"], batch["next_critic_obs"])
            ref_a_loss = reference_actor_update(ref, batch["next_actor_obs"],
                                                batch["next_critic_obs"])
            assert a_loss == pytest.approx(ref_a_loss, rel=1e-5, abs=1e-6)
            ga, _, _ = core_grads(core)
            rg = torch_grads(ref.actor)
            assert_close(ga, rg, GRAD_RTOL * np.abs(rg).max(), f"actor grads step {step}")
    assert_close(core_actor_params(core), torch_params(ref.actor), what="actor")
    assert_close(core_actor_params(core, True), torch_params(ref.actor_target), what="actor tgt")
    for mine, theirs, name in zip(core_critic_params(core), (ref.critic1, ref.critic2), ("Q1", "Q2")):
        assert_close(mine, torch_params(theirs), what=name)
    for mine, theirs, name in zip(core_critic_params(core, True),
                                  (ref.critic1_target, ref.critic2_target), ("Q1 tgt", "Q2 tgt")):
        assert_close(mine, torch_params(theirs), what=name)
    # the updates did move the parameters (so the comparison above is not vacuous)
    assert np.abs(core_actor_params(core) - core_actor_params(small_core(**dims))).max() > 1e-3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_paper_sizes_match_torch_reference(threads, layer_norm):
    # 146 / 28 / 4, 64-64, batch 256
    core = TD3Core(seed=5, threads=threads, critic_layer_norm=layer_norm)
    ref = ReferenceTD3.from_core(core)
    rng = np.random.default_rng(1)
    for _ in range(2):
        batch = make_batch(rng, core, b=256)
        core.critic_update(**batch)
        reference_critic_update(ref, batch)
        core.actor_update(batch["next_actor_obs"], batch["next_critic_obs"])
        reference_actor_update(ref, batch["next_actor_obs"], batch["next_critic_obs"])
    assert_close(core_actor_params(core), torch_params(ref.actor), what="actor")
    for mine, theirs in zip(core_critic_params(core), (ref.critic1, ref.critic2)):
        assert_close(mine, torch_params(theirs), what="critic")
    obs = rng.standard_normal((5, 146)).astype(np.float32)
    with torch.no_grad():
        expected = ref.actor(torch.from_numpy(obs)).numpy()
    assert_close(core.actor_forward(obs), expected, 1e-6, "actor_forward")


def _mean_td_target(core, batch):
    """Mean TD target y over the batch that the kernel used (from its statistics)."""
    core.critic_update(**batch)
    return float(core.critic_stats[4])


def _hand_td_target(ref, batch, next_action_fn, gamma):
    with torch.no_grad():
        mu = ref.actor_target(torch.from_numpy(batch["next_actor_obs"]))
        x_next = torch.cat([torch.from_numpy(batch["next_critic_obs"]), next_action_fn(mu)], 1)
        q_next = torch.min(ref.critic1_target(x_next), ref.critic2_target(x_next)).view(-1)
        return torch.from_numpy(batch["reward"]) + gamma * (
            1 - torch.from_numpy(batch["terminated"])) * q_next


def test_target_smoothing_noise_and_action_clipping():
    """Huge noise must be clipped to +-smoothing_clip, then the action to [-1, 1]."""
    rng = np.random.default_rng(2)
    batch = make_batch(rng, small_core())
    for sign in (1.0, -1.0):
        batch["noise"] = np.full_like(batch["noise"], sign * 1e3)
        # noise clipped at 0.5: a' = clip(mu' + 0.5 sign, -1, 1)
        core = small_core(smoothing_std=0.2, smoothing_clip=0.5)
        ref = ReferenceTD3.from_core(core)
        y_hand = _hand_td_target(ref, batch, lambda mu: (mu + 0.5 * sign).clamp(-1, 1), core.gamma)
        _, y_ref = reference_critic_update(ref, batch)
        assert torch.allclose(y_ref, y_hand, atol=1e-6)
        assert _mean_td_target(core, batch) == pytest.approx(y_hand.mean().item(), abs=1e-5)
        # noise clip out of the way: only the action clip bounds a' (= +-1 everywhere)
        core = small_core(smoothing_std=0.2, smoothing_clip=1e3)
        y_hand_sat = _hand_td_target(ref, batch, lambda mu: torch.full_like(mu, sign), core.gamma)
        assert _mean_td_target(core, batch) == pytest.approx(y_hand_sat.mean().item(), abs=1e-5)
        # the two cases differ, so each assertion above can tell the clips apart
        assert abs(y_hand_sat.mean().item() - y_hand.mean().item()) > 1e-4


def test_min_of_twin_critics_and_termination():
    """y = r + gamma (1 - terminated) min(Q1', Q2'): set the target critics' output biases
    so that Q2' = Q1' + 5 and check the target uses Q1'; terminated rows get only r."""
    core = small_core(gamma=0.9)
    c2 = core.critic_hidden[1]
    # zero the last-layer weights of both target critics: Q' = output bias exactly
    views1 = core._critic_views(core.targets, 0)
    views2 = core._critic_views(core.targets, 1)
    views1[2][0][...] = 0
    views2[2][0][...] = 0
    views1[2][1][...] = 1.5
    views2[2][1][...] = 6.5
    assert views1[2][0].shape == (1, c2)
    rng = np.random.default_rng(3)
    batch = make_batch(rng, core, b=32)
    reward, term = batch["reward"], batch["terminated"]
    term[:] = 0
    term[::4] = 1  # a quarter terminated
    expected = reward + 0.9 * (1 - term) * 1.5
    q1, q2 = core.to_critics()  # online critics before the update
    with torch.no_grad():
        x = torch.cat([torch.from_numpy(batch["critic_obs"]), torch.from_numpy(batch["action"])], 1)
        q = torch.cat([q1(x), q2(x)], 1).numpy()
    expected_loss = float(((q - expected[:, None]) ** 2).mean(0).sum())
    assert core.critic_update(**batch) == pytest.approx(expected_loss, rel=1e-5)
    assert core.critic_stats[4] == pytest.approx(expected.mean(), abs=1e-6)
    # swap which critic is lower: the target must follow the minimum (now Q2' = 1.5)
    views1[2][1][...] = 6.5
    views2[2][1][...] = 1.5
    core.critic_update(**batch)
    assert core.critic_stats[4] == pytest.approx(expected.mean(), abs=1e-6)
    # truncation is not termination: with terminated all 0 every row bootstraps
    core3 = small_core(gamma=0.9)
    for views in (core3._critic_views(core3.targets, 0), core3._critic_views(core3.targets, 1)):
        views[2][0][...] = 0
    core3._critic_views(core3.targets, 0)[2][1][...] = 1.5
    core3._critic_views(core3.targets, 1)[2][1][...] = 6.5
    batch["terminated"][:] = 0
    core3.critic_update(**batch)
    assert core3.critic_stats[4] == pytest.approx((reward + 0.9 * 1.5).mean(), abs=1e-6)
    batch["terminated"][:] = 1
    core4 = small_core(gamma=0.9)
    core4.critic_update(**batch)
    assert core4.critic_stats[4] == pytest.approx(reward.mean(), abs=1e-6)


def test_polyak_update_alone():
    core = small_core(polyak=0.9)
    rng = np.random.default_rng(4)
    core.params[...] = rng.standard_normal(core.params.shape).astype(np.float32)
    before = core.targets.copy()
    online = core.params.copy()
    core.update_targets()
    np.testing.assert_allclose(core.targets, 0.9 * before + 0.1 * online, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(core.params, online)


def test_actor_update_leaves_critics_and_critic_update_leaves_actor():
    core = small_core()
    rng = np.random.default_rng(5)
    batch = make_batch(rng, core)
    n_actor = core.n_actor_params
    before = core.params.copy()
    tgt_before = core.targets.copy()
    core.critic_update(**batch)
    np.testing.assert_array_equal(core.params[:n_actor], before[:n_actor])
    assert np.abs(core.params[n_actor:] - before[n_actor:]).max() > 1e-4
    np.testing.assert_array_equal(core.targets, tgt_before)  # critic step: no Polyak
    mid = core.params.copy()
    core.actor_update(batch["next_actor_obs"], batch["critic_obs"], update_targets=False)
    np.testing.assert_array_equal(core.params[n_actor:], mid[n_actor:])
    assert np.abs(core.params[:n_actor] - mid[:n_actor]).max() > 1e-4
    np.testing.assert_array_equal(core.targets, tgt_before)
    core.actor_update(batch["next_actor_obs"], batch["critic_obs"])  # with Polyak
    assert np.abs(core.targets - tgt_before).max() > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_determinism(threads):
    results = []
    for _ in range(2):
        core = small_core(seed=11, threads=threads)
        rng = np.random.default_rng(6)
        for _ in range(3):
            batch = make_batch(rng, core)
            core.critic_update(**batch)
            core.actor_update(batch["next_actor_obs"], batch["critic_obs"])
        results.append((core.params.copy(), core.targets.copy(), core.adam_v.copy(),
                        core.actor_forward(batch["next_actor_obs"])))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    other = small_core(seed=12)
    assert not np.array_equal(other.params, small_core(seed=11).params)


def test_init_distribution_matches_torch_default():
    core = TD3Core(seed=0)
    for weight, bias in core._actor_views(core.params) + core._critic_views(core.params, 1):
        bound = 1 / np.sqrt(weight.shape[1])
        assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
        if weight.size > 1000:  # uniform on [-bound, bound]: std = bound / sqrt(3)
            assert weight.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    np.testing.assert_array_equal(core.params, core.targets)


def test_actor_round_trip_and_forward():
    core = small_core()
    rng = np.random.default_rng(7)
    actor = core.to_actor()
    assert isinstance(actor, Actor) and actor.layer_sizes == core.actor_sizes
    obs = rng.standard_normal((9, core.actor_obs_dim)).astype(np.float32)
    with torch.no_grad():
        expected = actor(torch.from_numpy(obs)).numpy()
    assert_close(core.actor_forward(obs), expected, 1e-6, "forward")
    out = np.empty((9, core.action_dim), np.float32)
    assert core.actor_forward(obs, out=out) is out
    # a different actor loaded into a fresh core gives back the same weights and outputs
    other = Actor(core.actor_sizes)
    core2 = small_core(seed=99)
    core2.load_actor(other)
    for (k, v), (k2, v2) in zip(other.state_dict().items(), core2.to_actor().state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(torch.from_numpy(core_actor_params(core2, target=True)),
                       torch.from_numpy(torch_params(other)))
    core2.load_actor(core.to_actor().state_dict(), targets_too=False)
    np.testing.assert_array_equal(core2.params[:core.n_actor_params],
                                  core.params[:core.n_actor_params])
    # critics round trip too
    q1, q2 = core.to_critics()
    core3 = small_core(seed=5)
    core3.load_critics(q1, q2)
    np.testing.assert_array_equal(core3.params[core.n_actor_params:],
                                  core.params[core.n_actor_params:])


def test_bad_inputs_give_clear_errors():
    core = small_core()
    rng = np.random.default_rng(8)
    batch = make_batch(rng, core)
    with pytest.raises(TypeError, match="float32"):
        core.critic_update(**{**batch, "reward": batch["reward"].astype(np.float64)})
    with pytest.raises(ValueError, match="next_actor_obs: shape"):
        core.critic_update(**{**batch, "next_actor_obs": batch["next_actor_obs"][:, :5].copy()})
    with pytest.raises(ValueError, match="C-contiguous"):
        core.actor_update(np.asfortranarray(batch["next_actor_obs"]), batch["critic_obs"])
    with pytest.raises(ValueError, match="two positive integers"):
        TD3Core(actor_hidden=(64,))
    with pytest.raises(ValueError, match="layer sizes"):
        core.load_actor(Actor([5, 4, 3]))
    before = core.params.copy()
    with pytest.raises(ValueError):
        core.critic_update(**{**batch, "noise": batch["noise"][:10]})
    np.testing.assert_array_equal(core.params, before)  # a rejected call changes nothing
    # (B, 1) rewards are accepted, larger batches grow the workspace
    batch2 = make_batch(rng, core, b=200)
    batch2["reward"] = batch2["reward"][:, None].copy()
    assert np.isfinite(core.critic_update(**batch2))


def test_warmup_leaves_state_unchanged():
    core = small_core(threads=2)
    rng = np.random.default_rng(9)
    batch = make_batch(rng, core)
    core.critic_update(**batch)
    state = core.state_dict()
    assert core.warmup() >= 0.0
    after = core.state_dict()
    for key in ("params", "targets", "adam_m", "adam_v"):
        np.testing.assert_array_equal(state[key], after[key])
    assert (after["actor_steps"], after["critic_steps"]) == (0, 1)
    core.close()


def test_state_dict_round_trip_resumes_identically():
    rng = np.random.default_rng(10)
    batches = [make_batch(rng, small_core()) for _ in range(3)]
    core = small_core()
    core.critic_update(**batches[0])
    resumed = small_core(seed=42)
    resumed.load_state_dict(core.state_dict())
    for c in (core, resumed):
        for b in batches[1:]:
            c.critic_update(**b)
            c.actor_update(b["next_actor_obs"], b["critic_obs"])
    np.testing.assert_array_equal(core.params, resumed.params)
    np.testing.assert_array_equal(core.targets, resumed.targets)
    with pytest.raises(ValueError, match="different network sizes"):
        TD3Core().load_state_dict(core.state_dict())


@pytest.mark.parametrize("batch_rows", [37, 2, 1])
def test_two_threads_match_one_thread_for_odd_and_tiny_batches(batch_rows):
    """threads=2 splits the batch (37 -> 19 + 18; 1 row -> 1 + 0) between two threads;
    threads=1 computes the same two halves in turn and adds them in the same order: the same
    bits, so the thread count never changes a result."""
    rng = np.random.default_rng(11)
    batches = [make_batch(rng, small_core(), b=batch_rows) for _ in range(3)]
    cores = [small_core(threads=1), small_core(threads=2)]
    for core in cores:
        for b in batches:
            core.critic_update(**b)
            core.actor_update(b["next_actor_obs"], b["critic_obs"])
    for name in ("params", "targets", "adam_m", "adam_v", "critic_stats"):
        assert np.array_equal(getattr(cores[0], name), getattr(cores[1], name)), name
    assert np.abs(cores[0].params - small_core().params).max() > 1e-3  # they did train
    cores[1].close()


def test_learns_a_contextual_bandit():
    """End to end: with reward -(a - a*(o))^2 (terminal steps) the actor learns a*(o)."""
    core = TD3Core(3, 3, 1, (32, 32), (32, 32), batch_size=64, seed=0, gamma=0.0)
    rng = np.random.default_rng(0)

    def best_action(obs):
        return 0.6 * np.tanh(2 * obs[:, :1])

    test_obs = rng.uniform(-1, 1, (500, 3)).astype(np.float32)
    error_before = np.abs(core.actor_forward(test_obs) - best_action(test_obs)).mean()
    for step in range(2000):
        obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
        action = rng.uniform(-1, 1, (64, 1)).astype(np.float32)
        reward = (-(action - best_action(obs)) ** 2).ravel().astype(np.float32)
        core.critic_update(obs, action, reward, obs, obs, np.ones(64, np.float32),
                           rng.standard_normal((64, 1)).astype(np.float32))
        if step % 2:
            core.actor_update(obs, obs)
    error_after = np.abs(core.actor_forward(test_obs) - best_action(test_obs)).mean()
    assert error_before > 0.3 and error_after < 0.08, (error_before, error_after)


def test_half_worker_hands_off_after_sleeping_reraises_errors_and_closes():
    """The second update thread spins for new work, then blocks; jobs posted in either state
    run, an exception in the thread reaches the caller, and close() ends the thread."""
    import time

    from nanofly.train.td3_core import _HalfWorker

    rng = np.random.default_rng(3)
    core, single = small_core(threads=2), small_core(threads=1)
    batch = make_batch(rng, core)
    core.critic_update(**batch)  # posted while the worker spins
    single.critic_update(**batch)
    worker = core._worker
    time.sleep(0.05)  # well past the ~2 ms of spinning: now blocked on its Event
    assert worker._sleeping
    core.critic_update(**batch)
    single.critic_update(**batch)
    assert np.array_equal(core.params, single.params)  # after a hand-off to a sleeping worker

    # a worker whose workspace is too small: the kernel's error reaches wait(), twice
    buffers = tuple(np.zeros((2, 1), np.float32) if i == 9 else b
                    for i, b in enumerate(worker._buffers))
    bad = _HalfWorker(buffers, worker._mailbox, worker.data)
    keys = ("critic_obs", "action", "reward", "next_critic_obs", "next_actor_obs",
            "terminated", "noise")
    rows = batch["critic_obs"].shape[0] // 2
    for slot, key in enumerate(keys):
        bad.fill(slot, batch[key].reshape(batch[key].shape[0], -1).squeeze()[rows:])
    bad.scalars[:] = (1.0 / (2 * rows), 1.0)
    for _ in range(2):
        # a critic job on the mailbox rows (no gathering): [phases, helper's rows, caller's
        # rows, gather, rows stored, critic Adam range, Polyak range, actor ranges, solo]
        bad.post((td3_kernels.CRITIC_JOB, rows, rows, 0, 0, core.n_actor_params,
                  core.params.size, 0, 0, 0, 0, 0, 0, 0))
        with pytest.raises(ValueError, match="workspace too small"):
            bad.wait()
    bad.close()
    assert not bad._thread.is_alive()
    core.close()
    assert not worker._thread.is_alive()


def test_actor_forward_with_given_actor_parameters():
    core = small_core()
    obs = np.random.default_rng(0).standard_normal((5, core.actor_obs_dim)).astype(np.float32)
    core.targets[:core.n_actor_params] *= 0.5  # target differs from the online actor
    given = core.targets[:core.n_actor_params].copy()
    np.testing.assert_array_equal(core.actor_forward(obs, actor_params=given),
                                  core.actor_forward(obs, target=True))
    assert not np.array_equal(core.actor_forward(obs), core.actor_forward(obs, target=True))
    with pytest.raises(ValueError, match="actor_params"):
        core.actor_forward(obs, actor_params=given[:-1])


def test_layer_norm_critics_round_trip_and_errors():
    core = small_core(critic_layer_norm=True)
    # torch.nn.LayerNorm's init: gains 1, offsets 0 (both critics, targets too)
    for buf in (core.params, core.targets):
        for c in (0, 1):
            for gain, offset in core._critic_norm_views(buf, c):
                assert np.all(gain == 1.0) and np.all(offset == 0.0)
    q1, q2 = core.to_critics()
    assert [type(m).__name__ for m in q1] == ["Linear", "LayerNorm", "Tanh", "Linear",
                                              "LayerNorm", "Tanh", "Linear"]
    with torch.no_grad():  # make the gains and offsets differ from their init
        for net in (q1, q2):
            for m in net:
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    other = small_core(seed=3, critic_layer_norm=True)
    other.load_critics(q1, q2)
    for mine, theirs in zip(core_critic_params(other), (q1, q2)):
        assert_close(mine, torch_params(theirs), 0.0, "critic round trip")
    # a plain critic's state_dict does not fit a LayerNorm core, and the error says why
    plain1, plain2 = small_core().to_critics()
    with pytest.raises(ValueError, match="LayerNorm"):
        other.load_critics(plain1, plain2)
    bad = q1.state_dict()
    bad["1.weight"] = torch.full_like(bad["1.weight"], float("nan"))
    with pytest.raises(ValueError, match="finite"):
        other.load_critics(bad, q2)
    # a checkpoint of a core without LayerNorm is refused (different parameter count)
    with pytest.raises(ValueError, match="different network sizes"):
        other.load_state_dict(small_core().state_dict())


@pytest.mark.parametrize("threads", [1, 2])
def test_sampled_updates_match_updates_on_the_gathered_batch(threads):
    """update_sampled / actor_update_sampled (rows gathered inside the kernels, Polyak
    steps fused into the update) compute exactly what the array API computes on
    ReplayBuffer.get(idx) followed by the separate Polyak steps."""
    from nanofly.train.replay import ReplayBuffer

    rng = np.random.default_rng(5)
    a, b = small_core(threads=threads), small_core(threads=threads)
    replay = ReplayBuffer(300, a.actor_obs_dim, a.critic_obs_dim, a.action_dim)
    replay.data[:] = rng.standard_normal(replay.data.shape).astype(np.float32)
    replay.terminated[:] = rng.random(300) < 0.2
    replay.rows(300)
    for step in range(6):
        idx = rng.integers(0, replay.size, size=64 - step)  # odd sizes too
        noise = rng.standard_normal((idx.size, a.action_dim)).astype(np.float32)
        scale = 0.5 if step % 2 else 1.0
        critic_targets = step % 3 != 0
        which = ("none", "actor", "all")[step % 3]
        if step < 3:  # the critic and the actor update in one call
            loss_a, actor_a = a.update_sampled(replay, idx, noise, reward_scale=scale,
                                               critic_targets=critic_targets,
                                               actor_targets=which)
        else:
            loss_a, none = a.update_sampled(replay, idx, noise, reward_scale=scale,
                                            critic_targets=critic_targets)
            assert none is None
            actor_a = a.actor_update_sampled(which)
        batch = replay.get(idx)
        loss_b = b.critic_update(batch["critic_obs"], batch["action"],
                                 batch["reward"] * np.float32(scale), batch["next_critic_obs"],
                                 batch["next_obs"], batch["terminated"], noise)
        if critic_targets:  # the two target critics' Polyak step alone
            n = b.n_actor_params
            td3_kernels.polyak_kernel(b.params[n:], b.targets[n:], np.float32(b.polyak))
        assert loss_a == loss_b
        actor_b = b.actor_update(batch["obs"], batch["critic_obs"], update_targets=which == "all")
        if which == "actor":
            b.update_actor_target()
        assert actor_a == actor_b
        np.testing.assert_array_equal(a.params, b.params)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.adam_v, b.adam_v)
        assert (a.critic_steps, a.actor_steps) == (b.critic_steps, b.actor_steps)
    a.close()
    b.close()



def test_adaptive_threads_switching_changes_no_bit():
    """TD3Core(threads=2, adaptive_threads=True) may run any update on one thread or two:
    updates forced to alternate (sampled critic+actor calls, a sampled critic update followed
    by actor_update_sampled in the mode it gathered in, array calls) give exactly the fixed
    two-thread core's numbers."""
    from nanofly.train.replay import ReplayBuffer

    rng = np.random.default_rng(8)
    fixed, adaptive = small_core(threads=2), small_core(threads=2, adaptive_threads=True)
    modes = iter([False, True] * 20)
    adaptive._adaptive.pick = lambda: next(modes)
    replay = ReplayBuffer(300, fixed.actor_obs_dim, fixed.critic_obs_dim, fixed.action_dim)
    replay.data[:] = rng.standard_normal(replay.data.shape).astype(np.float32)
    replay.terminated[:] = rng.random(300) < 0.2
    replay.rows(300)
    used = []
    for step in range(8):
        idx = rng.integers(0, replay.size, size=64 - step)
        noise = rng.standard_normal((idx.size, fixed.action_dim)).astype(np.float32)
        for core in (fixed, adaptive):
            if step % 2:
                core.update_sampled(replay, idx, noise, critic_targets=True)
                core.actor_update_sampled("actor")
            else:
                core.update_sampled(replay, idx, noise, critic_targets=True, actor_targets="all")
        used.append(adaptive._sampled_helper)
        b = make_batch(rng, fixed, b=37)
        for core in (fixed, adaptive):
            core.critic_update(**b)
            core.actor_update(b["next_actor_obs"], b["critic_obs"])
        for name in ("params", "targets", "adam_m", "adam_v"):
            assert np.array_equal(getattr(fixed, name), getattr(adaptive, name)), (step, name)
    assert set(used) == {False, True}  # both modes ran sampled updates
    assert adaptive._adaptive.updates_without_helper > 0
    assert np.abs(fixed.params - small_core().params).max() > 1e-3  # they did train
    fixed.close()
    adaptive.close()


def test_adaptive_threads_policy():
    """AdaptiveThreads on made-up timings: two threads while they are faster (one-thread
    probes only), one thread soon after two become slow, two again after a probe shows
    them fast; one thread slowing down alone does not switch back between probes."""
    from nanofly.train.td3_core import AdaptiveThreads

    policy = AdaptiveThreads()
    n = policy.PROBE_INTERVAL

    def run(updates, two, one, phases=1):
        chosen = []
        for _ in range(updates):
            helper = policy.pick()
            chosen.append(helper)
            policy.record(helper, phases, two if helper else one)
        return chosen

    chosen = run(3 * n, two=1.0, one=1.6)  # an idle machine
    assert policy.helper and chosen.count(False) == 6 and policy.switches == 0
    chosen = run(20, two=10.0, one=1.6)  # another process took a core: the helper waits
    assert not policy.helper and policy.switches == 1
    assert chosen.index(False) < 10  # switched within a few updates, not at the next probe
    before = policy.switches
    run(n - (policy.updates % n), two=10.0, one=3.0)  # one thread slower too: no flapping
    assert not policy.helper and policy.switches == before
    run(2, two=10.0, one=3.0)  # a probe: two threads still slow
    assert not policy.helper
    run(n, two=1.0, one=3.0)  # the core is free again: the next probe finds two faster
    assert policy.helper and policy.switches == before + 1
    # a slow first update of a kind (starting the helper) does not switch by itself
    fresh = AdaptiveThreads()
    fresh.updates = 2  # past the opening probes
    for seconds in [20.0] + [1.0] * 10:
        fresh.record(True, 3, seconds)
    fresh._average[(False, 3)] = 1.6
    fresh.record(True, 3, 1.0)
    assert fresh.helper and fresh.switches == 0

def test_sampled_update_errors():
    from nanofly.train.replay import ReplayBuffer

    core = small_core(threads=2)
    replay = ReplayBuffer(50, core.actor_obs_dim, core.critic_obs_dim, core.action_dim)
    replay.data[:] = 0.0
    replay.rows(10)
    noise = np.zeros((4, core.action_dim), np.float32)
    with pytest.raises(RuntimeError, match="needs an update_sampled"):
        core.actor_update_sampled()
    state = {k: v.copy() for k, v in core.state_dict().items() if isinstance(v, np.ndarray)}
    for bad in ([0, 1, 2, 10], [10, 1, 2, 3], [-1, 0, 0, 0]):  # a row not stored yet, in
        with pytest.raises(ValueError, match=r"\[0, 10\)"):  # either thread's half
            core.update_sampled(replay, np.array(bad), noise, actor_targets="all")
    for key, value in state.items():  # and nothing changed
        np.testing.assert_array_equal(core.state_dict()[key], value)
    assert core.critic_steps == core.actor_steps == 0
    with pytest.raises(ValueError, match="int64"):
        core.update_sampled(replay, np.array([0, 1, 2, 3], np.int32), noise)
    with pytest.raises(ValueError, match="noise"):
        core.update_sampled(replay, np.array([0, 1, 2]), noise)
    before = core.params.copy()
    core.update_sampled(replay, np.array([0, 1, 2, 3]), noise)
    assert not np.array_equal(before, core.params)
    with pytest.raises(ValueError, match="update_targets"):
        core.actor_update_sampled("critic")
    core.actor_update_sampled("all")
    core.critic_update(*(np.zeros((4, n), np.float32) for n in (
        core.critic_obs_dim, core.action_dim)), np.zeros(4, np.float32),
        np.zeros((4, core.critic_obs_dim), np.float32),
        np.zeros((4, core.actor_obs_dim), np.float32), np.zeros(4, np.float32), noise)
    with pytest.raises(RuntimeError):  # the array API replaced the sampled batch
        core.actor_update_sampled()
    core.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_trainer_updates_match_the_reference_schedule(threads):
    """The trainer's path (Trainer._update: update_sampled with the target critics' Polyak step
    every critic_target_update_interval steps and the actor update and target actor step
    fused in after the warm-up) against ReferenceTD3.update on the same replay rows and noise,
    paper sizes with LayerNorm critics: the same parameters after 40 updates (assert_agree)."""
    from nanofly.train.replay import ReplayBuffer
    from nanofly.train.td3 import TrainConfig

    cfg = TrainConfig(critic_update_interval=10, actor_update_interval=20,
                      critic_target_update_interval=20, actor_warmup_steps=100,
                      reward_scale=0.5)
    core = TD3Core(seed=7, threads=threads, critic_layer_norm=True, batch_size=cfg.batch_size)
    ref = ReferenceTD3.from_core(core)
    rng = np.random.default_rng(12)
    replay = ReplayBuffer(1000, core.actor_obs_dim, core.critic_obs_dim, core.action_dim)
    replay.data[:] = rng.standard_normal(replay.data.shape).astype(np.float32)
    replay.terminated[:] = rng.random(1000) < 0.1
    replay.rows(1000)
    for at_step in range(0, 400, cfg.critic_update_interval):
        idx = rng.integers(0, replay.size, size=cfg.batch_size)
        noise = rng.standard_normal((cfg.batch_size, 4), dtype=np.float32)
        actor = at_step >= cfg.actor_warmup_steps and at_step % cfg.actor_update_interval == 0
        core.update_sampled(replay, idx, noise, reward_scale=cfg.reward_scale,
                            critic_targets=at_step % cfg.critic_target_update_interval == 0,
                            actor_targets="actor" if actor else None)
        batch = {k: torch.from_numpy(v) for k, v in replay.get(idx).items()}
        batch["reward"] = batch["reward"] * cfg.reward_scale
        ref.update(batch, torch.from_numpy(noise), at_step, cfg)
    assert (core.critic_steps, core.actor_steps) == (40, 15)
    assert_agree(core_actor_params(core), torch_params(ref.actor), "actor")
    assert_agree(core_actor_params(core, True), torch_params(ref.actor_target), "actor tgt")
    for mine, theirs in zip(core_critic_params(core), (ref.critic1, ref.critic2)):
        assert_agree(mine, torch_params(theirs), "critic")
    for mine, theirs in zip(core_critic_params(core, True),
                            (ref.critic1_target, ref.critic2_target)):
        assert_agree(mine, torch_params(theirs), "critic tgt")
    assert np.abs(core_actor_params(core) - core_actor_params(
        TD3Core(seed=7, critic_layer_norm=True))).max() > 1e-3  # they did train
    core.close()


def test_reference_reward_is_the_simulators():
    from nanofly.sim.env import RewardWeights, recompute_rewards
    from nanofly.train.td3_reference import reward

    rng = np.random.default_rng(3)
    priv = (0.1 * rng.standard_normal((500, 28))).astype(np.float32)
    priv[:, [3, 7, 11]] += 1  # the rotation matrix's diagonal: about level
    action = np.clip(0.3 + 0.3 * rng.standard_normal((500, 4)), -1, 1).astype(np.float32)
    terminated = (rng.random(500) < 0.1).astype(np.float32)
    for weights in (RewardWeights(), RewardWeights(position=80.0, linear_velocity=1.0, action=1.0,
                                                   non_negative=True, termination_penalty=-3.0)):
        fast = recompute_rewards(priv, action, terminated, weights, 0.3)
        mine = reward(*map(torch.from_numpy, (priv, action, terminated)), weights, 0.3).numpy()
        np.testing.assert_allclose(mine, fast, rtol=1e-5, atol=1e-5)
        assert len(set(np.round(fast, 3))) > 100  # not a constant
        assert np.all(fast[terminated == 1] == weights.termination_penalty)
    assert (fast == 0).any() and (fast > 0).any()  # clipped at 0, and not everywhere


@pytest.mark.parametrize("n_step_returns", [1, 3])
def test_reference_trainer_follows_the_trainer(n_step_returns):
    """ReferenceTrainer (plain torch, plain arrays) and Trainer (numba core) from the same
    weights and seed make the same random draws and the same updates, with the curriculum and
    with one-step or n-step targets: after 2 400 env steps their actors still agree to 1e-4."""
    from nanofly.train.td3 import TrainConfig, Trainer
    from nanofly.train.td3_reference import ReferenceTrainer

    cfg = TrainConfig(total_env_steps=2400, critic_warmup_steps=800, actor_warmup_steps=1200,
                      curriculum_interval=800, selection_interval=0, update_threads=1,
                      adapt_update_threads=False, n_step_returns=n_step_returns)
    fast = Trainer(cfg)
    ref = ReferenceTrainer(cfg, networks=(fast.core.to_actor(), *fast.core.to_critics()))
    for _ in range(cfg.total_env_steps // cfg.num_envs):
        fast.step()
        ref.step()
    assert ref.weights == fast.weights and fast.weights.position > 30  # 3 curriculum stages
    assert (fast.state.actor_updates, fast.core.critic_steps) == (61, 161)
    assert_close(core_actor_params(fast.core), torch_params(ref.td3.actor), 1e-4, "actor")
    assert np.abs(core_actor_params(fast.core) - torch_params(fast.core.to_actor(target=True))
                  ).max() > 1e-3  # it trained (the target lags the online actor)

