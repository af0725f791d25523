"""``python -m pipeline.study``: the methods study (every method x codebook size as a DVC
experiment, gathered into reports/study/methods.{csv,md}).

    python -m pipeline.study                                  # all methods, K = 128 512, default budget
    python -m pipeline.study --methods vq nsvq --codebook-sizes 128 --set train_vq.track_steps=600
    python -m pipeline.study --jobs 2                         # two cells at a time (one GPU each, or half the cores)
    python -m pipeline.study --dry-run                        # print the cells' commands only

Set PREFECT_API_URL (e.g. a running ``prefect server start``) to keep the flow runs after
the study ends; without it everything reports to a temporary server.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["all"], help="quantizer methods, or 'all' (default)")
    ap.add_argument("--codebook-sizes", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="budget param for every cell, on top of the default budget (repeatable)")
    ap.add_argument("--out", default="reports/study", help="output folder, relative to --repo")
    ap.add_argument("--repo", default=".", help="the repository (folder with dvc.yaml)")
    ap.add_argument("--cell-timeout", type=float, default=None, help="seconds before a cell counts as failed")
    ap.add_argument("--jobs", type=int, default=1,
                    help="cells run at once (each pinned to its share of the GPUs, or of the cores)")
    ap.add_argument("--dry-run", action="store_true", help="print the budget and each cell's command, run nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .budget import parse_sets, study_budget

    args = parser().parse_args(argv)
    try:
        overrides = parse_sets(args.set)
        if args.dry_run:
            from .cells import exp_run_command
            from .flow import resolve_methods, study_command

            budget = study_budget(Path(args.repo) / "params.yaml", overrides)
            methods = resolve_methods(args.methods)
            print(study_command(methods, args.codebook_sizes, budget))
            for k in args.codebook_sizes:
                for m in methods:
                    print("dvc " + " ".join(exp_run_command(m, k, budget)[3:]))
            return 0
        from .flow import telemetry_off, methods_study

        telemetry_off()
        rows = methods_study(args.methods, args.codebook_sizes, overrides, args.out, args.repo, args.cell_timeout,
                             args.jobs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.repo) / args.out / "methods.md").read_text())
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
