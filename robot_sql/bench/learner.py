"""`robot-sql bench learner`: SQL updates/s, the FLOPs of one update, and how close it gets to
what this machine's matrix multiplier allows, next to Stable-Baselines3 SAC, in one run.

For each case (observation/action sizes of MultiGoal and the Sawyer tasks; batch 128 with
2x128 hidden units and batch 256 with 2x256; K = M = 16), alternating in rounds so that a
noisy neighbour hits every figure alike (each figure is its best round):
1. SQL: `replay.sample` + `agent.update` (what the learner does per update), updates/s.
2. The matmul-bound ceiling: every matrix multiply of one update (forward and backward,
   recorded with their exact shapes and memory layouts) replayed back to back, without the
   rest of the update; FLOPs/s of that replay. The update's FLOPs/s over it is the fraction
   of the ceiling that the update achieves. SQL and ceiling share each round in alternating
   turns (`interleaved_rates`); the fraction is the median of the rounds' ratios.
3. SAC (stable-baselines3, optional `bench` extra): `model.train` gradient steps at the same
   batch size and hidden widths, updates/s (its batch sampling included, as for SQL).
4. A large square float32 matmul: the machine's peak rate, for scale.

FLOPs count only matrix multiplies (2 per multiply-add), derived from the layer shapes in
`update_matmul_flops` and cross-checked with torch.utils.flop_counter.FlopCounterMode.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import click
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

from robot_sql.replay import ReplayBuffer
from robot_sql.sql import SoftQLearning, SQLConfig, resolve_device
from robot_sql.tasks.pose_task import ACTION_SIZE, OBSERVATION_SIZE

# (name, obs_dim, act_dim, batch size, hidden sizes)
CASES = [
    ("multigoal-b128-128x128", 2, 2, 128, (128, 128)),
    ("sawyer-b128-128x128", OBSERVATION_SIZE, ACTION_SIZE, 128, (128, 128)),
    ("multigoal-b256-256x256", 2, 2, 256, (256, 256)),
    ("sawyer-b256-256x256", OBSERVATION_SIZE, ACTION_SIZE, 256, (256, 256)),
]
MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


# ---- FLOPs from the layer shapes ---------------------------------------------------------------
def mlp_flops(rows: int, sizes: list[int], weight_grads: bool, input_grads: str | None) -> int:
    """Matmul FLOPs of an MLP on `rows` inputs: the forward pass, plus, for a backward pass,
    the weight gradients (if wanted) and the input gradients of every layer ("all") or of
    every layer but the first ("hidden", when the network's input needs no gradient)."""
    total = 0
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        one = 2 * rows * fan_in * fan_out
        total += one
        total += one if weight_grads else 0
        total += one if input_grads == "all" or (input_grads == "hidden" and layer > 0) else 0
    return total


def two_input_mlp_flops(obs_rows: int, other_rows: int, rows: int, obs_dim: int, other_dim: int, sizes: list[int],
                        weight_grads: bool, other_input_grads: bool) -> int:
    """Matmul FLOPs of the Q-function and the sampler: a first layer W_s s + W_x x whose two parts
    run on their own rows (a state broadcast over its particles is multiplied once), then an MLP
    `sizes` on `rows`. Observations never need a gradient; x does when `other_input_grads`."""
    backward = weight_grads or other_input_grads
    return (mlp_flops(obs_rows, [obs_dim, sizes[0]], weight_grads, None)
            + mlp_flops(other_rows, [other_dim, sizes[0]], weight_grads, "all" if other_input_grads else None)
            + mlp_flops(rows, sizes, weight_grads, "all" if backward else None))


def update_matmul_flops(c: SQLConfig) -> int:
    """Matmul FLOPs of one `SoftQLearning.update`, term by term as the update runs them."""
    heads = 2 if c.twin_q else 1
    q_sizes = [*c.hidden_sizes, 1]
    sampler_sizes = [*c.hidden_sizes, c.act_dim]
    batch, m, fixed, updated = c.batch_size, c.value_particles, c.batch_size * c.n_fixed, c.batch_size * c.n_updated
    # Target: Q_target on B states x the same M uniform actions, forward only.
    target = heads * two_input_mlp_flops(batch, m, batch * m, c.obs_dim, c.act_dim, q_sizes, False, False)
    # Q step: forward on the batch, backward to the weights.
    q_step = heads * two_input_mlp_flops(batch, batch, batch, c.obs_dim, c.act_dim, q_sizes, True, False)
    # Sampler: forward of the B x Kf fixed particles; forward and backward of the B x Ku updated ones.
    sampler = (two_input_mlp_flops(batch, fixed, fixed, c.obs_dim, c.act_dim, sampler_sizes, False, False)
               + two_input_mlp_flops(batch, updated, updated, c.obs_dim, c.act_dim, sampler_sizes, True, False))
    # Score: Q on the B x Kf fixed particles, differentiated w.r.t. the actions only.
    score = heads * two_input_mlp_flops(batch, fixed, fixed, c.obs_dim, c.act_dim, q_sizes, False, True)
    # Stein direction: the transposed kernel matrix [Ku, Kf] times the scores and the fixed particles [Kf, D].
    stein = 2 * 2 * batch * c.n_updated * c.n_fixed * c.act_dim
    return target + q_step + sampler + score + stein


def counted_flops(step) -> int:
    """FlopCounterMode's count of `step`. Its module tracker is left out: the tracker's backward
    hooks do not support autograd.grad with respect to a leaf, which the SVGD score needs."""
    counter = FlopCounterMode(display=False)
    with _FlopCounterMode(counter):
        step()
    return counter.get_total_flops()


# ---- the matmul-bound ceiling ------------------------------------------------------------------
class MatmulRecorder(TorchDispatchMode):
    """Records every matrix multiply that reaches the kernels: op, shapes, strides, dtype."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMUL_OPS:
            layouts = tuple((tuple(a.shape), tuple(a.stride()), a.dtype) for a in args if isinstance(a, torch.Tensor))
            self.calls.append((func, layouts))
        return func(*args, **(kwargs or {}))


def strided_random(shape, stride, dtype, device) -> torch.Tensor:
    """A random tensor with exactly this layout (stride 0 included, as in broadcast biases)."""
    span = 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if all(shape) else 0
    return torch.randn(span, dtype=dtype, device=device).as_strided(shape, stride)


class MatmulReplay:
    """The recorded multiplies on fresh tensors of the same layouts, run back to back."""

    def __init__(self, calls: list[tuple], device: torch.device):
        self.calls = [(func, [strided_random(*layout, device) for layout in layouts]) for func, layouts in calls]

    def __call__(self) -> None:
        for func, tensors in self.calls:
            func(*tensors)


def square_matmul(size: int, device: torch.device):
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return lambda: torch.mm(a, b)


# ---- timing ------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(step, device: torch.device, seconds: float) -> tuple[int, float]:
    """(calls, elapsed seconds) of `step` run for about `seconds`, synchronised."""
    calls, started = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        if calls % 4 == 0:
            synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return calls, elapsed


def timed_rate(step, device: torch.device, seconds: float) -> float:
    """Calls of `step` per second: run for about `seconds` after one untimed call."""
    step()
    synchronize(device)
    calls, elapsed = timed_calls(step, device, seconds)
    return calls / elapsed


def interleaved_rates(steps: list, device: torch.device, seconds: float, turns: int = 5) -> list[float]:
    """Calls per second of each of `steps`, each run for about `seconds` in all, in `turns`
    alternating turns: a noisy neighbour then slows them alike, so their ratio holds."""
    for step in steps:
        step()
    synchronize(device)
    totals = [[0, 0.0] for _ in steps]
    for _ in range(turns):
        for total, step in zip(totals, steps):
            calls, elapsed = timed_calls(step, device, seconds / turns)
            total[0] += calls
            total[1] += elapsed
    return [calls / elapsed for calls, elapsed in totals]


def filled_replay(obs_dim: int, act_dim: int, size: int, rng: np.random.Generator) -> ReplayBuffer:
    replay = ReplayBuffer(obs_dim, act_dim, size)
    replay.add_batch({
        "observations": rng.normal(size=(size, obs_dim)),
        "actions": rng.uniform(-1, 1, (size, act_dim)),
        "rewards": rng.normal(size=size),
        "next_observations": rng.normal(size=(size, obs_dim)),
        "terminals": (rng.random(size) < 0.01),
    })
    return replay


def sac_model(obs_dim: int, act_dim: int, batch_size: int, hidden: tuple[int, ...], device: torch.device, rng):
    """An SB3 SAC with a filled replay buffer, ready for `model.train` (None without the extra)."""
    try:
        import gymnasium
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure
    except ImportError:
        return None

    class Shapes(gymnasium.Env):  # only the spaces are used: no environment steps are taken
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        action_space = gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)

    model = SAC("MlpPolicy", Shapes(), batch_size=batch_size, buffer_size=10_000, learning_starts=0,
                policy_kwargs={"net_arch": list(hidden)}, device=device, seed=0)
    model.set_logger(configure(None, []))
    for _ in range(2_000):
        model.replay_buffer.add(rng.normal(size=(1, obs_dim)), rng.normal(size=(1, obs_dim)),
                                rng.uniform(-1, 1, (1, act_dim)), rng.normal(size=1), np.zeros(1), [{}])
    return model


def bench_case(name: str, obs_dim: int, act_dim: int, batch_size: int, hidden: tuple[int, ...],
               device: torch.device, rounds: int, seconds: float, twin_q: bool, square: int) -> dict:
    config = SQLConfig(obs_dim=obs_dim, act_dim=act_dim, hidden_sizes=hidden, kernel_particles=16,
                       value_particles=16, batch_size=batch_size, twin_q=twin_q)
    agent = SoftQLearning(config, device=device)
    rng = np.random.default_rng(0)
    replay = filled_replay(obs_dim, act_dim, 10_000, rng)

    def sql_step():
        agent.update(replay.sample(batch_size, rng))

    analytic = update_matmul_flops(config)
    counted = counted_flops(sql_step)
    recorder = MatmulRecorder()
    with recorder:
        sql_step()
    replay_matmuls = MatmulReplay(recorder.calls, device)
    replayed = counted_flops(replay_matmuls)
    sac = sac_model(obs_dim, act_dim, batch_size, hidden, device, rng)
    sac_flops = counted_flops(lambda: sac.train(gradient_steps=1, batch_size=batch_size)) if sac else None

    square_step = square_matmul(square, device)

    sql_rates, ceiling_rates, sac_rates, square_rates = [], [], [], []
    for _ in range(rounds):
        sql_rate, ceiling_rate = interleaved_rates([sql_step, replay_matmuls], device, seconds)
        sql_rates.append(sql_rate)
        ceiling_rates.append(ceiling_rate)
        square_rates.append(timed_rate(square_step, device, seconds) * 2 * square ** 3 / 1e9)
        if sac:
            sac_rates.append(timed_rate(lambda: sac.train(gradient_steps=1, batch_size=batch_size), device, seconds))
    # Each rate is its best round: the one least disturbed by other processes (medians kept too).
    # The fractions are ratios within a round (measured back to back), medians over the rounds.
    sql_rate, ceiling_rate, square_gflops = max(sql_rates), max(ceiling_rates), max(square_rates)
    sac_rate = max(sac_rates) if sac else None
    fractions = [sql / ceiling for sql, ceiling in zip(sql_rates, ceiling_rates)]
    square_fractions = [sql * counted / 1e9 / peak for sql, peak in zip(sql_rates, square_rates)]
    result = {
        "obs_dim": obs_dim, "act_dim": act_dim, "batch_size": batch_size, "hidden_sizes": list(hidden),
        "kernel_particles": config.kernel_particles, "value_particles": config.value_particles, "twin_q": twin_q,
        "update_flops": counted,
        "update_flops_analytic": analytic,
        "flops_match": analytic == counted == replayed,
        "matmuls_per_update": len(recorder.calls),
        "sql_updates_per_s": sql_rate,
        "sql_gflops_per_s": sql_rate * counted / 1e9,
        "ceiling_gflops_per_s": ceiling_rate * replayed / 1e9,
        "ceiling_updates_per_s": ceiling_rate,
        "fraction_of_ceiling": statistics.median(fractions),
        "fraction_of_ceiling_range": [min(fractions), max(fractions)],
        "square_matmul_gflops_per_s": square_gflops,
        "fraction_of_square_matmul": statistics.median(square_fractions),
        "sac_updates_per_s": sac_rate,
        "sac_update_flops": sac_flops,
        "sql_over_sac_updates": sql_rate / sac_rate if sac else None,
        "medians": {"sql_updates_per_s": statistics.median(sql_rates), "ceiling_updates_per_s": statistics.median(ceiling_rates),
                    "sac_updates_per_s": statistics.median(sac_rates) if sac else None,
                    "square_matmul_gflops_per_s": statistics.median(square_rates)},
        "rounds": {"sql_updates_per_s": sql_rates, "ceiling_updates_per_s": ceiling_rates, "sac_updates_per_s": sac_rates,
                   "square_matmul_gflops_per_s": square_rates, "fraction_of_ceiling": fractions},
    }
    sac_text = f"SAC {sac_rate:.0f}/s (SQL/SAC {sql_rate / sac_rate:.2f})" if sac else "SAC not installed (pip install -e .[bench])"
    click.echo(f"{name}: SQL {sql_rate:.0f} updates/s, {counted / 1e6:.1f} MFLOP/update, {result['sql_gflops_per_s']:.1f} GFLOP/s "
               f"= {result['fraction_of_ceiling']:.2f} of the matmul ceiling ({result['ceiling_gflops_per_s']:.1f} GFLOP/s; "
               f"rounds {min(fractions):.2f}-{max(fractions):.2f}), "
               f"{result['fraction_of_square_matmul']:.2f} of a {square}x{square} matmul ({square_gflops:.1f} GFLOP/s); "
               f"{sac_text}")
    return result


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


@click.command("learner")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file for the results.")
@click.option("--device", default="auto", show_default=True, help="auto = cuda if available, else cpu.")
@click.option("--rounds", default=9, show_default=True,
              help="Alternating SQL / ceiling / square / SAC timings per case (best rates; median of the per-round fractions).")
@click.option("--seconds", default=0.5, show_default=True, help="Length of one timing (SQL and ceiling: in 5 alternating turns).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice).")
@click.option("--twin-q", is_flag=True, help="SQL with twin Q-functions (SAC always has two).")
@click.option("--square", default=2048, show_default=True, help="Size of the square matmul for the machine's peak rate.")
@click.option("--case", "cases", multiple=True, type=click.Choice([case[0] for case in CASES]),
              help="Run only these cases (repeatable; default all).")
@click.option("--tiny", is_flag=True, help="A seconds-long run at toy sizes, for tests (numbers meaningless).")
def bench_learner_command(out: str, device: str, rounds: int, seconds: float, threads: int | None, twin_q: bool,
                          square: int, cases: tuple[str, ...], tiny: bool) -> None:
    """SQL updates/s, FLOPs per update and fraction of the matmul ceiling, vs SB3 SAC."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    selected = [case for case in CASES if not cases or case[0] in cases]
    if tiny:
        selected = [("tiny-b8-8x8", 3, 2, 8, (8, 8))]
    click.echo(f"device {torch_device}, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f}")
    results = {name: bench_case(name, *sizes, device=torch_device, rounds=rounds, seconds=seconds, twin_q=twin_q,
                                square=square)
               for name, *sizes in selected}
    report = {
        "device": str(torch_device),
        "device_name": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "square_matmul_size": square,
        "cases": results,
    }
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"-> {out}")
