"""The update's hand-written backward passes against autograd on the same draws.

The reference below is SQL written the plain way, as the paper states it: Q on the concatenated
[s, a] through the networks' own nn.Sequential layers, the Q-loss of eq. (11) and the surrogate
of eq. (14) differentiated by autograd. It shares nothing with the update but the parameters,
the random draws and `stein_direction` (checked against finite differences in test_sql_core).
"""
import copy
import math

import numpy as np
import pytest
import torch

from robot_sql.sql import SQUASH_EPSILON, QNetwork, Sampler, SoftQLearning, SQLConfig, soft_value, stein_direction


def plain_q(q: QNetwork, observations, actions):
    """[n_heads, ...]: each head's nn.Sequential on [s, a], broadcast first."""
    shape = torch.broadcast_shapes(observations.shape[:-1], actions.shape[:-1])
    inputs = torch.cat([observations.expand(*shape, -1), actions.expand(*shape, -1)], dim=-1)
    return torch.stack([head(inputs).squeeze(-1) for head in q.heads])


def plain_sampler(sampler: Sampler, observations, noise):
    return torch.tanh(sampler.body(torch.relu(sampler.obs_layer(observations) + sampler.noise_layer(noise))))


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def assert_close_grads(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_network_forwards_match_the_plain_layers():
    torch.manual_seed(0)
    q = QNetwork(obs_dim=3, act_dim=2, hidden_sizes=(16, 8, 4), twin=True)
    sampler = Sampler(obs_dim=3, act_dim=2, hidden_sizes=(16, 8, 4))
    obs = torch.randn(5, 1, 3)
    for actions in (torch.rand(5, 7, 2), torch.rand(7, 2), torch.rand(5, 1, 2)):  # particles, shared, paired
        torch.testing.assert_close(q(obs, actions), plain_q(q, obs, actions))
    noise = torch.randn(5, 6, 2)
    torch.testing.assert_close(sampler(obs, noise), plain_sampler(sampler, obs, noise))
    assert sampler(obs[0, 0], noise[0, 0]).shape == (2,)


@pytest.mark.parametrize("twin_q,hidden_sizes", [(False, (32, 32)), (True, (32, 32)), (False, (16, 24, 8))])
def test_update_gradients_equal_autograd(twin_q, hidden_sizes):
    config = SQLConfig(obs_dim=3, act_dim=2, hidden_sizes=hidden_sizes, batch_size=16, reward_scale=3.0,
                       discount=0.9, twin_q=twin_q, seed=4)
    agent = SoftQLearning(config, device="cpu")
    rng = np.random.default_rng(0)
    batch = {
        "observations": rng.normal(size=(16, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(16, 2)).astype(np.float32),
        "rewards": rng.normal(size=16).astype(np.float32),
        "next_observations": rng.normal(size=(16, 3)).astype(np.float32),
        "terminals": (rng.random(16) < 0.3).astype(np.float32),
    }
    for _ in range(3):  # away from the initial weights, with a Q that has moved
        agent.update(batch)
    reference = copy.deepcopy(agent)  # parameters and the generator's state
    metrics = agent.update(batch)
    obs, actions, rewards, next_obs, terminals = (torch.as_tensor(batch[key]) for key in
                                                  ("observations", "actions", "rewards", "next_observations", "terminals"))

    # Q-loss, eqs. (8), (10), (11), on the same M uniform actions
    uniform = torch.rand((config.value_particles, 2), generator=reference.generator) * 2 - 1
    with torch.no_grad():
        next_q = plain_q(reference.q_target, next_obs.unsqueeze(1), uniform).min(dim=0).values
        next_value = torch.logsumexp(next_q, dim=-1) - math.log(config.value_particles) + 2 * math.log(2.0)
        target = config.reward_scale * rewards + (1 - terminals) * config.discount * next_value
    torch.testing.assert_close(next_value, soft_value(next_q, 2))
    q_loss = 0.5 * (plain_q(reference.q, obs, actions) - target).pow(2).mean(dim=1).sum()
    q_loss.backward()
    assert metrics["q_loss"] == pytest.approx(q_loss.item(), rel=1e-5)
    assert_close_grads(grads(agent.q), grads(reference.q))
    assert metrics["q_grad_norm"] == pytest.approx(torch.nn.utils.get_total_norm(grads(reference.q).values()).item(), rel=1e-4)

    # SVGD step, eqs. (13), (14), against the Q the agent has just stepped to
    reference.q.load_state_dict(agent.q.state_dict())
    fixed_noise = torch.randn((16, config.n_fixed, 2), generator=reference.generator)
    updated_noise = torch.randn((16, config.n_updated, 2), generator=reference.generator)
    obs_1 = obs.unsqueeze(1)
    with torch.no_grad():
        fixed = plain_sampler(reference.sampler, obs_1, fixed_noise)
    fixed.requires_grad_(True)
    updated = plain_sampler(reference.sampler, obs_1, updated_noise)
    log_p = plain_q(reference.q, obs_1, fixed).min(dim=0).values + torch.log(1 - fixed.pow(2) + SQUASH_EPSILON).sum(-1)
    (score,) = torch.autograd.grad(log_p.sum(), fixed)
    stein, _ = stein_direction(fixed.detach(), score, updated.detach())
    (-(stein * updated).sum()).backward()
    assert_close_grads(grads(agent.sampler), grads(reference.sampler))
    assert metrics["sampler_grad_norm"] == pytest.approx(torch.nn.utils.get_total_norm(grads(reference.sampler).values()).item(), rel=1e-4)
    assert metrics["stein_norm"] == pytest.approx(stein.norm(dim=-1).mean().item(), rel=1e-4)
