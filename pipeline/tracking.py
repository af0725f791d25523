"""MLflow tracking: one parent run per pipeline execution, one child run per stage.

Store: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo root>/mlflow.db``; artifacts under
``<repo root>/mlartifacts``. Experiment: ``$NSVQ_EXPERIMENT`` or "nsvq-pipeline".

Stages run as separate processes under ``dvc repro``, so they find their parent run by
key: ``$NSVQ_PARENT_RUN_ID`` if set; otherwise the newest parent tagged with the same
pipeline key (a hash of params.yaml and the DVC experiment name) that has no finished child
for this stage yet; otherwise a new parent. One ``dvc repro`` (or one ``dvc exp run``)
therefore collects its stages under one parent, a rerun after a kill continues the same
parent, and a rerun of a stage after a change of params or code starts a new parent. Runs
carry the git commit, and the process that runs them (``nsvq.process``: host, pid, start
time): a run left RUNNING by a process that no longer exists is marked KILLED by the next
stage that starts. The experiment is tagged as model training (MLflow's
``mlflow.experimentKind``), not the GenAI view MLflow 3 opens otherwise.

Nothing here writes into DVC-tracked outputs (no run ids or timestamps there).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

from .configbase import flatten

PARENT_KEY_TAG = "nsvq.pipeline_key"
STAGE_TAG = "nsvq.stage"
PROCESS_TAG = "nsvq.process"
SUMMARY_TAG = "nsvq.summary"            # a stage run's summary as JSON (copied to later parents)
MD5_TAG_PREFIX = "dvc.md5:"              # + output path: DVC's hash of what the run produced
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

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


def process_token() -> str:
    """This process as ``host:pid:start``; the start time (Linux: clock ticks since boot, from
    /proc) tells a live process from a later one that reuses the pid."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def token_alive(token: str) -> bool:
    """Whether the process ``token`` names still runs. A process on another host counts as
    alive (it cannot be checked from here)."""
    import socket

    try:
        host, pid, start = token.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start in ("?", _start_time(pid_n))


def pipeline_key(params_path: Path) -> str:
    h = hashlib.sha256(params_path.read_bytes())
    h.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return h.hexdigest()[:16]


