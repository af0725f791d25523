"""A claim's study as a Prefect flow: its cells through the methods study's machinery (DVC
experiments in waves, ``jobs`` at a time), then its tables (report.py)."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from ..study.budget import get_dotted, study_budget
from ..study.flow import baseline_commit, collect, prefect_api_url, run_cells
from .report import write_claim
from .specs import CLAIM_BUDGET, CLAIMS


def claim_budget(root: Path, claim) -> dict[str, str]:
    """The budget every cell of ``claim`` shares, checked against params.yaml."""
    return study_budget(root / "params.yaml", {**CLAIM_BUDGET, **claim.budget})


def check_cell_keys(root: Path, cells) -> None:
    """Every param a cell sets must exist in params.yaml (a typo would fail every cell)."""
    import yaml

    raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    missing = sorted({k for c in cells for k, _ in c.sets if get_dotted(raw, k, KeyError) is KeyError})
    if missing:
        raise ValueError(f"{root / 'params.yaml'}: no such key(s): {', '.join(missing)}")


def claim_command(name: str, seeds: list[int], grid: dict) -> str:
    extra = "".join(f" --{k.replace('_', '-')} {' '.join(map(str, v))}" for k, v in grid.items() if v)
    return f"python -m pipeline.claims run {name} --seeds {' '.join(map(str, seeds))}{extra}"


@flow(name="claim_study")
def claim_study(name: str, seeds: list[int], out_dir: str = "reports/claims", repo: str = ".", jobs: int = 1,
                cell_timeout: float | None = None, **grid) -> list[dict]:
    """Run claim ``name``'s cells (``grid``: methods / codebook_sizes / arms / dims subsets) and
    write its tables; returns the summary rows."""
    from ..study.table import summarize

    t0 = time.monotonic()
    root = Path(repo).resolve()
    claim = CLAIMS[name]
    budget = claim_budget(root, claim)
    cells = claim.cells(seeds, **grid)
    check_cell_keys(root, cells)
    runs = run_cells(root, cells, budget, jobs, cell_timeout)
    df = collect(root, runs, budget, prefect_api_url())
    summary = summarize(df)
    write_claim(root / out_dir, claim, df, summary, claim_command(name, seeds, grid), time.monotonic() - t0,
                budget, baseline_commit(root))
    return summary.to_dict("records")
