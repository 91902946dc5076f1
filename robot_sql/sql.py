"""Soft Q-learning (SQL): Haarnoja, Tang, Abbeel, Levine, "Reinforcement Learning with Deep
Energy-Based Policies", ICML 2017 (arXiv 1702.08165).

Read top to bottom beside the paper. Equation numbers are the paper's; where the authors'
reference code (haarnoja/softqlearning, algorithms/sql.py and misc/kernel.py) differs from
the paper, we follow the code, as it is what produced the published results:
  * alpha never appears: rewards are multiplied by `reward_scale` (= 1 / alpha);
  * the soft value uses M actions drawn uniformly from [-1, 1]^D, shared by the batch;
  * the kernel bandwidth is median(squared distances) / log(number of fixed particles).

Pure PyTorch, no I/O beyond `save`/`load`. Shapes in comments: B batch, K sampler
particles (Kf fixed, Ku updated), M value particles, D action dim, S observation dim.
"""
from __future__ import annotations

import copy
import io
import itertools
import math
import pickle
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.adam import adam as functional_adam

from robot_sql.replay import BATCH_KEYS
from robot_sql.rundir import atomic_write_bytes

SQUASH_EPSILON = 1e-6  # inside log(1 - a^2 + eps), as in the reference code
KERNEL_MIN_BANDWIDTH = 1e-3


@dataclass
class SQLConfig:
    obs_dim: int
    act_dim: int
    hidden_sizes: tuple[int, ...] = (128, 128)
    # the Q-network's layers when they differ from the sampler's (a composed agent's Q-network is its
    # constituents' side by side, robot_sql/compose.py); None: hidden_sizes
    q_hidden_sizes: tuple[int, ...] | None = None
    kernel_particles: int = 16  # K: actions drawn per state for the SVGD update
    kernel_update_ratio: float = 0.5  # fraction of the K particles that are "updated" (the rest are "fixed")
    value_particles: int = 16  # M: uniform actions for the importance-sampled soft value
    reward_scale: float = 1.0  # = 1 / alpha
    discount: float = 0.99
    q_lr: float = 3e-4
    policy_lr: float = 3e-4
    batch_size: int = 128
    target_update: str = "hard"  # "hard": copy every target_update_interval updates; "polyak": tau every update
    target_update_interval: int = 1000
    tau: float = 0.005
    twin_q: bool = False  # min of two Q-functions in the target, as in softlearning
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(size) for size in self.hidden_sizes)
        if self.q_hidden_sizes is not None:
            self.q_hidden_sizes = tuple(int(size) for size in self.q_hidden_sizes)
        problems = []
        if self.obs_dim < 1 or self.act_dim < 1:
            problems.append(f"obs_dim and act_dim must be >= 1 (got {self.obs_dim}, {self.act_dim})")
        for name in ("hidden_sizes", "q_hidden_sizes"):
            sizes = getattr(self, name)
            if sizes is not None and (not sizes or min(sizes) < 1):
                problems.append(f"{name} must be non-empty and positive (got {sizes})")
        if not 0.0 < self.kernel_update_ratio < 1.0:
            problems.append(f"kernel_update_ratio must be in (0, 1) (got {self.kernel_update_ratio})")
        n_updated = int(self.kernel_particles * self.kernel_update_ratio)
        if n_updated < 1 or self.kernel_particles - n_updated < 2:
            problems.append(
                f"kernel_particles={self.kernel_particles} with ratio {self.kernel_update_ratio} must leave >= 1 "
                "updated and >= 2 fixed particles"
            )
        if self.value_particles < 1:
            problems.append(f"value_particles must be >= 1 (got {self.value_particles})")
        if not self.reward_scale > 0:
            problems.append(f"reward_scale must be > 0 (got {self.reward_scale})")
        if not 0.0 <= self.discount <= 1.0:
            problems.append(f"discount must be in [0, 1] (got {self.discount})")
        if self.q_lr <= 0 or self.policy_lr <= 0:
            problems.append("learning rates must be > 0")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.target_update not in ("hard", "polyak"):
            problems.append(f"target_update must be 'hard' or 'polyak' (got {self.target_update!r})")
        if self.target_update_interval < 1:
            problems.append(f"target_update_interval must be >= 1 (got {self.target_update_interval})")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau must be in (0, 1] (got {self.tau})")
        if problems:
            raise ValueError("invalid SQLConfig: " + "; ".join(problems))

    @property
    def n_fixed(self) -> int:
        return self.kernel_particles - self.n_updated

    @property
    def n_updated(self) -> int:
        return int(self.kernel_particles * self.kernel_update_ratio)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last): the parameter layout of both networks."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def linears(sequential: nn.Sequential, start: int) -> list[nn.Linear]:
    """The Linear layers of an `mlp` from index `start` on (every other module; not a sliced Sequential)."""
    return list(itertools.islice(sequential, start, None, 2))


