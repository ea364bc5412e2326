"""Overhead of the Flax linen ``InitialStateRNN(nn.GRUCell)`` per strategy against bare ``nn.RNN``.

Jitted forward and backward (the gradient of the summed outputs with respect to all
parameters) of a GRU (batch 64, 100 steps, 128 units, 32 input features) on the
CPU. The bare layer is ``nn.RNN(nn.GRUCell(128))`` with its default zero carry;
each strategy wraps the same cell, in training mode (noise on). A second table puts
``nn.RNN(NoisyCell(nn.GRUCell))`` (per-step state noise, in training and in
evaluation) beside the same bare scan, with the per-step Gaussian draws alone (a
scan that only draws) as the floor of that overhead. The variants are interleaved,
in a shuffled order, in every round so drifts in machine load hit all of them
alike; each figure is the median over rounds. Prints milliseconds, the ratio to the
bare layer, and the compile time of each jitted step.

Run: ``python benchmarks/bench_flax.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

from reference_impl import STRATEGIES
from reference_impl.flax import linen as ri

BATCH, STEPS, HIDDEN, FEATURES = 64, 100, 128, 32
RNGS = ("initial_state", "noise")


def compile_step(model: nn.Module, x: jax.Array, **kwargs) -> tuple[Callable, float, tuple]:
    """The jitted forward+backward step of ``model``, its compile time and its arguments."""
    variables = model.init(jax.random.key(0), x, **kwargs)

    def step(variables, x, key):
        rngs = dict(zip(RNGS, jax.random.split(key, len(RNGS)), strict=True))

        def loss(params):
            out = model.apply({**variables, "params": params}, x, rngs=rngs, **kwargs)
            return out.sum()

        return jax.value_and_grad(loss)(variables["params"])

    args = (variables, x, jax.random.key(1))
    start = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # first run: buffers, thread pools
    return compiled, seconds, args


def compile_draws() -> tuple[Callable, float, tuple]:
    """The floor of per-step noise: only the draws NoisyCell makes, in one lax.scan.

    One key derived and one (batch, units) Gaussian drawn per step, as inside the
    cell, with no recurrent cell at all.
    """

    def draws(key):
        def body(total, step):
            noise = jax.random.normal(jax.random.fold_in(key, step), (BATCH, HIDDEN))
            return total + noise, None

        return jax.lax.scan(body, jnp.zeros((BATCH, HIDDEN)), jnp.arange(STEPS))[0]

    args = (jax.random.key(1),)
    start = time.perf_counter()
    compiled = jax.jit(draws).lower(*args).compile()
    seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    return compiled, seconds, args


def measure(
    variants: dict[str, tuple[Callable, float, tuple]], rounds: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):  # warm-up
        for fn, _, args in variants.values():
            jax.block_until_ready(fn(*args))
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)  # no variant always runs first (or right after another)
        for name in order:
            fn, _, args = variants[name]
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, variants: dict, times: dict[str, list[float]], base: str) -> None:
    """Median ms, ratio of medians, and the paired ratio (median of per-round ratios)."""
    print(title)
    print(f"{'variant':<26}{'ms':>9}{'ratio':>8}{'paired':>8}{'compile s':>11}")
    base_median = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / b for t, b in zip(ts, times[base], strict=True))
        compile_s = variants[name][1]
        print(
            f"{name:<26}{1e3 * med:>9.2f}{med / base_median:>8.3f}{paired:>8.3f}{compile_s:>11.2f}"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(2), (BATCH, STEPS, FEATURES))
    cell = nn.GRUCell(features=HIDDEN)
    base = "bare nn.RNN"

    # the control is the bare layer compiled and timed a second time: its distance from
    # 1.000 is the noise floor of the measurement
    strategies = {
        base: compile_step(nn.RNN(cell), x),
        "bare (control)": compile_step(nn.RNN(cell), x),
    }
    for strategy in STRATEGIES:
        model = ri.InitialStateRNN(cell, strategy=strategy)
        strategies[strategy] = compile_step(model, x, deterministic=False)

    # nn.RNN must split the noise stream per step, or every step would reuse one key.
    split = {"params": False, "noise": True}
    cells = {base: strategies[base]}
    for mode, deterministic in (("training", False), ("evaluation", True)):
        noisy = ri.NoisyCell(cell, noise_std=0.1, deterministic=deterministic)
        cells[f"NoisyCell {mode}"] = compile_step(nn.RNN(noisy, split_rngs=split), x)
    cells["per-step draws alone"] = compile_draws()

    print(
        f"jax {jax.__version__}, flax {flax.__version__}, {jax.devices()[0].platform.upper()}: "
        f"GRU forward+backward, batch {BATCH}, {STEPS} steps, {HIDDEN} units, "
        f"{FEATURES} input features, median of {args.rounds} interleaved rounds\n"
    )
    title = "InitialStateRNN(nn.GRUCell) per strategy"
    report(title, strategies, measure(strategies, args.rounds), base)
    report("nn.RNN(NoisyCell(nn.GRUCell))", cells, measure(cells, args.rounds), base)


if __name__ == "__main__":
    main()
