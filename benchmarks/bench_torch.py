"""Overhead of reference_impl.torch against the bare ``nn.GRU``, on CPU (or a GPU).

Forward and backward of a GRU (batch 64, 100 steps, 128 units, 32 input features).
Two tables, measured in one run:

``InitialStateRNN``
    The bare layer called with its default zero ``h0``, and each strategy wrapped
    around the same layer. "bare (control)" is the same bare layer timed a second
    time: its distance from 1 is the noise floor.
``NoisyCell``
    Per-step noise needs a cell stepped over time. Against the same bare layer (the
    same rounds as in the first table): the same weights in an ``nn.GRUCell`` stepped
    in a Python loop without noise, ``NoisyCell`` stepped eagerly and in compiled
    blocks (``unroll(compile=True)``; its first call, the compile, is timed apart),
    and the loop copied from the web that adds ``torch.randn_like(h) * sigma`` at
    each step.

All variants are interleaved in a shuffled order in every round, so drifts in
machine load hit all of them alike. Every round of every variant is written, with the
machine and the versions, to ``results/bench-torch.csv``; a summary (median, paired
ratio, bootstrap interval) is printed.

Run: ``python benchmarks/bench_torch.py [--rounds N] [--threads N] [--device cpu|gpu]
[--out PATH]``; ``--device gpu`` writes ``results/bench-torch-gpu.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from reference_impl import STRATEGIES, benchmarking
from reference_impl import torch as ri

BATCH, STEPS, HIDDEN, FEATURES = 64, 100, 128, 32
SIGMA = 0.1
BASE = "bare nn.GRU"
CELL_LOOP = "GRUCell loop, no noise"
NOISY_EAGER = "NoisyCell eager"
NOISY_COMPILED = "NoisyCell compiled"
WEB = "randn_like loop (web)"
OUT = Path(__file__).resolve().parent.parent / "results" / "bench-torch.csv"


def make_step(run):
    """One forward (``run()`` returns the outputs) and backward of a loss on them; on a
    GPU it waits for the device, so the time covers the whole computation."""

    def step() -> None:
        out = run()
        out.sum().backward()
        if out.is_cuda:
            torch.cuda.synchronize()

    return step


def cell_loop(cell: nn.GRUCell, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """``cell`` stepped over ``x`` (time first); with ``sigma``, the web's noisy loop."""
    h, outs = torch.zeros(x.shape[1], cell.hidden_size, device=x.device), []
    for x_t in x:
        if sigma:
            h = h + torch.randn_like(h) * sigma
        h = cell(x_t, h)
        outs.append(h)
    return torch.stack(outs)


def noisy_cell_variants(gru: nn.GRU, x: torch.Tensor) -> tuple[dict[str, object], nn.Module]:
    """The cell variants, on the GRU's own weights and its input, time first; the cell."""
    cell = nn.GRUCell(FEATURES, HIDDEN).to(x.device)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(gru, f"{name}_l0"))
    xt = x.transpose(0, 1).contiguous()
    noisy = ri.NoisyCell(cell, noise_std=SIGMA, seed=0).train()
    compiled = make_step(lambda: noisy.unroll(xt, compile=True)[0])
    start = time.perf_counter()
    compiled()  # compiles (or loads inductor's disk cache)
    print(f"{NOISY_COMPILED}: first call {time.perf_counter() - start:.1f} s (compile)")
    variants = {
        CELL_LOOP: make_step(lambda: cell_loop(cell, xt)),
        NOISY_EAGER: make_step(lambda: noisy.unroll(xt)[0]),
        NOISY_COMPILED: compiled,
        WEB: make_step(lambda: cell_loop(cell, xt, SIGMA)),
    }
    return variants, cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default="cpu", help="gpu: CUDA (and cuDNN)"
    )
    parser.add_argument("--out", type=Path, help="default results/bench-torch[-gpu].csv")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        parser.error("--device gpu: torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    out = args.out or (OUT if args.device == "cpu" else OUT.with_name("bench-torch-gpu.csv"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gru = nn.GRU(FEATURES, HIDDEN, batch_first=True).to(device)
    x = torch.randn(BATCH, STEPS, FEATURES, device=device)
    variants = {BASE: make_step(lambda: gru(x)[0]), "bare (control)": make_step(lambda: gru(x)[0])}
    for strategy in STRATEGIES:
        # every variant wraps the same layer, so only the initial state differs
        model = ri.InitialStateRNN(gru, strategy=strategy).train()
        variants[strategy] = make_step(lambda model=model: model(x)[0])
    cells, cell = noisy_cell_variants(gru, x)
    times = benchmarking.interleaved_rounds(
        variants | cells, args.rounds, before=lambda: (gru.zero_grad(), cell.zero_grad())
    )
    key, cell_key = ("InitialStateRNN", "fwd+bwd"), ("NoisyCell", "fwd+bwd")
    tables = {
        key: {name: times[name] for name in variants},
        cell_key: {name: times[name] for name in (BASE, *cells)},
    }
    version = torch.__version__.split("+")[0]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    prov = benchmarking.provenance(
        {"torch": version}, device=args.device, gpu=gpu, threads=args.threads
    )
    shape = f"GRU {HIDDEN} units, batch {BATCH}, {STEPS} steps, {FEATURES} features"
    baselines = {k: BASE for k in tables}
    rows = benchmarking.write_results(out, "torch", tables, baselines, prov, shape)
    where = gpu or f"CPU ({prov['cpu']}), {args.threads} thread(s)"
    print(f"torch {version}, {where}: {shape}")
    print(f"forward+backward, {args.rounds} interleaved rounds")
    for (table, _), table_times in tables.items():
        print(f"\n{table}")
        print("\n".join(benchmarking.summary(table_times, BASE)))
    print(f"{rows} rows written to {out}")


if __name__ == "__main__":
    main()