# ---- the networks, with their backward passes written out ----------------------------------------
# Both networks are MLPs whose first layer takes two inputs, W_s s + W_x x + b, with the state s
# broadcast against x (M value actions, K sampler particles): a state is multiplied once, not once
# per action, as in the reference's feedforward_net. An update differentiates them in three ways
# (Q-loss to the Q weights, Q to its action input for the SVGD score, the Stein direction to the
# sampler weights), each by the chain rule below instead of autograd: at the reference sizes on
# one CPU thread autograd's graph bookkeeping was most of the difference between 8.4 and 6.6 ms
# per update (docs/benchmarks.md; tests/test_sql_gradients.py checks every gradient against it).

@dataclass
class Tape:
    """What a forward pass keeps for its backward pass."""
    observations: Tensor  # [..., S]
    inputs: Tensor  # [..., X], the second input (actions or noise)
    shape: torch.Size  # the broadcast leading shape of both
    hidden: list[Tensor]  # each hidden layer's ReLU output, as rows [N, H]


def two_input_forward(observations: Tensor, obs_weight: Tensor, bias: Tensor, inputs: Tensor, input_weight: Tensor,
                      linears: list[nn.Linear]) -> tuple[Tensor, Tape]:
    """ReLU MLP on W_s s + W_x x + b: observations [..., S] and inputs [..., X], broadcast -> output [..., out]."""
    width = obs_weight.shape[0]
    # as 2-D products: F.linear on [B, 1, S] with a column block of W would expand W to [B, S, H]
    obs_term = torch.addmm(bias, observations.reshape(-1, observations.shape[-1]), obs_weight.t())
    input_term = inputs.reshape(-1, inputs.shape[-1]).mm(input_weight.t())
    obs_term = obs_term.view(*observations.shape[:-1], width)
    input_term = input_term.view(*inputs.shape[:-1], width)
    # numpy's broadcast_shapes: torch's imports torch.fx on its first call (0.3-0.5 s, a stalled actor step)
    shape = torch.Size(np.broadcast_shapes(observations.shape[:-1], inputs.shape[:-1]))
    if inputs.shape[:-1] == shape:
        first = input_term.add_(obs_term)  # into the particles' own product: no new [B, K, H] buffer (~4 % at b128)
    else:  # M actions shared by the batch: the sum is larger than either term
        first = obs_term + input_term
    hidden = [torch.relu_(first.view(-1, width))]  # rows; in place: no new buffer per layer
    for linear in linears[:-1]:
        hidden.append(torch.relu_(torch.addmm(linear.bias, hidden[-1], linear.weight.t())))
    out = torch.addmm(linears[-1].bias, hidden[-1], linears[-1].weight.t())
    return out.view(*shape, -1), Tape(observations, inputs, shape, hidden)


