"""Overhead of ``InitialStateRNN(nn.GRU)`` per strategy against the bare ``nn.GRU``.

Forward and backward of a GRU (batch 64, 100 steps, 128 units, 32 input features)
on the CPU, the bare layer called with its default zero ``h0`` and each wrapped
strategy measured side by side in one run: the variants are interleaved in every
round so drifts in machine load hit all of them alike, and each figure is the
median over rounds. Prints milliseconds, the ratio of medians, and the paired ratio
(the median of the round-by-round ratios against the bare layer of the same round),
which cancels most of the drift of a shared machine. "bare (control)" is the same
bare layer timed a second time: its distance from 1.000 is the noise floor.

Run: ``python benchmarks/bench_torch.py [--rounds N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from reference_impl import STRATEGIES
from reference_impl import torch as ri

BATCH, STEPS, HIDDEN, FEATURES = 64, 100, 128, 32


def make_step(model: nn.Module, x: torch.Tensor):
    def step() -> None:
        out, _ = model(x)
        out.sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gru = nn.GRU(FEATURES, HIDDEN, batch_first=True)
    x = torch.randn(BATCH, STEPS, FEATURES)
    variants = {"bare nn.GRU": make_step(gru, x), "bare (control)": make_step(gru, x)}
    for strategy in STRATEGIES:
        # every variant wraps the same layer, so only the initial state differs
        model = ri.InitialStateRNN(gru, strategy=strategy).train()
        variants[strategy] = make_step(model, x)

    for step in variants.values():  # warm-up: allocator, oneDNN primitives
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            gru.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["bare nn.GRU"])
    print(
        f"torch {torch.__version__}, CPU, {args.threads} thread(s): GRU forward+backward, "
        f"batch {BATCH}, {STEPS} steps, {HIDDEN} units, median of {args.rounds} rounds"
    )
    print(f"{'variant':<16}{'ms':>10}{'ratio':>9}{'paired':>9}")
    bare = times["bare nn.GRU"]
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / b for t, b in zip(ts, bare, strict=True))
        print(f"{name:<16}{1e3 * med:>10.2f}{med / base:>9.3f}{paired:>9.3f}")


if __name__ == "__main__":
    main()
