"""The toy demos as a Prefect flow, so they show in the Prefect UI next to the stages:
one task per stream x method, then the reports. Needs prefect; the rest of the package
does not."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from .report import write_reports
from .runner import run_toy


@task(cache_policy=NO_CACHE, task_run_name="{stream}-{method}")
def toy_run(stream: str, method: str, config: dict):
    return run_toy(stream, method, **config)


@flow(name="toy_drift_demos")
def toy_flow(streams: list[str], methods: list[str], config: dict, out: str = "reports/toy") -> list[Path]:
    results = [toy_run(s, m, config) for s in streams for m in methods]
    return write_reports(results, Path(out))
