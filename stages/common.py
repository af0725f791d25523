"""What every stage shares: the entry point, the stage's paths and params, small writers.

A stage module is ``work(p, paths, run) -> StageResult`` plus ``run_stage("<name>", work)``, which:

1. switches telemetry off and validates params.yaml: a bad key or value exits with status 2
   and a message naming it, having written nothing;
2. reads the stage's paths from dvc.yaml's ``vars: paths`` (the one place a path is written:
   the stage definitions there use the same names) and the params keys the stage depends on
   (its ``params:`` list in dvc.yaml, templates resolved);
3. runs a Prefect flow (stages/prefect_run.py: its server, crashed runs, log forwarding) with
   those params as parameters, inside an MLflow child run (pipeline/tracking.py), in four tasks:
   link the two runs, log params, ``work``, and log results (the summary, also on the parent
   under ``<stage>/``; MLflow models; artifacts; DVC's md5 of each output; the prepared dataset
   as the run's input; the summaries of the stages that did not rerun, from the runs that produced their
   current outputs);
4. ends a user error (pipeline/errors.py ``UserError``: bad data, a missing or corrupt file)
   with one "error: ..." line and exit status 2, no traceback unless ``NSVQ_DEBUG=1``.

A stage started with ``ranks=True`` (the training stages) runs on ``distributed.processes``
processes: when that is above 1 and the process is not already one of torchrun's, it hands
itself to torchrun (``--standalone --nproc-per-node N -m stages.<name>``) and exits with its
status. Under torchrun (that one, or a multi-machine ``torchrun --nnodes ...`` a user starts)
rank 0 runs steps 3-4 as above; every other rank runs ``work`` alone, with no Prefect flow, no
MLflow run and a ``run`` whose logging does nothing, and writes nothing (``work`` returns
before its writes on those ranks).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from pipeline.atomic import atomic_path
from pipeline.errors import UserError

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")


class UserFacingError(UserError):
    """An input problem the user must fix (a missing upstream output)."""


@dataclass
class StageResult:
    summary: dict[str, Any]                                     # logged on the stage run and the parent
    artifacts: list[Path] = field(default_factory=list)         # copied into the run's artifacts
    # name -> (module, input example, the DVC-tracked file it was saved to): MLflow models
    mlflow_models: dict[str, tuple[Any, Any, Path]] = field(default_factory=dict)


def setup_environment() -> None:
    from pipeline.tracking import disable_telemetry

    disable_telemetry()
    # The ephemeral Prefect server takes 12-25 s to start on a small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")


def load_params():
    from pipeline.config import load_params as _load

    return _load(PARAMS)


def dvc_yaml() -> dict:
    import yaml

    return yaml.safe_load(DVC_YAML.read_text())


def _vars(spec: dict) -> dict:
    out: dict = {}
    for entry in spec.get("vars", []):
        if isinstance(entry, dict):
            out.update(entry)
    return out


def stage_paths(spec: dict | None = None) -> SimpleNamespace:
    """dvc.yaml's ``vars: paths`` as Paths (``paths.vq_model``), plus ``paths.checkpoint(stage)``."""
    paths = {k: Path(v) for k, v in _vars(spec or dvc_yaml())["paths"].items()}
    return SimpleNamespace(**paths, checkpoint=lambda stage: paths["checkpoints"] / f"{stage}.pt")


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def stage_param_keys(stage: str, raw_params: dict, spec: dict | None = None) -> list[str]:
    """The params keys dvc.yaml lists for ``stage``, ``${...}`` templates resolved against
    params.yaml (as DVC resolves them)."""
    spec = spec or dvc_yaml()
    scope = {**raw_params, **_vars(spec)}
    keys = []
    for entry in spec["stages"][stage].get("params", []):
        for key in ([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]):
            keys.append(_resolve(key, scope))
    return keys


def stage_params(stage: str, p) -> dict[str, Any]:
    """{key: value} of the params ``stage`` depends on (its dvc.yaml list), flattened."""
    from pipeline.configbase import flatten, to_dict

    tree = to_dict(p)
    out = {}
    for key in stage_param_keys(stage, tree):
        value = _dotted(tree, key)
        out.update(flatten(value, key) if isinstance(value, dict) else {key: value})
    return out