def two_input_backward(tape: Tape, grad_out: Tensor, input_weight: Tensor, linears: list[nn.Linear],
                       weight_grads: bool, input_grad: bool) -> tuple[tuple[Tensor, Tensor, Tensor] | None, Tensor | None]:
    """Back-propagate grad_out [..., out] (d loss / d output) through `two_input_forward`.

    With weight_grads, sets .grad of the `linears` and returns the first layer's gradients
    (d W_s, d W_x, d b), which the caller stores (the two networks keep W_s and W_x differently);
    with input_grad, also returns d loss / d inputs [..., X].
    """
    grad = grad_out.reshape(-1, grad_out.shape[-1])
    for linear, layer_input in zip(reversed(linears), reversed(tape.hidden)):
        if weight_grads:
            linear.weight.grad = grad.t().mm(layer_input)
            linear.bias.grad = grad.sum(0)
        grad = torch.ops.aten.threshold_backward(grad.mm(linear.weight), layer_input, 0)  # ReLU: zero where it was off
    width = grad.shape[-1]
    grad = grad.view(*tape.shape, width)  # d loss / d first-layer pre-activation
    # A broadcast input gets the sum of the gradients of the rows it was broadcast to.
    grad_x = grad.sum_to_size(*tape.inputs.shape[:-1], width).reshape(-1, width)
    first_grads = None
    if weight_grads:
        grad_s = grad.sum_to_size(*tape.observations.shape[:-1], width).reshape(-1, width)
        first_grads = (grad_s.t().mm(tape.observations.reshape(-1, tape.observations.shape[-1])),
                       grad_x.t().mm(tape.inputs.reshape(-1, tape.inputs.shape[-1])),
                       grad_s.sum(0))
    input_gradient = grad_x.mm(input_weight).view(tape.inputs.shape) if input_grad else None
    return first_grads, input_gradient


