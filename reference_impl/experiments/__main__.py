"""Command line: run the experiment grid of a budget and write its results table.

    python -m reference_impl.experiments run --budget standard
    python -m reference_impl.experiments run --budget quick --frameworks torch --tasks co2
    python -m reference_impl.experiments list --budget standard
    python -m reference_impl.experiments run --study map --budget standard

An interrupted run goes on where it stopped when started again. With ``RAY_ADDRESS``
set the trials run on that Ray cluster.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys

from reference_impl.experiments import BUDGETS, CELLS, FRAMEWORKS, GRID_TASKS


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_impl.experiments")
    parser.add_argument("command", choices=("run", "list"))
    parser.add_argument("--budget", default="quick", help=f"one of {', '.join(BUDGETS)}")
    parser.add_argument(
        "--study", default="grid", help="grid (the tasks, default) or map (the map of regimes)"
    )
    parser.add_argument(
        "--tasks", help=f"comma-separated (default: the study's; grid: {','.join(GRID_TASKS)})"
    )
    parser.add_argument("--frameworks", help=f"comma-separated (default: {','.join(FRAMEWORKS)})")
    parser.add_argument("--cells", help=f"comma-separated (default: {','.join(CELLS)})")
    parser.add_argument("--strategies", help="comma-separated (default: all of the task)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the budget's)")
    parser.add_argument("--results-dir", help="where the table goes (default: results/)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--max-trials", type=int, help="stop after this many new trials")
    parser.add_argument("--executor", default="ray", help="ray (default) or local (no Ray)")
    args = parser.parse_args(argv)

    from reference_impl.experiments import grid

    selection = {
        "tasks": _names(args.tasks),
        "frameworks": _names(args.frameworks),
        "cells": _names(args.cells),
        "strategies": _names(args.strategies),
        "seeds": args.seeds,
    }
    try:
        if args.command == "list":
            configs = grid.study_configs(args.study, args.budget, **selection)
            done = grid.done_keys(grid.results_path(args.budget, args.results_dir, args.study))
            counts = collections.Counter(c["framework"] for c in configs)
            left = sum(grid._key(c) not in done for c in configs)
            print(f"{len(configs)} trials ({dict(counts)}), {left} not done yet")
            return 0
        out = grid.run_grid(
            args.budget,
            **selection,
            results_dir=args.results_dir,
            num_cpus=args.num_cpus,
            max_trials=args.max_trials,
            executor=args.executor,
            study=args.study,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per = collections.defaultdict(list)
    for framework, s in out["seconds"]:
        per[framework].append(s)
    medians = {f: round(statistics.median(v), 2) for f, v in per.items()}
    print(
        f"ran {out['ran']} trials on {out['executor']} ({out['skipped']} already done) in "
        f"{out['wall_seconds'] / 60:.1f} min; median seconds per trial {medians}; "
        f"table {out['table']} ({out['rows']} rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
