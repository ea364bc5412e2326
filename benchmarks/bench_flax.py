"""Overhead of the Flax linen ``InitialStateRNN(nn.GRUCell)`` per strategy against bare ``nn.RNN``.

Jitted forward and backward (the gradient of the summed outputs with respect to all
parameters) of a GRU (batch 64, 100 steps, 128 units, 32 input features) on the
CPU. The bare layer is ``nn.RNN(nn.GRUCell(128))`` with its default zero carry;
each strategy wraps the same cell, in training mode (noise on); "bare (control)"
is the bare layer compiled and timed a second time (the noise floor). A second table
puts ``nn.RNN(NoisyCell(nn.GRUCell))`` (per-step state noise, in training and in
evaluation) beside the same bare scan, with the per-step Gaussian draws alone (a
scan that only draws) as the floor of that overhead. The variants are interleaved,
in a shuffled order, in every round. Every round is written, with the machine and
the versions, to ``results/bench-flax.csv``; a summary is printed, with the compile
time of each jitted step.

Run: ``python benchmarks/bench_flax.py [--rounds N] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

from reference_impl import STRATEGIES, benchmarking
from reference_impl.flax import linen as ri

BATCH, STEPS, HIDDEN, FEATURES = 64, 100, 128, 32
RNGS = ("initial_state", "noise")
BASE = "bare nn.RNN"
OUT = Path(__file__).resolve().parent.parent / "results" / "bench-flax.csv"


def compile_step(model: nn.Module, x: jax.Array, **kwargs) -> tuple[Callable[[], object], float]:
    """A call of the jitted forward+backward step of ``model``, and its compile time."""
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
    return (lambda: jax.block_until_ready(compiled(*args))), seconds


def compile_draws() -> tuple[Callable[[], object], float]:
    """The floor of per-step noise: only the draws NoisyCell makes, in one lax.scan.

    One key derived and one (batch, units) Gaussian drawn per step, as inside the
    cell, with no recurrent cell at all.
    """

    def draws(key):
        def body(total, step):
            noise = jax.random.normal(jax.random.fold_in(key, step), (BATCH, HIDDEN))
            return total + noise, None

        return jax.lax.scan(body, jnp.zeros((BATCH, HIDDEN)), jnp.arange(STEPS))[0]

    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(draws).lower(key).compile()
    seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(key))), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(2), (BATCH, STEPS, FEATURES))
    cell = nn.GRUCell(features=HIDDEN)

    strategies = {BASE: compile_step(nn.RNN(cell), x)}
    strategies["bare (control)"] = compile_step(nn.RNN(cell), x)
    for strategy in STRATEGIES:
        model = ri.InitialStateRNN(cell, strategy=strategy)
        strategies[strategy] = compile_step(model, x, deterministic=False)

    # nn.RNN must split the noise stream per step, or every step would reuse one key.
    split = {"params": False, "noise": True}
    cells = {BASE: strategies[BASE]}
    for mode, deterministic in (("training", False), ("evaluation", True)):
        noisy = ri.NoisyCell(cell, noise_std=0.1, deterministic=deterministic)
        cells[f"NoisyCell {mode}"] = compile_step(nn.RNN(noisy, split_rngs=split), x)
    cells["per-step draws alone"] = compile_draws()

    tables, baselines = {}, {}
    for table, variants in (("InitialStateRNN", strategies), ("NoisyCell", cells)):
        fns = {name: fn for name, (fn, _) in variants.items()}
        tables[(table, "fwd+bwd")] = benchmarking.interleaved_rounds(fns, args.rounds)
        baselines[(table, "fwd+bwd")] = BASE

    versions = {"jax": jax.__version__, "flax": flax.__version__}
    device = jax.devices()[0].platform
    prov = benchmarking.provenance(versions, device=device)
    shape = f"GRU {HIDDEN} units, batch {BATCH}, {STEPS} steps, {FEATURES} features"
    rows = benchmarking.write_results(args.out, "flax", tables, baselines, prov, shape)
    print(f"jax {jax.__version__}, flax {flax.__version__}, {device} ({prov['cpu']}): {shape}")
    print(f"jitted forward+backward, {args.rounds} interleaved rounds")
    for (table, _), times in tables.items():
        print(f"\n{table}")
        print("\n".join(benchmarking.summary(times, BASE)))
    compile_s = {**strategies, **cells}
    print("\ncompile seconds: " + ", ".join(f"{k} {v[1]:.2f}" for k, v in compile_s.items()))
    print(f"{rows} rows written to {args.out}")


if __name__ == "__main__":
    main()
