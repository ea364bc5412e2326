"""Overhead of ``InitialStateRNN(nn.GRU)`` per strategy against the bare ``nn.GRU``.

Forward and backward of a GRU (batch 64, 100 steps, 128 units, 32 input features)
on the CPU, the bare layer called with its default zero ``h0`` and each wrapped
strategy measured side by side in one run: the variants are interleaved in a
shuffled order in every round, so drifts in machine load hit all of them alike.
"bare (control)" is the same bare layer timed a second time: its distance from 1 is
the noise floor. Every round of every variant is written, with the machine and the
versions, to ``results/bench-torch.csv``; a summary (median, paired ratio, bootstrap
interval) is printed.

Run: ``python benchmarks/bench_torch.py [--rounds N] [--threads N] [--out PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from reference_impl import STRATEGIES, benchmarking
from reference_impl import torch as ri

BATCH, STEPS, HIDDEN, FEATURES = 64, 100, 128, 32
BASE = "bare nn.GRU"
OUT = Path(__file__).resolve().parent.parent / "results" / "bench-torch.csv"


def make_step(model: nn.Module, x: torch.Tensor):
    def step() -> None:
        out, _ = model(x)
        out.sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gru = nn.GRU(FEATURES, HIDDEN, batch_first=True)
    x = torch.randn(BATCH, STEPS, FEATURES)
    variants = {BASE: make_step(gru, x), "bare (control)": make_step(gru, x)}
    for strategy in STRATEGIES:
        # every variant wraps the same layer, so only the initial state differs
        model = ri.InitialStateRNN(gru, strategy=strategy).train()
        variants[strategy] = make_step(model, x)

    times = benchmarking.interleaved_rounds(
        variants, args.rounds, before=lambda: gru.zero_grad(set_to_none=True)
    )
    version = torch.__version__.split("+")[0]
    prov = benchmarking.provenance({"torch": version}, threads=args.threads)
    shape = f"GRU {HIDDEN} units, batch {BATCH}, {STEPS} steps, {FEATURES} features"
    key = ("InitialStateRNN", "fwd+bwd")
    rows = benchmarking.write_results(args.out, "torch", {key: times}, {key: BASE}, prov, shape)
    print(f"torch {version}, CPU ({prov['cpu']}), {args.threads} thread(s): {shape}")
    print(f"forward+backward, {args.rounds} interleaved rounds")
    print("\n".join(benchmarking.summary(times, BASE)))
    print(f"{rows} rows written to {args.out}")


if __name__ == "__main__":
    main()