class QNetwork(nn.Module):
    """Q(s, a) -> scalar, an MLP on [s, a]; with twin=True two independent heads, combined by min in the target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], twin: bool = False):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden_sizes = obs_dim, act_dim, tuple(hidden_sizes)
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.heads = nn.ModuleList([mlp(sizes) for _ in range(2 if twin else 1)])

    def forward(self, observations: Tensor, actions: Tensor) -> Tensor:
        """observations [..., S], actions [..., D], broadcast against each other -> [n_heads, ...]"""
        return torch.stack([values for values, _ in self.forward_with_tapes(observations, actions)])

    def forward_with_tapes(self, observations: Tensor, actions: Tensor) -> list[tuple[Tensor, Tape]]:
        """Per head: Q values [...] and the tape for `backward`. The first layer W [s, a] + b is
        W_s s + W_a a + b with W_s, W_a the column blocks of W (the reference's parameter layout)."""
        results = []
        for head in self.heads:
            obs_weight, action_weight = self._first_layer_blocks(head)
            values, tape = two_input_forward(observations, obs_weight, head[0].bias, actions, action_weight, linears(head, start=2))
            results.append((values.squeeze(-1), tape))
        return results

    def _first_layer_blocks(self, head: nn.Sequential) -> tuple[Tensor, Tensor]:
        """W_s and W_a, the column blocks of the first layer's W (views: its gradient is set whole)."""
        weight = head[0].weight
        return weight[:, : self.obs_dim], weight[:, self.obs_dim :]

    def backward(self, tapes: list[Tape], grad_values: list[Tensor] | Tensor, weight_grads: bool, action_grad: bool) -> Tensor | None:
        """grad_values[i] [...] = d loss / d Q_i: sets the weights' .grad (weight_grads) and returns
        d loss / d actions [..., D] summed over the heads (action_grad)."""
        action_gradient = None
        for head, tape, grad in zip(self.heads, tapes, grad_values):
            _, action_weight = self._first_layer_blocks(head)
            first_grads, head_gradient = two_input_backward(tape, grad.unsqueeze(-1), action_weight, linears(head, start=2),
                                                            weight_grads, action_grad)
            if weight_grads:
                grad_s, grad_a, grad_b = first_grads
                head[0].weight.grad, head[0].bias.grad = torch.cat([grad_s, grad_a], dim=1), grad_b
            if action_grad:
                action_gradient = head_gradient if action_gradient is None else action_gradient + head_gradient
        return action_gradient

    def action_gradient(self, observations: Tensor, actions: Tensor) -> Tensor:
        """d min_i Q_i(s, a) / d a [..., D] (the min over twin heads, as the target uses)."""
        results = self.forward_with_tapes(observations, actions)
        if len(results) == 1:
            grads = [torch.ones_like(results[0][0])]
        else:  # the min passes the gradient to the head that attains it
            lowest = torch.stack([values for values, _ in results]).argmin(dim=0)
            grads = [(lowest == i).to(actions.dtype) for i in range(len(results))]
        return self.backward([tape for _, tape in results], grads, weight_grads=False, action_grad=True)


class Sampler(nn.Module):
    """The amortised SVGD policy a = tanh(f(s, xi)), xi ~ N(0, I_D).

    As in the reference StochasticNNPolicy: observation and noise each get their own first-layer
    weights (summed, one bias), ReLU hidden layers, a linear output squashed by tanh.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...] = (128, 128)):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden_sizes = obs_dim, act_dim, tuple(hidden_sizes)
        self.obs_layer = nn.Linear(obs_dim, hidden_sizes[0])
        self.noise_layer = nn.Linear(act_dim, hidden_sizes[0], bias=False)
        self.body = mlp([*hidden_sizes, act_dim])

    def forward(self, observations: Tensor, noise: Tensor) -> Tensor:
        """observations [..., S], noise [..., D] -> actions [..., D] in (-1, 1)"""
        return self.forward_with_tape(observations, noise)[0]

    def forward_with_tape(self, observations: Tensor, noise: Tensor) -> tuple[Tensor, Tape]:
        out, tape = two_input_forward(observations, self.obs_layer.weight, self.obs_layer.bias,
                                      noise, self.noise_layer.weight, linears(self.body, start=0))
        return torch.tanh(out), tape

    def backward(self, tape: Tape, actions: Tensor, grad_actions: Tensor) -> None:
        """Set the weights' .grad from d loss / d actions [..., D] at the actions of `forward_with_tape`."""
        grad_out = grad_actions * (1.0 - actions.square())  # tanh' = 1 - tanh^2
        (grad_s, grad_xi, grad_b), _ = two_input_backward(tape, grad_out, self.noise_layer.weight, linears(self.body, start=0),
                                                         weight_grads=True, input_grad=False)
        self.obs_layer.weight.grad, self.obs_layer.bias.grad, self.noise_layer.weight.grad = grad_s, grad_b, grad_xi

    @torch.no_grad()
    def act(self, observations: np.ndarray, noise: np.ndarray | None = None, generator: torch.Generator | None = None) -> np.ndarray:
        """One action per observation ([S] -> [D], [B, S] -> [B, D]); fresh noise unless given."""
        parameter = self.obs_layer.weight
        obs = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=parameter.device)
        if obs.shape[-1] != self.obs_dim or obs.dim() not in (1, 2):
            raise ValueError(f"observation must have shape [{self.obs_dim}] or [B, {self.obs_dim}], got {tuple(obs.shape)}")
        if not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")
        if noise is None:
            xi = torch.randn((*obs.shape[:-1], self.act_dim), generator=generator, device=parameter.device)
        else:
            xi = torch.as_tensor(np.asarray(noise, dtype=np.float32), device=parameter.device)
            if xi.shape != (*obs.shape[:-1], self.act_dim):
                raise ValueError(f"noise must have shape {(*obs.shape[:-1], self.act_dim)}, got {tuple(xi.shape)}")
        return self(obs, xi).cpu().numpy()

    def weights(self) -> dict[str, np.ndarray]:
        """The parameters as float32 numpy arrays: what the learner sends to actors."""
        return {name: tensor.detach().cpu().numpy().astype(np.float32) for name, tensor in self.state_dict().items()}

    def load_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load weights from `weights()`; names, shapes and finiteness are checked first."""
        own = self.state_dict()
        if set(weights) != set(own):
            raise ValueError(f"weights have names {sorted(weights)}, expected {sorted(own)}")
        for name, value in weights.items():
            if tuple(np.shape(value)) != tuple(own[name].shape):
                raise ValueError(f"weight {name} has shape {np.shape(value)}, expected {tuple(own[name].shape)}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"weight {name} contains NaN or inf")
        self.load_state_dict({name: torch.tensor(np.asarray(value)) for name, value in weights.items()})  # a copy: wire arrays are read-only


def rbf_kernel(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive isotropic Gaussian kernel of the reference code (misc/kernel.py).

    xs [..., Kx, D], ys [..., Ky, D] ->
      k  [..., Kx, Ky]   k(x, y) = exp(-||x - y||^2 / h)
      h  [...]           median of the Kx*Ky squared distances / log(Kx), at least 1e-3,
                         treated as a constant (no gradient through h).
    Its gradient d k(x, y) / dx = -2 (x - y) / h * k(x, y) is used in `stein_direction`.
    """
    # Distances from the differences (not the |x|^2 + |y|^2 - 2xy expansion, which cancels badly
    # for close particles), without materialising the [..., Kx, Ky, D] differences.
    dist_sq = torch.cdist(xs, ys, compute_mode="donot_use_mm_for_euclid_dist").square()  # [..., Kx, Ky]
    # torch.median returns the lower middle value, as the reference's top_k(n // 2 + 1) does.
    median = dist_sq.detach().flatten(-2).median(dim=-1).values  # [...]
    h = torch.clamp(median / math.log(xs.shape[-2]), min=KERNEL_MIN_BANDWIDTH)
    return torch.exp(-dist_sq / h[..., None, None]), h


