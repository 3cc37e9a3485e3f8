#!/usr/bin/env python3
"""Compare the branches of a wt-run run: the same thing as `wt-run compare`, as a script.

    python scripts/compare_results.py                       # newest run, terminal table
    python scripts/compare_results.py --run 20260125-194400 --format html --out report/
    python scripts/compare_results.py --config configs/wt-run.yaml --format csv --baseline i3d
    python scripts/compare_results.py --format json --per-worker   # groups and workers

Runs with seeds are compared per group (mean ± 95% interval, winner and significance,
confounders); `--per-worker` gives one row per worker.

It reads the results that `wt-run collect` brought back into results/<run>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs from a checkout without installing wt-run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worktree_runner.cli import cli


def main(argv: list[str]) -> None:
    """`--config PATH` belongs to the wt-run group, everything else to `compare`; exits with
    wt-run's exit code."""
    group_args: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            group_args += [arg, next(it, "")]
        elif arg.startswith("--config="):
            group_args.append(arg)
        else:
            rest.append(arg)
    cli.main(args=[*group_args, "compare", *rest], prog_name="compare_results.py")


if __name__ == "__main__":
    main(sys.argv[1:])
