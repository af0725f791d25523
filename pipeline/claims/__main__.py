"""``python -m pipeline.claims``: the papers' claims as studies on the demo data.

    python -m pipeline.claims list                          # the claims and their grids
    python -m pipeline.claims run batch_size                # one claim: reports/claims/batch_size{.md,/}
    python -m pipeline.claims run ns_vq_tables --dims 3 64 --jobs 2
    python -m pipeline.claims run diveq_low_bitrate --dry-run
"""
from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.claims", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the claims, their grids and cell counts")
    run = sub.add_parser("run", help="run one claim's cells and write its tables")
    run.add_argument("claim")
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    run.add_argument("--methods", nargs="+", default=None, help="a subset of the claim's methods")
    run.add_argument("--codebook-sizes", nargs="+", type=int, default=None)
    run.add_argument("--arms", nargs="+", default=None)
    run.add_argument("--dims", nargs="+", type=int, default=None, help="model.code_dim values")
    run.add_argument("--jobs", type=int, default=1, help="cells at once (each its share of the cores or GPUs)")
    run.add_argument("--cell-timeout", type=float, default=None)
    run.add_argument("--out", default="reports/claims")
    run.add_argument("--repo", default=".")
    run.add_argument("--dry-run", action="store_true", help="print each cell's command, run nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .specs import CLAIMS

    args = parser().parse_args(argv)
    if args.cmd == "list":
        for c in CLAIMS.values():
            print(f"{c.name}: {c.title}\n  {len(c.cells([0, 1]))} cells at 2 seeds"
                  + (f"; in full: {c.full}" if c.full else ""))
        return 0
    if args.claim not in CLAIMS:
        print(f"error: unknown claim {args.claim!r} (known: {', '.join(CLAIMS)})", file=sys.stderr)
        return 2
    grid = {"methods": args.methods, "codebook_sizes": args.codebook_sizes, "arms": args.arms, "dims": args.dims}
    from pathlib import Path

    from ..study.cells import exp_run_command
    from .flow import check_cell_keys, claim_budget

    claim = CLAIMS[args.claim]
    try:
        budget = claim_budget(Path(args.repo), claim)
        cells = claim.cells(args.seeds, **grid)
        check_cell_keys(Path(args.repo).resolve(), cells)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cells:
        print("error: the selection leaves no cell", file=sys.stderr)
        return 2
    if args.dry_run:
        for c in cells:
            print("dvc " + " ".join(exp_run_command(c.method, c.K, c.overrides(budget), c.name)[3:]))
        return 0
    from ..study.flow import telemetry_off
    from .flow import claim_study

    telemetry_off()
    rows = claim_study(args.claim, args.seeds, args.out, args.repo, args.jobs, args.cell_timeout, **grid)
    print((Path(args.repo) / args.out / f"{args.claim}.md").read_text())
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
