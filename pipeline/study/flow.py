"""The methods study as a Prefect flow: one task per (method, K) cell, then the table.

    methods_study(methods, codebook_sizes, overrides=None, out_dir="reports/study")

Cells are ``dvc exp run --temp`` subprocesses, each in its own temporary copy of the
repository, so ``jobs`` of them run at once through Prefect's thread-pool task runner (the
flow already runs each cell as a task, with its log, timeout and failure row; DVC's own queue,
``dvc queue start --jobs N``, would run the same experiments through Celery workers outside
the flow, and report failures only through ``dvc queue logs``). They go in three waves so that
the shared stages are computed once and restored from DVC's run-cache afterwards: the first
cell alone (prepare, pretrain, its K's k-means), then the first cell of each other K (its
k-means), then all the others. Each running cell holds a slot: with GPUs, slot i is pinned to
its share of them (``CUDA_VISIBLE_DEVICES``); on the CPU the cores are shared out
(``OMP_NUM_THREADS``), since two torch processes each using every core thrash. A wave of fewer
cells than ``jobs`` (the first one) shares the machine among its cells only. A failing cell
is a row marked failed, and the flow goes on (tasks have no retries: a deterministic pipeline
fails the same way twice).
"""
from __future__ import annotations

import os
import queue
import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .budget import study_budget
from .cells import Cell, CellRun, cell_env, run_cell
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


def baseline_commit(root: Path) -> str:
    """The short hash of the commit the study's experiments are based on."""
    return _git(root, "rev-parse", "--short", "HEAD") or "unknown"


def ensure_mlflow_experiment(root: Path) -> None:
    """Create the MLflow experiment in the repository's store with the repository's artifact
    folder before any cell: created from inside a temporary copy, it would point there."""
    from mlflow.tracking import MlflowClient

    from ..tracking import experiment_id, tracking_uri

    experiment_id(MlflowClient(tracking_uri=tracking_uri(root)), root)


def cell_slots(jobs: int, gpus: int | None = None, cores: int | None = None) -> list[dict[str, str]]:
    """The environment each of ``jobs`` concurrent cells runs with: its own GPUs (``gpus``
    split into ``jobs`` contiguous groups; a GPU count below ``jobs`` is an error), else its
    share of the ``cores`` as torch threads. ``jobs == 1``: the machine as it is."""
    if jobs == 1:
        return [{}]
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if os.environ.get("NSVQ_DEVICE", "cuda").startswith("cuda") else 0
    if gpus:
        if gpus < jobs:
            raise ValueError(f"--jobs {jobs} needs at least {jobs} GPUs (one per cell), this machine has {gpus}")
        per = gpus // jobs
        return [{"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(i * per, (i + 1) * per))} for i in range(jobs)]
    cores = cores or len(os.sched_getaffinity(0))
    return [{"OMP_NUM_THREADS": str(max(1, cores // jobs))} for _ in range(jobs)]


def cell_waves(cells: list, key=lambda c: c[1]) -> list[list]:
    """Cells in K-major order -> [first cell], [first cell of each other ``key`` (K for (method, K)
    pairs; :attr:`Cell.upstream` for a study's cells)], [the rest]."""
    if not cells:
        return []
    leaders = [next(c for c in cells if key(c) == k) for k in dict.fromkeys(key(c) for c in cells)]
    return [w for w in ([cells[0]], leaders[1:], [c for c in cells if c not in leaders]) if w]


_SLOTS: "queue.Queue[dict[str, str]]" = queue.Queue()


@task(retries=0, cache_policy=NO_CACHE)
def study_cell(root: Path, cell: Cell, budget: dict[str, str], api_url: str | None, timeout: float | None) -> dict:
    logger = get_run_logger()
    slot = _SLOTS.get()           # blocks until a slot is free (one per concurrent cell)
    try:
        env = {**cell_env(root, api_url), **slot}
        if slot:
            logger.info(f"{cell.name}: " + " ".join(f"{key}={v}" for key, v in slot.items()))
        result: CellRun = run_cell(root, cell.method, cell.K, budget, env, timeout, log=logger.info, cell=cell)
    finally:
        _SLOTS.put(slot)
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


def methods_study(methods: list[str], codebook_sizes: list[int], overrides: dict[str, str] | None = None,
                  out_dir: str = "reports/study", repo: str = ".", cell_timeout: float | None = None,
                  jobs: int = 1) -> list[dict]:
    """Run every (method, K) cell as a DVC experiment, ``jobs`` at a time, and write
    ``out_dir``/methods.{csv,md}.

    ``overrides`` are the budget keys shared by all cells (see budget.py; None: the default
    budget). Returns the table's rows.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    from prefect.task_runners import ThreadPoolTaskRunner

    cell_slots(jobs)               # fails early when there are fewer GPUs than jobs
    runner = ThreadPoolTaskRunner(max_workers=jobs)
    return _methods_study.with_options(task_runner=runner)(methods, codebook_sizes, overrides, out_dir, repo,
                                                            cell_timeout, jobs)


def _fill_slots(n: int) -> None:
    """The slots of a wave of ``n`` concurrent cells (the previous wave has ended)."""
    while not _SLOTS.empty():
        _SLOTS.get_nowait()
    for slot in cell_slots(n):
        _SLOTS.put(slot)


def run_cells(root: Path, cells: list[Cell], budget: dict[str, str], jobs: int, cell_timeout: float | None) -> list[dict]:
    """Run ``cells`` (inside a flow) in waves, ``jobs`` at a time; their CellRun dicts, in order."""
    logger = get_run_logger()
    logger.info("budget: " + ", ".join(f"{k}={v}" for k, v in sorted(budget.items())))
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", "pipeline", "stages", "dvc.yaml")
    if untracked:
        logger.warning("untracked files are not part of the experiments (git add or commit them): "
                       + ", ".join(untracked.split()))
    ensure_mlflow_experiment(root)
    api_url = prefect_api_url()
    done = {}
    for wave in cell_waves(cells, key=lambda c: c.upstream):
        _fill_slots(min(jobs, len(wave)))
        futures = [study_cell.with_options(task_run_name=c.name).submit(root, c, budget, api_url, cell_timeout)
                   for c in wave]
        done.update({c.name: f.result() for c, f in zip(wave, futures)})
    return [done[c.name] for c in cells]


@flow(name="methods_study")
def _methods_study(methods: list[str], codebook_sizes: list[int], overrides: dict[str, str] | None,
                   out_dir: str, repo: str, cell_timeout: float | None, jobs: int = 1) -> list[dict]:
    logger = get_run_logger()
    root = Path(repo).resolve()
    methods = resolve_methods(methods)
    budget = study_budget(root / "params.yaml", overrides)
    cells = run_cells(root, [Cell(m, k) for k in codebook_sizes for m in methods], budget, jobs, cell_timeout)
    df = collect(root, cells, budget, prefect_api_url())
    written = write_table(df, root / out_dir, study_command(methods, codebook_sizes, budget), budget,
                          baseline_commit(root))
    logger.info("wrote " + ", ".join(str(p) for p in written))
    failed = int((df["status"] != "ok").sum())
    if failed:
        logger.warning(f"{failed} of {len(df)} cells failed (see the status and error columns)")
    return df.to_dict("records")


def telemetry_off() -> None:
    from ..tracking import disable_telemetry

    disable_telemetry()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
