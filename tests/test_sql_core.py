"""The SQL core: kernel, soft value, SVGD sampler, validation, persistence."""
import copy
import math

import numpy as np
import pytest
import torch

from robot_sql.config import ConfigError
from robot_sql.replay import ReplayBuffer
from robot_sql.sql import Sampler, SoftQLearning, SQLConfig, adam_step, rbf_kernel, soft_value, stein_direction


def test_kernel_value_and_gradient_match_finite_differences():
    torch.manual_seed(0)
    xs = torch.randn(3, 5, 2, dtype=torch.float64)
    ys = torch.randn(3, 4, 2, dtype=torch.float64)
    k, h = rbf_kernel(xs, ys)

    # value: exp(-||x - y||^2 / h), h = median(squared distances) / log(Kx)
    for b in range(3):
        dist_sq = ((xs[b, :, None] - ys[b, None]) ** 2).sum(-1)
        expected_h = max(dist_sq.flatten().sort().values[(dist_sq.numel() - 1) // 2].item() / math.log(5), 1e-3)
        assert h[b].item() == pytest.approx(expected_h, rel=1e-12)
        assert torch.allclose(k[b], torch.exp(-dist_sq / expected_h))

    # The Stein direction (eq. 13) from its definition, with the kernel's gradient with respect to
    # the fixed particle taken by finite differences (h held fixed):
    #   Delta_i = 1/Kf sum_j [ k(x_j, y_i) score_j + d k(x_j, y_i) / d x_j ]
    score = torch.randn(3, 5, 2, dtype=torch.float64)
    stein, stein_h = stein_direction(xs, score, ys)
    assert torch.equal(stein_h, h)
    eps = 1e-6

    def kernel_at(b, x, y):
        return torch.exp(-((x - y) ** 2).sum() / h[b])

    for b in range(3):
        for i in range(4):
            expected = torch.zeros(2, dtype=torch.float64)
            for j in range(5):
                gradient = torch.zeros(2, dtype=torch.float64)
                for d in range(2):
                    step = torch.zeros(2, dtype=torch.float64)
                    step[d] = eps
                    gradient[d] = (kernel_at(b, xs[b, j] + step, ys[b, i]) - kernel_at(b, xs[b, j] - step, ys[b, i])) / (2 * eps)
                expected += kernel_at(b, xs[b, j], ys[b, i]) * score[b, j] + gradient
            assert torch.allclose(stein[b, i], expected / 5, rtol=1e-6, atol=1e-9), (b, i)


def test_kernel_bandwidth_has_a_floor():
    same = torch.zeros(1, 4, 2)
    _, h = rbf_kernel(same, same)
    assert h.item() == pytest.approx(1e-3)


def test_soft_value_matches_exact_log_integral():
    # Q(a) = c . a on [-1, 1]^D has log int exp(Q) da = sum_d log(2 sinh(c_d) / c_d).
    generator = torch.Generator().manual_seed(0)
    c = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    exact = torch.log(2 * torch.sinh(c) / c).sum().item()
    actions = torch.rand((200_000, 3), generator=generator, dtype=torch.float64) * 2 - 1
    estimate = soft_value(actions @ c, act_dim=3).item()
    assert estimate == pytest.approx(exact, abs=0.01)


def test_svgd_sampler_covers_both_modes_of_a_bimodal_energy():
    """Trained against a fixed bimodal Q (equal modes at a = -0.5 and +0.5, std 0.25), the sampler
    must neither collapse onto one mode nor smear into one broad bump around 0."""
    config = SQLConfig(obs_dim=1, act_dim=1, hidden_sizes=(64, 64), kernel_particles=32, policy_lr=1e-3, seed=0)
    agent = SoftQLearning(config, device="cpu")

    class Bimodal:
        """Q(s, a) = log sum_m exp(-(a - mu_m)^2 / (2 sigma^2)); the SVGD step uses its action gradient."""
        modes, sigma = torch.tensor([-0.5, 0.5]), 0.25

        def action_gradient(self, observations, actions):
            offsets = actions - self.modes  # [..., 1] - [2] -> [..., 2]
            weights = torch.softmax(-offsets.square() / (2 * self.sigma**2), dim=-1)
            return (weights * -offsets / self.sigma**2).sum(-1, keepdim=True)

    agent.q = Bimodal()
    obs = torch.zeros(64, 1)
    for _ in range(800):
        agent.update_sampler(obs)
    samples = agent.act(np.zeros((4000, 1), dtype=np.float32))[:, 0]
    left, right = np.mean(samples < 0), np.mean(samples >= 0)
    assert 0.3 <= left <= 0.7 and 0.3 <= right <= 0.7, (left, right)
    # bimodal, not one broad bump: the exact target has 58% within 0.2 of a mode, 4% within 0.1 of 0
    assert np.mean(np.abs(np.abs(samples) - 0.5) < 0.2) > 0.5
    assert np.mean(np.abs(samples) < 0.1) < 0.12


def make_agent(**overrides):
    values = dict(obs_dim=3, act_dim=2, hidden_sizes=(32, 32), batch_size=16, seed=1)
    values.update(overrides)
    return SoftQLearning(SQLConfig(**values), device="cpu")


def random_batch(rng, size=16, obs_dim=3, act_dim=2):
    return {
        "observations": rng.normal(size=(size, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(size, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=size).astype(np.float32),
        "next_observations": rng.normal(size=(size, obs_dim)).astype(np.float32),
        "terminals": np.zeros(size, np.float32),
    }


@pytest.mark.parametrize("twin_q,target_update", [(False, "hard"), (True, "polyak")])
def test_update_returns_metrics_and_changes_parameters(twin_q, target_update):
    agent = make_agent(twin_q=twin_q, target_update=target_update)
    before = [p.clone() for p in agent.sampler.parameters()]
    metrics = agent.update(random_batch(np.random.default_rng(0)))
    assert set(metrics) >= {"q_loss", "q_mean", "soft_value", "kernel_bandwidth", "q_grad_norm", "sampler_grad_norm"}
    assert all(math.isfinite(value) for value in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.sampler.parameters()))


def test_hard_target_update_copies_the_online_q_every_interval_and_holds_still_in_between():
    agent = make_agent(target_update="hard", target_update_interval=3)
    assert all(torch.equal(t, q) for t, q in zip(agent.q_target.parameters(), agent.q.parameters()))  # starts a copy
    assert all(t.data_ptr() != q.data_ptr() for t, q in zip(agent.q_target.parameters(), agent.q.parameters()))
    rng = np.random.default_rng(0)
    copied = [t.clone() for t in agent.q_target.parameters()]
    for update in range(1, 8):
        agent.update(random_batch(rng))
        targets, online = list(agent.q_target.parameters()), list(agent.q.parameters())
        if update % 3 == 0:
            assert all(torch.equal(t, q) for t, q in zip(targets, online)), update
            copied = [t.clone() for t in targets]
        else:  # the last copy, unchanged, while the online Q moves on
            assert all(torch.equal(t, c) for t, c in zip(targets, copied)), update
            assert any(not torch.equal(t, q) for t, q in zip(targets, online)), update


@pytest.mark.parametrize("twin_q", [False, True])
def test_polyak_target_update_moves_the_target_tau_of_the_way_to_the_online_q(twin_q):
    """target <- (1 - tau) target + tau online after every update (tau = 0.25, so a swapped tau shows)."""
    agent = make_agent(target_update="polyak", tau=0.25, twin_q=twin_q)
    rng = np.random.default_rng(0)
    for _ in range(3):  # target and online apart first
        agent.update(random_batch(rng))
    for _ in range(2):
        old_targets = [t.clone() for t in agent.q_target.parameters()]
        agent.update(random_batch(rng))
        for (name, new_target), old_target, new_online in zip(agent.q_target.named_parameters(), old_targets,
                                                               agent.q.parameters()):
            assert not torch.equal(new_target, old_target) and not torch.equal(new_target, new_online), name
            expected = 0.75 * old_target + 0.25 * new_online
            torch.testing.assert_close(new_target, expected, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: b["rewards"].__setitem__(3, np.nan), "NaN"),
        (lambda b: b["observations"].__setitem__((0, 0), np.inf), "NaN or inf"),
        (lambda b: b.__setitem__("actions", np.zeros((16, 3), np.float32)), "shape"),
        (lambda b: b.pop("terminals"), "missing"),
    ],
)
def test_bad_batch_raises_and_changes_nothing(corrupt, message):
    agent = make_agent()
    batch = random_batch(np.random.default_rng(0))
    corrupt(batch)
    state = {k: v.clone() for k, v in agent.q.state_dict().items()}
    sampler_state = {k: v.clone() for k, v in agent.sampler.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        agent.update(batch)
    assert all(torch.equal(state[k], v) for k, v in agent.q.state_dict().items())
    assert all(torch.equal(sampler_state[k], v) for k, v in agent.sampler.state_dict().items())
    assert agent.updates == 0


def test_bad_observations_for_a_sampler_step_raise_and_change_nothing():
    agent = make_agent()
    before = {k: v.clone() for k, v in agent.sampler.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        agent.update_sampler(torch.zeros(8, 4))
    with pytest.raises(ValueError, match="NaN"):
        agent.update_sampler(torch.full((8, 3), float("nan")))
    assert all(torch.equal(before[k], v) for k, v in agent.sampler.state_dict().items())


def test_config_that_makes_no_sense_is_rejected():
    with pytest.raises(ValueError, match="kernel_particles"):
        SQLConfig(obs_dim=2, act_dim=2, kernel_particles=2)
    with pytest.raises(ValueError, match="target_update"):
        SQLConfig(obs_dim=2, act_dim=2, target_update="sometimes")


def test_reconfigure_checks_the_new_settings_and_moves_the_learning_rates():
    agent = make_agent()
    agent.reconfigure({"reward_scale": 5.0, "q_lr": 1e-2, "policy_lr": 2e-2})
    assert agent.config.reward_scale == 5.0
    assert [group["lr"] for group in agent.q_optimizer.param_groups] == [1e-2]
    assert [group["lr"] for group in agent.sampler_optimizer.param_groups] == [2e-2]
    before = copy.deepcopy(agent.config)
    with pytest.raises(ValueError, match="discount"):
        agent.reconfigure({"discount": 1.5})
    with pytest.raises(ValueError, match="hidden_sizes"):
        agent.reconfigure({"hidden_sizes": (7, 7)})
    assert agent.config == before


def test_save_load_round_trip_gives_identical_actions_and_updates(tmp_path):
    agent = make_agent()
    rng = np.random.default_rng(0)
    for _ in range(5):
        agent.update(random_batch(rng))
    agent.save(tmp_path / "agent.pt")
    loaded = SoftQLearning.load(tmp_path / "agent.pt", device="cpu")

    obs = rng.normal(size=(10, 3)).astype(np.float32)
    noise = rng.normal(size=(10, 2)).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs, noise), loaded.act(obs, noise))
    # optimiser state, counters and RNG come back too: the next update is bit-identical
    batch = random_batch(rng)
    assert agent.update(batch) == loaded.update(batch)


def test_same_seed_same_batches_give_identical_agents():
    first, second = make_agent(twin_q=True), make_agent(twin_q=True)
    for agent in (first, second):
        rng = np.random.default_rng(3)
        for _ in range(5):
            agent.update(random_batch(rng))
    for a, b in zip([*first.q.parameters(), *first.sampler.parameters()], [*second.q.parameters(), *second.sampler.parameters()]):
        assert torch.equal(a, b)


def test_adam_step_is_the_optimizers_own_step():
    """The update's adam_step (torch's functional Adam on the optimizer's state) against Adam.step:
    parameters and optimizer state bit-identical after every step, and the state_dict layout the same."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(network)
    ours = torch.optim.Adam(network.parameters(), lr=1e-2, fused=True)
    theirs = torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    for _ in range(6):
        inputs = torch.randn(4, 5)
        for module in (network, twin):
            module.zero_grad()
            module(inputs).square().sum().backward()
        adam_step(ours)
        theirs.step()
        for mine, reference in zip(network.parameters(), twin.parameters()):
            assert torch.equal(mine, reference)
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == reference["param_groups"]
    for index, state in reference["state"].items():
        assert mine["state"][index].keys() == state.keys()
        assert all(torch.equal(mine["state"][index][key], value) for key, value in state.items())


def test_actor_side_sampler_loads_policy_weights():
    agent = make_agent()
    sampler = Sampler(3, 2, (32, 32))
    sampler.load_weights(agent.policy_weights())
    obs, noise = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    np.testing.assert_array_equal(sampler.act(obs, noise), agent.act(obs, noise))
    bad = agent.policy_weights()
    bad["obs_layer.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sampler.load_weights(bad)
    with pytest.raises(ValueError, match="shape"):
        sampler.act(np.ones(5, np.float32))


def test_replay_buffer_wraps_and_validates():
    buffer = ReplayBuffer(obs_dim=3, act_dim=2, capacity=20)
    rng = np.random.default_rng(0)
    for _ in range(3):
        buffer.add_batch(random_batch(rng, size=8))
    assert len(buffer) == 20
    contents = buffer.contents()
    assert contents["observations"].shape == (20, 3)
    bad = random_batch(rng, size=4)
    bad["actions"][1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        buffer.add_batch(bad)
    # one transition at a time (the single-process training loop) is checked the same way
    with pytest.raises(ValueError, match=r"\['observations'\] contains NaN"):
        buffer.add(np.array([np.nan, 0.0, 0.0]), np.zeros(2), 0.0, np.zeros(3), False)
    with pytest.raises(ValueError, match=r"\['observations'\] has shape"):
        buffer.add(np.zeros(4), np.zeros(2), 0.0, np.zeros(3), False)
    assert len(buffer) == 20


@pytest.mark.parametrize("twin", [False, True])
def test_composed_q_network_is_the_sum_or_mean_of_its_constituents(twin):
    from robot_sql.compose import side_by_side
    from robot_sql.sql import QNetwork

    torch.manual_seed(0)
    constituents = [QNetwork(5, 3, (16, 8), twin=twin) for _ in range(3)]
    observations, actions = torch.randn(40, 5), torch.randn(40, 3)
    total = sum(q(observations, actions) for q in constituents)  # per head
    assert torch.allclose(side_by_side(constituents)(observations, actions), total, atol=1e-5)
    assert torch.allclose(side_by_side(constituents, mean=True)(observations, actions), total / 3, atol=1e-5)
    if not twin:  # what the composed sampler follows: the sum of the constituents' action gradients
        expected = sum(q.action_gradient(observations, actions) for q in constituents)
        assert torch.allclose(side_by_side(constituents).action_gradient(observations, actions), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="depth"):
        side_by_side([constituents[0], QNetwork(5, 3, (16,), twin=twin)])


@pytest.mark.parametrize("env, args, expected", [("corner", [], 3000), ("sawyer-stack-avoid", [], 15000),
                                                 ("sawyer-stack-avoid", ["--updates", "7"], 7)])
def test_compose_trains_the_sampler_for_the_combined_tasks_preset_unless_told(monkeypatch, tmp_path, env, args, expected):
    from click.testing import CliRunner

    from robot_sql import compose

    calls = []
    monkeypatch.setattr(compose, "compose", lambda *a, **kw: calls.append(a) or {"success_rate": 0.0, "mean_return": 0.0})
    checkpoint = tmp_path / "agent.pt"
    checkpoint.write_bytes(b"")
    result = CliRunner().invoke(compose.compose_command, [str(checkpoint), str(checkpoint), "--env", env, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    assert calls[0][4] == expected  # compose(checkpoints, env_id, out, mean, updates, ...)