class StageRun:
    """Handle a stage uses to log to its child run (thin wrapper over MlflowClient)."""

    def __init__(self, client, run_id: str, parent_id: str, experiment_id: str = ""):
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.experiment_id = experiment_id
        self.failed = False

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
        self.set_tags({SUMMARY_TAG: json.dumps(numeric, sort_keys=True)})
        if parent_prefix is not None:
            self.log_metrics({f"{parent_prefix}/{k}" if parent_prefix else k: v for k, v in numeric.items()},
                             parent=True)
        return numeric

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def fail(self) -> None:
        """End this stage run FAILED (a user error the stage reports without raising)."""
        self.failed = True

    def set_tags(self, tags: Mapping[str, str], parent: bool = False) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.parent_id if parent else self.run_id, k, str(v)[:5000])

    def record_outputs(self, md5s: Mapping[str, str]) -> None:
        """Tag the run with DVC's hash of each output it produced (``dvc.md5:<path>``): the
        file in DVC's cache, and the run that made an output, are each found from the other."""
        self.set_tags({f"{MD5_TAG_PREFIX}{path}": md5 for path, md5 in md5s.items()})

    def log_dataset(self, manifest_path: str | Path, context: str) -> None:
        """The prepared dataset as this run's (and the parent's) input, by its manifest digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        raw = Path(manifest_path).read_bytes()
        manifest = json.loads(raw)
        digest = hashlib.sha256(raw).hexdigest()
        profile = json.dumps({"counts": manifest.get("counts"), "image_size": manifest.get("image_size"),
                              "manifest_sha256": digest, "shards_sha256": manifest.get("sha256")})
        dataset = Dataset(name=f"prepared:{manifest.get('source')}", digest=digest[:32], source_type="local",
                          source=json.dumps({"uri": str(Path(manifest_path).parent)}), profile=profile)
        for run_id in (self.run_id, self.parent_id):
            self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                                                     context)])])

    def log_pytorch_model(self, name: str, module, input_example, dvc_path: str | Path) -> None:
        """``module`` as an MLflow model of this run (``mlflow.pytorch.load_model(
        "runs:/<run id>/<name>")``), with the project's code bundled so it loads outside the
        repository, and tagged with the DVC hash of the file it was saved to."""
        import mlflow
        import torch

        from .lineage import dvc_md5

        from mlflow.models import infer_signature

        with torch.no_grad():
            out = module(torch.as_tensor(input_example))
        out = out[0] if isinstance(out, tuple) else out          # the autoencoder: (reconstruction, quantizer output)
        signature = infer_signature(input_example, out.numpy())
        mlflow.set_tracking_uri(self.client.tracking_uri)
        # Fluent API on the existing run; the run's status is set by stage_run at the end.
        # MLflow checks the example through pyfunc serving, which wants one output tensor; the
        # autoencoder returns two (reconstruction, quantizer output), so that check's warning is
        # silenced. mlflow.pytorch.load_model returns the module itself.
        serving_check = logging.getLogger("mlflow.models.model")
        level = serving_check.level
        serving_check.setLevel(logging.ERROR)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                module, name=name, input_example=input_example, signature=signature,
                serialization_format="pickle",  # the default "pt2" (torch.export) cannot trace every quantizer
                code_paths=[str(Path(__file__).resolve().parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                tags={"dvc.path": str(dvc_path), "dvc.md5": dvc_md5(dvc_path)})
        serving_check.setLevel(level)
        self.set_tags({f"model.{name}.uri": info.model_uri})


def experiment_id(client, root: Path) -> str:
    name = os.environ.get("NSVQ_EXPERIMENT", "nsvq-pipeline")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri(),
                                            tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently by another stage process
            exp = client.get_experiment_by_name(name)
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def mark_killed_runs(client, exp_id: str) -> list[str]:
    """End KILLED the RUNNING runs whose process (``nsvq.process``) is gone; returns their ids."""
    killed = []
    for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        token = run.data.tags.get(PROCESS_TAG)
        if token and not token_alive(token):
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


def _find_parent(client, exp_id: str, key: str, stage: str) -> str | None:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    parent = runs[0].info.run_id
    children = client.search_runs([exp_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{STAGE_TAG}` = '{stage}' "
        "and attributes.status = 'FINISHED'"), max_results=1)
    return None if children else parent


def run_name(stage: str | None, params: Mapping[str, Any]) -> str:
    """What a run is: the DVC experiment (if any), the method and K, and the stage."""
    q = params.get("quantizer") or {}
    parts = [os.environ.get("DVC_EXP_NAME", ""), f"{q.get('method', '?')} K={q.get('codebook_size', '?')}", stage or ""]
    return " ".join(p for p in parts if p)


@contextlib.contextmanager
def stage_run(stage: str, params_path: str | Path = "params.yaml", tags: Mapping[str, str] | None = None
              ) -> Iterator[StageRun]:
    """Open (or find) the parent run and a child run for ``stage``; close the child on exit.
    Runs of killed attempts are marked KILLED first (:func:`mark_killed_runs`)."""
    import yaml
    from mlflow.tracking import MlflowClient

    disable_telemetry()
    root = repo_root()
    params_path = Path(params_path)
    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp_id = experiment_id(client, root)
    mark_killed_runs(client, exp_id)
    commit = git_commit(root)
    common = {"mlflow.source.git.commit": commit, "git_commit": commit, PROCESS_TAG: process_token(),
              **(tags or {})}
    if os.environ.get("DVC_EXP_NAME"):
        common["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    try:
        raw_params = yaml.safe_load(params_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw_params = {}
    parent_id = os.environ.get("NSVQ_PARENT_RUN_ID")
    if not parent_id:
        key = pipeline_key(params_path)
        parent_id = _find_parent(client, exp_id, key, stage)
        if parent_id is None:
            parent_id = client.create_run(exp_id, run_name=run_name(None, raw_params),
                                          tags={PARENT_KEY_TAG: key, **common}).info.run_id
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, PROCESS_TAG, common[PROCESS_TAG])
    run = client.create_run(exp_id, run_name=run_name(stage, raw_params),
                            tags={"mlflow.parentRunId": parent_id, STAGE_TAG: stage, **common})
    handle = StageRun(client, run.info.run_id, parent_id, exp_id)
    status = "FAILED"
    try:
        yield handle
        status = "FAILED" if handle.failed else "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)
        # The parent runs while a stage runs; each stage leaves it with its own outcome.
        client.set_terminated(parent_id, status)


def experiment_stage_metric(root: Path, stage: str, exp_names: list[str], key: str) -> dict[str, float]:
    """{DVC experiment name: ``key``} of the newest finished run of ``stage`` in each named
    experiment (runs carry ``dvc.exp_name``); names without such a run are left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp = client.get_experiment_by_name(os.environ.get("NSVQ_EXPERIMENT", "nsvq-pipeline"))
    out: dict[str, float] = {}
    for name in exp_names if exp is not None else []:
        runs = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`{STAGE_TAG}` = '{stage}' and tags.`dvc.exp_name` = '{name}' and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs and key in runs[0].data.metrics:
            out[name] = runs[0].data.metrics[key]
    return out


def producer_run(client, exp_id: str, stage: str, path: str, md5: str):
    """The newest finished run of ``stage`` that recorded ``md5`` for output ``path``, or None."""
    runs = client.search_runs([exp_id], filter_string=(
        f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{MD5_TAG_PREFIX}{path}` = '{md5}' "
        "and attributes.status = 'FINISHED'"), order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None
