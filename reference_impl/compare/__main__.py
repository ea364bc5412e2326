"""Command line: compare initial-state strategies on the series of a CSV file.

    python -m reference_impl.compare data.csv --target COL --length 30 --framework torch \\
        --strategies zero,learnable,noisy --seeds 10 --steps first:3 \\
        --results comparison.jsonl --plot comparison.png

Prints the table and the verdict and writes the plot. Started again with the same
``--results`` file, an interrupted comparison runs only the trials it lacks.
"""

from __future__ import annotations

import argparse
import sys

from reference_impl import STRATEGIES
from reference_impl.experiments import CELLS, FRAMEWORKS


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_impl.compare",
        description="Compare initial-state strategies on your sequences, paired by seed.",
    )
    p.add_argument("csv", help="a CSV file of one or several long series, one row per step")
    p.add_argument("--target", required=True, help="column(s) to predict (comma-separated)")
    p.add_argument("--length", type=int, required=True, help="steps per window")
    p.add_argument("--stride", type=int, default=1, help="steps between window starts")
    p.add_argument("--inputs", help="input columns, comma-separated (default: the target)")
    p.add_argument(
        "--horizon",
        type=int,
        help="target steps ahead (default 1 if the target is an input, else 0)",
    )
    p.add_argument("--series", help="column naming the series, for several series in one file")
    p.add_argument("--time", help="column to sort each series by")
    p.add_argument("--task", default="regression", help="regression or classification")
    p.add_argument("--framework", default="torch", help=f"one of {', '.join(FRAMEWORKS)}")
    p.add_argument("--cell", default="gru", help=f"one of {', '.join(CELLS)}")
    p.add_argument(
        "--strategies",
        default="zero,learnable",
        help=f"comma-separated, of {', '.join(STRATEGIES)}",
    )
    p.add_argument("--reference", default="zero")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", default="all", help="steps that count: all, first:k or last:k")
    p.add_argument("--loss-steps", default="all", help="steps the training loss counts")
    p.add_argument("--margin", type=float, default=0.05, help="equivalence margin (fraction)")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--results", help="JSON-lines results file (resumable)")
    p.add_argument("--plot", help="where to write the figure (PNG, SVG, PDF)")
    p.add_argument("--executor", default="ray", help="ray, processes or inline")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from reference_impl import compare

    target = _names(args.target)
    try:
        report = compare.run(
            args.csv,
            target=target[0] if len(target) == 1 else target,
            length=args.length,
            stride=args.stride,
            inputs=None if args.inputs is None else _names(args.inputs),
            horizon=args.horizon,
            series=args.series,
            time_column=args.time,
            task=args.task,
            framework=args.framework,
            cell=args.cell,
            strategies=_names(args.strategies),
            reference=args.reference,
            seeds=args.seeds,
            steps=args.steps,
            loss_steps=args.loss_steps,
            margin=args.margin,
            hidden=args.hidden,
            batch_size=args.batch_size,
            lr=args.lr,
            max_epochs=args.max_epochs,
            patience=args.patience,
            results=args.results,
            executor=args.executor,
            num_cpus=args.num_cpus,
            progress=not args.quiet,
        )
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    if args.plot:
        report.plot().savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