def _resolve(text: str, scope: dict) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(_dotted(scope, m.group(1).strip())), text)


def stage_products(stage: str, spec: dict) -> list[str]:
    """The paths ``stage`` writes (its outs, metrics and plots in dvc.yaml), resolved."""
    scope = _vars(spec)
    entry = spec["stages"][stage]
    out = []
    for kind in ("outs", "metrics", "plots"):
        for item in entry.get(kind, []):
            out.append(_resolve(item if isinstance(item, str) else next(iter(item)), scope))
    return out


def downstream(stage: str, spec: dict) -> set[str]:
    """The stages that depend (directly or through others) on ``stage``'s outputs."""
    scope = _vars(spec)
    deps = {s: {_resolve(d, scope) for d in e.get("deps", [])} for s, e in spec["stages"].items()}
    found, frontier = set(), {stage}
    while frontier:
        made = {p for s in frontier for p in stage_products(s, spec)}
        frontier = {s for s, d in deps.items() if s not in found and s != stage and d & made}
        found |= frontier
    return found


def exit_on_user_error(e: BaseException) -> None:
    """End the process for a user error: one "error:" line and exit status 2 (``NSVQ_DEBUG=1``:
    raise it, with its traceback)."""
    if os.environ.get("NSVQ_DEBUG"):
        raise e
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_stage(name: str, work: Callable[[Any, SimpleNamespace, Any], StageResult], *, headline: bool = False,
              ranks: bool = False) -> None:
    """Entry point of ``python -m stages.<name>`` (see the module docstring). ``headline``: the
    summary goes to the parent run unprefixed, with every param (evaluate: runs compare on it).
    ``ranks``: the stage runs on ``distributed.processes`` processes under torchrun."""
    setup_environment()
    debug = bool(os.environ.get("NSVQ_DEBUG"))
    try:
        p = load_params()
        spec = dvc_yaml()
        paths = stage_paths(spec)
        params = stage_params(name, p)
    except UserError as e:
        exit_on_user_error(e)
    if ranks:
        from pipeline import distributed

        if p.distributed.processes > 1 and not under_torchrun():
            sys.exit(launch_torchrun(name, p.distributed.processes))
        if not distributed.is_main():
            try:
                work(p, paths, SilentRun())
            except UserError as e:
                # Rank 0 runs the same work and meets the same error: waiting lets its one line
                # be the report (torchrun then stops this rank). An error only this rank meets
                # (a file missing on its machine) is reported after the wait.
                time.sleep(RANK_ERROR_GRACE_S)
                exit_on_user_error(e)
            finally:
                distributed.close()
            return
    from prefect import flow, tags

    from stages.prefect_run import crash_orphaned_flow_runs, forward_library_logs, process_tag, use_prefect_api

    user_error: list[BaseException] = []

    @flow(name=name, log_prints=True, validate_parameters=False, flow_run_name=run_name_of(name, p))
    def stage_flow(params: dict) -> Any:
        from prefect.states import Failed

        from pipeline.tracking import stage_run

        with stage_run(name, tags={"nsvq.headline": "1"} if headline else None) as run:
            stage_task(link_flow_run, name="link runs")(run)
            stage_task(log_params, name="log params")(run, params, p, headline)
            state = stage_task(_guarded(work, user_error, debug), name=name)(p, paths, run, return_state=True)
            if user_error:
                run.fail()
                return Failed(message=f"error: {user_error[0]}")
            result = state.result()
            stage_task(log_results, name="log results")(run, name, result, spec, paths, headline)

    try:
        use_prefect_api()
        with forward_library_logs():
            crash_orphaned_flow_runs(name)
            with tags(process_tag()):
                state = stage_flow(params, return_state=True)
        if not user_error and state.is_failed():
            state.result()           # an unexpected error: raised again, with its traceback
    except UserError as e:           # raised outside the stage's work (a tracking input)
        exit_on_user_error(e)
    finally:
        _record_imports()
        if ranks:
            from pipeline import distributed

            distributed.close()
    if user_error:
        exit_on_user_error(user_error[0])


