"""Overhead of the Flax linen ``InitialStateRNN(nn.GRUCell)`` per strategy against bare ``nn.RNN``.

Jitted forward and backward (the gradient of the summed outputs with respect to all
parameters) of a GRU (batch 64, 100 steps, 128 units, 32 input features) on the
CPU. The bare layer is ``nn.RNN(nn.GRUCell(128))`` with its default zero carry;
each strategy wraps the same cell, in training mode (noise on); "bare (control)"
is the bare layer compiled and timed a second time (the noise floor). The
``NoisyCell`` table puts a bare ``nn.RNN(NoisyCell(nn.GRUCell))`` (a key split and a
Gaussian draw at every step, in training and in evaluation) beside the same bare
scan, with those per-step draws alone (a scan that only draws) as the floor of that
overhead. The ``noisy_cell`` table times per-step noise in training:
``InitialStateRNN(NoisyCell(nn.GRUCell), "zero")`` (the noise of all steps drawn
before the scan) and the version often copied from the web, an un-jitted Python loop
over the linen cell adding ``jax.random.normal`` noise to the carry at each step,
differentiated with ``jax.value_and_grad``; the one Gaussian draw of all steps, alone,
is the floor of the pre-drawn version. The variants are interleaved, in a
shuffled order, in every round. Every round is written, with the machine and the
versions, to ``results/bench-flax.csv``; a summary is printed, with the compile time
of each jitted step.

Run: ``python benchmarks/bench_flax.py [--rounds N] [--device cpu|gpu] [--out PATH]``;
``--device gpu`` writes ``results/bench-flax-gpu.csv``.
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
PREDRAWN, WEB = "NoisyCell, pre-drawn", "un-jitted loop, web-style"
DRAW = "the draw alone"
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


def compile_one_draw() -> tuple[Callable[[], object], float]:
    """The floor of pre-drawn noise: the one Gaussian draw of all steps, alone."""
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(lambda k: jax.random.normal(k, (BATCH, STEPS, HIDDEN))).lower(key).compile()
    seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(key))), seconds


def web_style_step(cell: nn.Module, params: dict, x: jax.Array) -> Callable[[], object]:
    """Per-step noise as often copied: a Python loop over ``cell.apply``, not jitted."""

    def loss(params, key):
        h, outputs = jnp.zeros((BATCH, HIDDEN)), []
        for t in range(STEPS):
            key, sub = jax.random.split(key)
            h = h + 0.1 * jax.random.normal(sub, h.shape)
            h, out = cell.apply({"params": params}, h, x[:, t])
            outputs.append(out)
        return jnp.mean(jnp.stack(outputs, axis=1) ** 2)

    grad = jax.value_and_grad(loss)
    return lambda: jax.block_until_ready(grad(params, jax.random.key(3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, help="default results/bench-flax[-gpu].csv")
    args = parser.parse_args()
    try:
        device = jax.devices(args.device)[0]
    except RuntimeError:
        parser.error(f"--device {args.device}: JAX sees no such device")
    out = args.out or (OUT if args.device == "cpu" else OUT.with_name(f"{OUT.stem}-gpu.csv"))
    with jax.default_device(device):
        run(args.rounds, args.device, device, out)


def run(rounds: int, kind: str, device: jax.Device, out: Path) -> None:
    """Compile and time every variant on ``device``, and write the results."""
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
    noisy = ri.NoisyCell(cell, noise_std=0.1)
    predrawn = {BASE: strategies[BASE]}
    predrawn[PREDRAWN] = compile_step(ri.InitialStateRNN(noisy, "zero"), x, deterministic=False)
    predrawn[DRAW] = compile_one_draw()
    params = nn.RNN(cell).init(jax.random.key(0), x)["params"]["cell"]
    # About a hundred times the bare scan: timed in fewer rounds, in a table of its own.
    web = {BASE: strategies[BASE], WEB: (web_style_step(cell, params, x), 0.0)}

    tables = {}
    plan = [
        ("InitialStateRNN", strategies, rounds),
        ("NoisyCell", cells, rounds),
        ("noisy_cell", predrawn, rounds),
        ("web_loop", web, max(3, rounds // 10)),
    ]
    for table, variants, n in plan:
        fns = {name: fn for name, (fn, _) in variants.items()}
        tables[(table, "fwd+bwd")] = benchmarking.interleaved_rounds(fns, n)
    baselines = {key: BASE for key in tables}

    versions = {"jax": jax.__version__, "flax": flax.__version__}
    gpu = device.device_kind if kind == "gpu" else ""
    prov = benchmarking.provenance(versions, device=kind, gpu=gpu)
    shape = f"GRU {HIDDEN} units, batch {BATCH}, {STEPS} steps, {FEATURES} features"
    rows = benchmarking.write_results(out, "flax", tables, baselines, prov, shape)
    where = gpu or f"CPU ({prov['cpu']})"
    print(f"jax {jax.__version__}, flax {flax.__version__}, {where}: {shape}")
    print(f"jitted forward+backward, {rounds} interleaved rounds (the un-jitted loop: fewer)")
    for (table, _), times in tables.items():
        print(f"\n{table}")
        print("\n".join(benchmarking.summary(times, BASE)))
    compile_s = {**strategies, **cells, PREDRAWN: predrawn[PREDRAWN]}
    print("\ncompile seconds: " + ", ".join(f"{k} {v[1]:.2f}" for k, v in compile_s.items()))
    print(f"{rows} rows written to {out}")


if __name__ == "__main__":
    main()