def stein_direction(fixed: Tensor, score: Tensor, updated: Tensor) -> tuple[Tensor, Tensor]:
    """Stein variational direction at the updated particles, eq. (13):

        Delta_i = 1/Kf sum_j [ k(a~_j, a_i) grad log p(a~_j) + grad_{a~_j} k(a~_j, a_i) ]

    fixed [B, Kf, D] (the a~_j), score [B, Kf, D] (grad log p at them), updated [B, Ku, D] (the a_i)
    -> Delta [B, Ku, D], bandwidth h [B]. With grad_{a~_j} k = -2/h (a~_j - a_i) k_ji both sums
    are products with the kernel matrix, so the [B, Kf, Ku, D] kernel gradient is never formed:
        Delta_i = 1/Kf [ (K^T score)_i - 2/h ((K^T a~)_i - a_i sum_j k_ji) ]
    """
    k, h = rbf_kernel(fixed, updated)  # [B, Kf, Ku], [B]
    k_t = k.transpose(-1, -2)  # [B, Ku, Kf]
    driving = torch.bmm(k_t, score)  # [B, Ku, D]: towards high density
    repulsive = -2.0 / h[:, None, None] * (torch.bmm(k_t, fixed) - updated * k_t.sum(-1, keepdim=True))  # apart
    return (driving + repulsive) / fixed.shape[1], h


def soft_value(q_values: Tensor, act_dim: int) -> Tensor:
    """Importance-sampled soft value with a uniform proposal on [-1, 1]^D, eq. (10) with alpha = 1:

        V(s) = log E_{a ~ U}[exp(Q(s, a)) / q(a)] ~= logsumexp_j Q(s, a_j) - log M + D log 2

    q_values [..., M] -> [...]  (D log 2 is -log of the uniform density 2^-D).
    """
    n_particles = q_values.shape[-1]
    return torch.logsumexp(q_values, dim=-1) - math.log(n_particles) + act_dim * math.log(2.0)


