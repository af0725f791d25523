"""The methods study as a Prefect flow: one task per (method, K) cell, then the table.

    methods_study(methods, codebook_sizes, overrides=None, out_dir="reports/study")

Cells run one after another (one machine; each cell is a whole training run), K-major so
each K's k-means init is computed once and restored from DVC's run-cache afterwards. A
failing cell is a row marked failed, and the flow goes on (tasks have no retries: a
deterministic pipeline fails the same way twice).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .budget import study_budget
from .cells import CellRun, cell_env, experiment_name, run_cell
from .table import build_table, exp_show, write_table


def resolve_methods(methods: list[str]) -> list[str]:
    """``methods`` checked against the registry; "all": every registered method."""
    from ..quantizers.registry import METHODS

    if "all" in methods:
        return list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    return list(methods)


def prefect_api_url() -> str | None:
    """The API this flow reports to, for the stages' flows: the configured one, or the
    temporary server Prefect started for this process (without it every stage of every
    cell would start and stop its own temporary server, ~20 s each)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    try:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        return server.api_url if server.running else None
    except Exception:    # an internal API; without it the stages still run, only slower
        return None


def study_command(methods: list[str], sizes: list[int], budget: dict[str, str]) -> str:
    from ..quantizers.registry import METHODS

    m = "all" if list(methods) == list(METHODS) else " ".join(methods)
    sets = " ".join(f"--set {k}={v}" for k, v in sorted(budget.items()))
    return f"python -m pipeline.study --methods {m} --codebook-sizes {' '.join(map(str, sizes))} {sets}"


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def ensure_mlflow_experiment(root: Path) -> None:
    """Create the MLflow experiment in the repository's store with the repository's artifact
    folder before any cell: created from inside a temporary copy, it would point there."""
    from mlflow.tracking import MlflowClient

    from ..tracking import experiment_id, tracking_uri

    experiment_id(MlflowClient(tracking_uri=tracking_uri(root)), root)


@task(retries=0, cache_policy=NO_CACHE)
def study_cell(root: Path, method: str, k: int, budget: dict[str, str], api_url: str | None,
               timeout: float | None) -> dict:
    logger = get_run_logger()
    result: CellRun = run_cell(root, method, k, budget, cell_env(root, api_url), timeout, log=logger.info)
    if result.status == "ok":
        logger.info(f"{result.name}: done in {result.wall_seconds:.0f} s")
    else:
        logger.warning(f"{result.name}: FAILED after {result.wall_seconds:.0f} s: {result.error}")
    return result.as_dict()


@task(retries=0, cache_policy=NO_CACHE)
def collect(root: Path, cells: list[dict], budget: dict[str, str], api_url: str | None):
    from ..tracking import experiment_stage_metric

    times = experiment_stage_metric(root, "train_vq", [c["name"] for c in cells], "train_seconds")
    return build_table(cells, exp_show(root, cell_env(root, api_url)), budget, times)


@flow(name="methods_study")
def methods_study(methods: list[str], codebook_sizes: list[int], overrides: dict[str, str] | None = None,
                  out_dir: str = "reports/study", repo: str = ".", cell_timeout: float | None = None) -> list[dict]:
    """Run every (method, K) cell as a DVC experiment and write ``out_dir``/methods.{csv,md}.

    ``overrides`` are the budget keys shared by all cells (see budget.py; None: the default
    budget). Returns the table's rows.
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    methods = resolve_methods(methods)
    budget = study_budget(root / "params.yaml", overrides)
    logger.info("budget: " + ", ".join(f"{k}={v}" for k, v in sorted(budget.items())))
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", "pipeline", "stages", "dvc.yaml")
    if untracked:
        logger.warning("untracked files are not part of the experiments (git add or commit them): "
                       + ", ".join(untracked.split()))
    ensure_mlflow_experiment(root)
    api_url = prefect_api_url()
    cells = [study_cell.with_options(task_run_name=experiment_name(m, k))(root, m, k, budget, api_url, cell_timeout)
             for k in codebook_sizes for m in methods]
    df = collect(root, cells, budget, api_url)
    written = write_table(df, root / out_dir, study_command(methods, codebook_sizes, budget), budget,
                          _git(root, "rev-parse", "--short", "HEAD") or "unknown")
    logger.info("wrote " + ", ".join(str(p) for p in written))
    failed = int((df["status"] != "ok").sum())
    if failed:
        logger.warning(f"{failed} of {len(df)} cells failed (see the status and error columns)")
    return df.to_dict("records")


def telemetry_off() -> None:
    from ..tracking import disable_telemetry

    disable_telemetry()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
