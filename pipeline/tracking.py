"""MLflow tracking: one parent run per pipeline execution, one child run per stage.

Store: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo root>/mlflow.db``; artifacts under
``<repo root>/mlartifacts``. Experiment: ``$NSVQ_EXPERIMENT`` or "nsvq-pipeline".

Stages run as separate processes under ``dvc repro``, so they find their parent run by
key: ``$NSVQ_PARENT_RUN_ID`` if set; otherwise the newest parent tagged with the same
pipeline key (a hash of params.yaml and the DVC experiment name) that has no child for
this stage yet; otherwise a new parent. One ``dvc repro`` (or one ``dvc exp run``)
therefore collects its stages under one parent, and a rerun of a stage after a change
of params or code starts a new parent. Every run carries the git commit as a tag.

Nothing here writes into DVC-tracked outputs (no run ids or timestamps there).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

from .configbase import flatten

PARENT_KEY_TAG = "nsvq.pipeline_key"
STAGE_TAG = "nsvq.stage"

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def disable_telemetry() -> None:
    for k, v in TELEMETRY_OFF.items():
        os.environ.setdefault(k, v)


def repo_root(start: Path | None = None) -> Path:
    """The folder holding dvc.yaml (the DVC/git root), searching upwards from cwd."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists() or (p / ".dvc").is_dir():
            return p
    return here


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pipeline_key(params_path: Path) -> str:
    h = hashlib.sha256(params_path.read_bytes())
    h.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return h.hexdigest()[:16]


class StageRun:
    """Handle a stage uses to log to its child run (thin wrapper over MlflowClient)."""

    def __init__(self, client, run_id: str, parent_id: str):
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id

    def log_params(self, params: Mapping[str, Any], prefix: str = "", parent: bool = False) -> None:
        from mlflow.entities import Param

        flat = flatten(dict(params), prefix)
        items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.parent_id if parent else self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.parent_id if parent else self.run_id, metrics=items)

    def log_summary(self, summary: Mapping[str, Any], parent_prefix: str | None = "") -> dict[str, float]:
        """Log a stage's final summary: its numbers (not bools, strings or lists) go to the
        stage run and, unless ``parent_prefix`` is None, to the parent run as
        ``<parent_prefix>/<key>`` (plain keys for ""), so runs compare side by side."""
        numeric = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_metrics(numeric)
        if parent_prefix is not None:
            self.log_metrics({f"{parent_prefix}/{k}" if parent_prefix else k: v for k, v in numeric.items()},
                             parent=True)
        return numeric

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model_reference(self, path: str | Path, name: str = "checkpoint") -> None:
        """Checkpoints are logged by reference (path + sha256), not copied into the store."""
        path = Path(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.client.set_tag(self.run_id, f"{name}.path", str(path))
        self.client.set_tag(self.run_id, f"{name}.sha256", digest)
        self.client.log_text(self.run_id, json.dumps({"path": str(path), "sha256": digest,
                                                      "bytes": path.stat().st_size}, indent=1),
                             f"{name}_reference.json")


def experiment_id(client, root: Path) -> str:
    name = os.environ.get("NSVQ_EXPERIMENT", "nsvq-pipeline")
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    except Exception:  # created concurrently by another stage process
        return client.get_experiment_by_name(name).experiment_id


def _find_parent(client, exp_id: str, key: str, stage: str) -> str | None:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    parent = runs[0].info.run_id
    children = client.search_runs([exp_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{STAGE_TAG}` = '{stage}'"), max_results=1)
    return None if children else parent


@contextlib.contextmanager
def stage_run(stage: str, params_path: str | Path = "params.yaml") -> Iterator[StageRun]:
    """Open (or find) the parent run and a child run for ``stage``; close the child on exit."""
    from mlflow.tracking import MlflowClient

    disable_telemetry()
    root = repo_root()
    params_path = Path(params_path)
    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp_id = experiment_id(client, root)
    commit = git_commit(root)
    common = {"mlflow.source.git.commit": commit, "git_commit": commit}
    if os.environ.get("DVC_EXP_NAME"):
        common["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    parent_id = os.environ.get("NSVQ_PARENT_RUN_ID")
    if not parent_id:
        key = pipeline_key(params_path)
        parent_id = _find_parent(client, exp_id, key, stage)
        if parent_id is None:
            name = f"pipeline {os.environ.get('DVC_EXP_NAME', '')}".strip()
            parent_id = client.create_run(exp_id, run_name=name,
                                          tags={PARENT_KEY_TAG: key, **common}).info.run_id
    client.update_run(parent_id, status="RUNNING")
    run = client.create_run(exp_id, run_name=stage,
                            tags={"mlflow.parentRunId": parent_id, STAGE_TAG: stage, **common})
    handle = StageRun(client, run.info.run_id, parent_id)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)
        # The parent runs while a stage runs; each stage leaves it with its own outcome.
        client.set_terminated(parent_id, status)