class SoftQLearning:
    """Soft Q-function, target network and amortised SVGD sampler, with their optimisers."""

    def __init__(self, config: SQLConfig, device: str | torch.device = "auto"):
        self.config = config
        self.device = resolve_device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        torch.manual_seed(config.seed)  # network initialisation
        self.q = QNetwork(config.obs_dim, config.act_dim, config.q_hidden_sizes or config.hidden_sizes,
                          config.twin_q).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)  # initial copy, as in the reference
        self.sampler = Sampler(config.obs_dim, config.act_dim, config.hidden_sizes).to(self.device)
        # fused: one kernel for all parameters instead of a dozen small ops per parameter
        self.q_optimizer = torch.optim.Adam(self.q.parameters(), lr=config.q_lr, fused=True)
        self.sampler_optimizer = torch.optim.Adam(self.sampler.parameters(), lr=config.policy_lr, fused=True)
        self.updates = 0

    # fixed by the networks a checkpoint holds
    ARCHITECTURE = ("obs_dim", "act_dim", "hidden_sizes", "q_hidden_sizes", "twin_q")

    def reconfigure(self, changes: Mapping[str, object]) -> None:
        """Change training settings of an existing agent (fine-tuning), through SQLConfig's checks."""
        fixed = sorted(key for key in changes if key in self.ARCHITECTURE and changes[key] != getattr(self.config, key))
        if fixed:
            raise ValueError(f"{fixed} are fixed by the agent's networks and cannot change")
        self.config = SQLConfig(**{**asdict(self.config), **changes})
        for optimizer, lr in ((self.q_optimizer, self.config.q_lr), (self.sampler_optimizer, self.config.policy_lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr

    # ---- acting ---------------------------------------------------------------------------
    def act(self, observations: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Sample a ~ pi(.|s) (the same stochastic policy is used for exploration and evaluation)."""
        return self.sampler.act(observations, noise, generator=self.generator)

    def policy_weights(self) -> dict[str, np.ndarray]:
        return self.sampler.weights()

    # ---- learning -------------------------------------------------------------------------
    def update(self, batch: Mapping[str, np.ndarray | Tensor]) -> dict[str, float]:
        """One gradient step on the soft Q-function and one SVGD step on the sampler.

        The batch is validated first: wrong keys, shapes or non-finite values raise ValueError
        and leave every parameter unchanged. Finite values can still overflow (3e38 rewards): a
        network whose loss, gradient or other metric is then NaN or inf does not step, and the
        update is skipped: `updates` does not count it, and the metrics returned hold the NaN or
        inf that say so. A bad Q step stops both steps; when only the sampler's is bad, the Q step
        stands (the sampler's gradient needs the Q-function after its step).
        """
        obs, actions, rewards, next_obs, terminals = self._check_batch(batch)
        metrics = self._update_q(obs, actions, rewards, next_obs, terminals)
        metrics.update(self._update_sampler(obs, metrics))
        metrics = _floats(metrics)  # the update's one wait for the device
        if all(map(math.isfinite, metrics.values())):
            self.updates += 1
            self._update_target()
        return metrics

    @torch.no_grad()  # gradients by the networks' own backward passes
    def _update_q(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, terminals: Tensor) -> dict[str, Tensor]:
        c = self.config
        # One set of M uniform actions shared by the whole batch, as in the reference code.
        uniform_actions = torch.rand((c.value_particles, c.act_dim), generator=self.generator, device=self.device) * 2 - 1
        target_q = self.q_target(next_obs.unsqueeze(1), uniform_actions).min(dim=0).values  # [B, 1, S] x [M, D] -> [B, M]
        next_value = soft_value(target_q, c.act_dim)  # [B], eq. (10)
        # Soft Bellman backup (eq. 8), y treated as a constant.
        target = c.reward_scale * rewards + (1.0 - terminals) * c.discount * next_value  # [B]
        heads = self.q.forward_with_tapes(obs, actions)
        q_values = torch.stack([values for values, _ in heads])  # [heads, B]
        errors = q_values - target
        q_loss = 0.5 * errors.square().mean(dim=1).sum()  # eq. (11), summed over twin heads
        # d q_loss / d Q_i(s_b, a_b) = (Q_i - y) / B, one row per head
        self.q.backward([tape for _, tape in heads], errors / len(target), weight_grads=True, action_grad=False)
        metrics = {
            "q_loss": q_loss,
            "q_mean": q_values.mean(),
            "soft_value": next_value.mean(),
            "q_grad_norm": _grad_norm(self.q_optimizer),
        }
        adam_step(self.q_optimizer, _nonfinite(metrics))
        return metrics

    def update_sampler(self, obs: Tensor) -> dict[str, float]:
        """One SVGD step of the sampler towards exp(Q(s, .)) at the observations obs [B, S]
        (wrong shapes or non-finite values raise ValueError and change nothing)."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.dim() != 2 or obs.shape[0] < 1 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(f"observations must have shape [B, {self.config.obs_dim}], got {tuple(obs.shape)}")
        if not torch.isfinite(obs).all():
            raise ValueError("observations contain NaN or inf")
        return _floats(self._update_sampler(obs))

    @torch.no_grad()
    def _update_sampler(self, obs: Tensor, q_metrics: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The SVGD step; skipped when its metrics or those of this update's Q step (`q_metrics`) are not finite."""
        c = self.config
        obs_1 = obs.unsqueeze(1)  # [B, 1, S]: broadcast against the K particles of each state
        fixed_noise, updated_noise = (torch.randn((obs.shape[0], particles, c.act_dim), generator=self.generator, device=self.device)
                                      for particles in (c.n_fixed, c.n_updated))
        # The fixed particles get no gradient through the sampler: only the Ku updated ones are taped.
        fixed = self.sampler(obs_1, fixed_noise)  # [B, Kf, D], the a~_j
        updated, tape = self.sampler.forward_with_tape(obs_1, updated_noise)  # [B, Ku, D], the a_i

        # Score of the target density exp(Q) on the squashed action box, at the fixed particles:
        # grad_a [min_i Q_i(s, a) + sum_d log(1 - a_d^2 + eps)], the tanh log-term of the reference code.
        score = self.q.action_gradient(obs_1, fixed) - 2.0 * fixed / (1.0 - fixed.square() + SQUASH_EPSILON)  # [B, Kf, D]

        # Stein variational direction, eq. (13).
        stein, bandwidth = stein_direction(fixed, score, updated)  # [B, Ku, D], [B]

        # Eq. (14): move the sampler's outputs along Delta, i.e. the gradient of the surrogate
        # -sum_i Delta_i . f(s, xi_i) (Delta held constant), back-propagated through f.
        self.sampler.backward(tape, updated, -stein)
        metrics = {
            "kernel_bandwidth": bandwidth.mean(),
            "stein_norm": stein.norm(dim=-1).mean(),
            "sampler_grad_norm": _grad_norm(self.sampler_optimizer),
        }
        adam_step(self.sampler_optimizer, _nonfinite({**(q_metrics or {}), **metrics}))
        return metrics

    @torch.no_grad()
    def _update_target(self) -> None:
        c = self.config
        if c.target_update == "polyak":
            for target, online in zip(self.q_target.parameters(), self.q.parameters()):
                target.lerp_(online, c.tau)
        elif self.updates % c.target_update_interval == 0:
            self.q_target.load_state_dict(self.q.state_dict())

    def _check_batch(self, batch: Mapping[str, np.ndarray | Tensor]) -> tuple[Tensor, ...]:
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}; expected keys {list(BATCH_KEYS)}")
        c = self.config
        size = len(batch["rewards"])
        expected = {
            "observations": (size, c.obs_dim),
            "actions": (size, c.act_dim),
            "rewards": (size,),
            "next_observations": (size, c.obs_dim),
            "terminals": (size,),
        }
        tensors = []
        for key in BATCH_KEYS:
            value = torch.as_tensor(batch[key], dtype=torch.float32, device=self.device)
            if tuple(value.shape) != expected[key]:
                raise ValueError(f"batch[{key!r}] has shape {tuple(value.shape)}, expected {expected[key]}")
            tensors.append(value)
        if size < 1:
            raise ValueError("batch is empty")
        # A float64 sum is finite exactly when every float32 entry is (it cannot overflow), and
        # five sums and one copy to the host cost less than five element-wise isfinite tests.
        finite = torch.stack([value.sum(dtype=torch.float64) for value in tensors]).isfinite().tolist()
        if not all(finite):
            raise ValueError(f"batch[{BATCH_KEYS[finite.index(False)]!r}] contains NaN or inf")
        return tuple(tensors)

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "q": self.q.state_dict(),
            "q_target": self.q_target.state_dict(),
            "sampler": self.sampler.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "sampler_optimizer": self.sampler_optimizer.state_dict(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
        }

    def load_state_dict(self, state: dict) -> None:
        if SQLConfig(**state["config"]) != self.config:
            raise ValueError("checkpoint was made with a different SQLConfig; build the agent with from_state_dict")
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.sampler.load_state_dict(state["sampler"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.sampler_optimizer.load_state_dict(state["sampler_optimizer"])
        self.updates = int(state["updates"])
        if state["generator_device"] == self.device.type:
            self.generator.set_state(state["generator"])
        else:  # CPU and CUDA generator states differ in format: continue with a derived seed
            self.generator.manual_seed(self.config.seed + self.updates)

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "auto") -> "SoftQLearning":
        agent = cls(SQLConfig(**state["config"]), device=device)
        agent.load_state_dict(state)
        return agent

    def save(self, path: str | Path) -> None:
        """Atomic save (write then rename); load with `SoftQLearning.load`."""
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> "SoftQLearning":
        return cls.from_state_dict(load_agent_state(path), device=device)


def save_policy(sampler: Sampler, path: str | Path) -> None:
    """A policy-only checkpoint (what `load_policy` and the actors need)."""
    buffer = io.BytesIO()
    config = {"obs_dim": sampler.obs_dim, "act_dim": sampler.act_dim, "hidden_sizes": list(sampler.hidden_sizes)}
    torch.save({"config": config, "sampler": sampler.state_dict()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_policy(path: str | Path) -> Sampler:
    """The sampler of an agent checkpoint (a learner's included) or of a policy-only checkpoint, on CPU."""
    state = load_agent_state(path)
    if "sampler" not in state or "config" not in state:
        raise ValueError(f"{path} is not an agent or policy checkpoint (no 'sampler'/'config')")
    config = state["config"]
    sampler = Sampler(config["obs_dim"], config["act_dim"], tuple(config["hidden_sizes"]))
    sampler.load_state_dict(state["sampler"])
    return sampler


def load_agent_state(path: str | Path) -> dict:
    """The agent in a checkpoint: train's and compose's agent.pt are one; the learner's learner.pt (and
    its history copies) keep it under "agent", beside the learner's own state."""
    state = load_checkpoint(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not an agent, policy or learner checkpoint (it holds a {type(state).__name__})")
    agent = state.get("agent")
    return agent if isinstance(agent, dict) else state


# what reading a checkpoint that is damaged, missing or not one raises (load_checkpoint, then its keys)
CHECKPOINT_READ_ERRORS = (OSError, KeyError, TypeError, ValueError, RuntimeError, pickle.UnpicklingError)


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True: a checkpoint can never execute code. The zip archive's CRCs
    are checked first (ValueError): torch does not check them, and a flipped byte in a tensor would
    load as a wrong weight."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ValueError(f"{path} is not a checkpoint or is damaged ({error})") from error
    if damaged is not None:
        raise ValueError(f"{path} is damaged: {damaged} fails its CRC check")
    return torch.load(path, map_location="cpu", weights_only=True)


def adam_step(optimizer: torch.optim.Adam, found_inf: Tensor | None = None) -> None:
    """optimizer.step(), as torch's functional Adam (torch.optim.adam.adam, the call that
    Adam.step makes) on the optimizer's own state and settings: the same arithmetic, without the
    bookkeeping around it (step hooks, a profiler record, the per-parameter state set-up), about
    100 us per step inside an update on CPU, ~4 % of an update at batch 128. The first
    step is Adam.step itself, which creates the state (one group, every parameter with a gradient).

    found_inf (a 0-d float tensor, 1.0 or 0.0) is fused Adam's own skip: at 1.0 nothing changes,
    parameters, moments and step count alike, and the host never waits to find out."""
    if not optimizer.state:
        optimizer.found_inf = found_inf  # where Adam.step looks for it (torch's GradScaler sets it so)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return
    (group,) = optimizer.param_groups
    params = group["params"]
    states = [optimizer.state[p] for p in params]
    beta1, beta2 = group["betas"]
    functional_adam(params, [p.grad for p in params], [state["exp_avg"] for state in states],
                    [state["exp_avg_sq"] for state in states],
                    [state["max_exp_avg_sq"] for state in states] if group["amsgrad"] else [],
                    [state["step"] for state in states], amsgrad=group["amsgrad"], has_complex=False,
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"], foreach=group["foreach"], capturable=group["capturable"],
                    differentiable=group["differentiable"], fused=group["fused"], found_inf=found_inf)


def _grad_norm(optimizer: torch.optim.Optimizer) -> Tensor:
    """Norm of the gradients the optimizer is about to apply, from its own parameter list (walking
    the modules each update costs more than the norm). Per-tensor norms, then their norm: what
    torch.nn.utils.get_total_norm computes, without its grouping by device and dtype (~2 % of an
    update at batch 128 on CPU)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grad) for grad in grads]))


def _nonfinite(metrics: dict[str, Tensor]) -> Tensor:
    """1.0 if any 0-d metric is NaN or inf, else 0.0, left on the device (adam_step's found_inf)."""
    return torch.stack(list(metrics.values())).isfinite().all().logical_not().float()


def _floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """0-d metric tensors -> floats with one device-to-host copy (one sync on CUDA, not one per metric)."""
    return dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))