#: How long a rank other than 0 waits, after a user error, for rank 0 to report it (rank 0 may
#: first start a Prefect server: 10-20 s here).
RANK_ERROR_GRACE_S = 60


def under_torchrun() -> bool:
    """True in a process torchrun started (it sets TORCHELASTIC_RUN_ID and LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_torchrun(name: str, processes: int) -> int:
    """Run ``stages.<name>`` on ``processes`` local processes through torchrun's launcher (in
    this process, as the ``torchrun`` command does); returns the exit status: a rank's own when
    one failed (2 for a user error it reported), else 0. torchrun stops the other ranks when one
    fails and names the failed rank."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from pipeline.training.device import pick_device

    if pick_device().type == "cuda" and processes > torch.cuda.device_count():
        exit_on_user_error(UserFacingError(
            f"distributed.processes: {processes} processes need as many GPUs, this machine has "
            f"{torch.cuda.device_count()} (or set NSVQ_DEVICE=cpu)"))

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", f"stages.{name}"])
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()     # the root cause; the others were stopped by torchrun
        if failure.exitcode == 2:                 # a user error: the rank printed its one line
            return 2
        print(f"error: {name}: rank {rank} of {processes} failed (exit status {failure.exitcode}); "
              "the other ranks were stopped", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


class SilentRun:
    """The ``run`` of a rank other than 0: its logging goes nowhere (rank 0 logs the run)."""

    def log_metrics(self, *args, **kwargs) -> None:
        pass


def run_name_of(stage: str, p) -> str:
    from pipeline.configbase import to_dict
    from pipeline.tracking import run_name

    return run_name(stage, to_dict(p))


def _guarded(work, user_error: list, debug: bool):
    """``work`` with a user error caught and kept (the stage reports it in one line), so
    Prefect does not log its traceback; any other exception propagates with its traceback."""

    def guarded(p, paths, run):
        try:
            return work(p, paths, run)
        except UserError as e:
            if debug:
                raise
            user_error.append(e)
            return None
    guarded.__name__ = getattr(work, "__name__", "work")
    return guarded


def link_flow_run(run) -> None:
    """Each side names the other: the MLflow run gets the flow run's id, the flow run a link
    artifact to the MLflow run (``$MLFLOW_UI_URL``, default http://127.0.0.1:5000)."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    run.set_tags({"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name})
    ui = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    create_link_artifact(link=f"{ui}/#/experiments/{run.experiment_id}/runs/{run.run_id}", link_text=f"MLflow run {run.run_id}",
                         description="The MLflow run of this stage (its params, curves, models)")


def log_params(run, params: dict, p, headline: bool) -> None:
    from pipeline.configbase import flatten, to_dict

    run.log_params(params)
    if headline:
        run.log_params(flatten(to_dict(p)), parent=True)


def log_results(run, name: str, result: StageResult, spec: dict, paths, headline: bool) -> None:
    """The stage's summary (its run and the parent), its models, its artifacts, DVC's hash of
    each output, the prepared dataset (after the work: prepare has just written it); then the
    parent gets the summary of every other stage that did not rerun, from the run that
    produced that stage's current outputs."""
    from pipeline.lineage import dvc_md5

    run.log_summary(result.summary, parent_prefix="" if headline else name)
    run.record_outputs({path: dvc_md5(path) for path in stage_products(name, spec) if Path(path).exists()})
    for model_name, (module, example, path) in result.mlflow_models.items():
        run.log_pytorch_model(model_name, module, example, path)
    for path in result.artifacts:
        if Path(path).exists():
            run.log_artifact(path)
    manifest = Path(paths.prepared) / "manifest.json"
    if manifest.exists():
        run.log_dataset(manifest, "evaluation" if headline else "training")
    fill_parent(run, name, spec)


def fill_parent(run, name: str, spec: dict) -> None:
    """Copy onto the parent the summary of each stage that neither ran under it nor runs after
    ``name``: the values of the run that produced that stage's current outputs (found by the
    DVC hash dvc.lock records for its first output), so parents of partial reruns compare."""
    import json as _json

    from pipeline.lineage import lock_outs
    from pipeline.tracking import STAGE_TAG, SUMMARY_TAG, producer_run

    exp = run.experiment_id
    ran = {r.data.tags.get(STAGE_TAG) for r in run.client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{run.parent_id}' and attributes.status != 'KILLED'")}
    later = downstream(name, spec)
    for other in spec["stages"]:
        if other in ran or other in later or other == name:
            continue
        products = stage_products(other, spec)
        md5 = lock_outs(other).get(products[0]) if products else None
        source = producer_run(run.client, exp, other, products[0], md5) if md5 else None
        if source is None:
            continue
        summary = _json.loads(source.data.tags.get(SUMMARY_TAG, "{}"))
        prefix = "" if source.data.tags.get("nsvq.headline") else f"{other}/"
        run.log_metrics({f"{prefix}{k}": v for k, v in summary.items()}, parent=True)
        run.set_tags({f"nsvq.summary_from.{other}": source.info.run_id}, parent=True)


def stage_task(fn, **kw):
    """A Prefect task that never caches (stage inputs hold models and MLflow clients; DVC
    already decides what reruns)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(cache_policy=NO_CACHE, **kw)(fn)


def _record_imports() -> None:
    """Test hook: write the repo's own modules this stage ran to $NSVQ_RECORD_IMPORTS/<stage>.txt
    (tests/test_pipeline_e2e.py checks them against the stage's deps in dvc.yaml)."""
    out = os.environ.get("NSVQ_RECORD_IMPORTS")
    if not out:
        return
    root = Path.cwd().resolve()
    # Only absolute module paths: a few of torch's internal modules carry a bare relative __file__.
    paths = [Path(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)]
    files = sorted({str(p.resolve().relative_to(root)) for p in paths
                    if p.is_absolute() and p.resolve().is_relative_to(root)})
    stage = sys.modules["__main__"].__spec__.name.rsplit(".", 1)[-1]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{stage}.txt").write_text("\n".join(files) + "\n")


# ---------------------------------------------------------------------------------------------- writers
def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file via a temp file + rename, so a crash never leaves it half-written."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, floats rounded to 6 significant digits)."""
    def rnd(v):
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rnd(x) for x in v]
        return v
    write_atomic(path, json.dumps(rnd(obj), indent=2, sort_keys=True) + "\n")


# Numbers that differ between two runs of the same inputs (wall time, where a run resumed):
# they go to MLflow only, never into DVC-tracked reports, so a rerun leaves git clean and
# nothing downstream stale.
RUN_DEPENDENT = frozenset({"train_seconds", "resumed_from_step"})


def write_report(path: Path, summary: dict[str, Any]) -> None:
    """A stage's DVC-tracked report: its summary without the run-dependent numbers."""
    write_json(path, {k: v for k, v in summary.items() if k not in RUN_DEPENDENT})


def write_history_csv(path: Path, history: list[dict[str, float]]) -> None:
    """Loss curves as CSV for `dvc plots` (one row per logged step)."""
    keys = ["step"] + sorted({k for row in history for k in row} - {"step"})
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join("" if row.get(k) is None else f"{row[k]:.6g}" for k in keys))
    write_atomic(path, "\n".join(lines) + "\n")


def require(path: Path, stage: str) -> Path:
    """``path``, or a UserFacingError telling which stage writes it."""
    if not Path(path).exists():
        raise UserFacingError(f"{path} is missing: run the '{stage}' stage first (dvc repro {stage})")
    return Path(path)


def npy_bytes(array) -> bytes:
    """An array as .npy file bytes (no pickle)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_folder(path: Path, files: dict[str, bytes | str]) -> None:
    """A folder of files that appears complete or not at all (replacing what was there)."""
    from pipeline.atomic import atomic_dir

    with atomic_dir(path) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
