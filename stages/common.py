"""What every stage shares: the entry point, the stage's paths and params, small writers.

A stage module is ``work(p, paths, run) -> StageResult`` plus ``run_stage("<name>", work)``, which:

1. switches telemetry off and validates params.yaml: a bad key or value exits with status 2
   and a message naming it, having written nothing;
2. reads the stage's paths from dvc.yaml's ``vars: paths`` (the one place a path is written:
   the stage definitions there use the same names) and the params keys the stage depends on
   (its ``params:`` list in dvc.yaml, templates resolved);
3. runs ``work`` as a Prefect flow (one task) inside an MLflow child run that records those
   params, the step-wise metrics ``work`` logs through ``run``, the summary it returns (also on
   the parent run, under ``<stage>/``), its models by reference and its artifacts;
4. ends a user error (bad data, missing upstream output) with "error: ..." and exit status 2.

Without a configured Prefect API the flow runs against Prefect's local temporary server, so
stages work offline.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from pipeline.atomic import atomic_path

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")


class UserFacingError(RuntimeError):
    """An input problem the user must fix (bad data, missing upstream output)."""


@dataclass
class StageResult:
    summary: dict[str, Any]                                     # logged on the stage run and the parent
    models: dict[str, Path] = field(default_factory=dict)       # name -> file, logged by reference
    artifacts: list[Path] = field(default_factory=list)         # copied into the run's artifacts


def setup_environment() -> None:
    from pipeline.tracking import disable_telemetry

    disable_telemetry()
    # The ephemeral Prefect server takes 12-25 s to start on a small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")


def load_params():
    from pipeline.config import load_params as _load

    return _load(PARAMS)


def _dvc_yaml() -> dict:
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
    paths = {k: Path(v) for k, v in _vars(spec or _dvc_yaml())["paths"].items()}
    return SimpleNamespace(**paths, checkpoint=lambda stage: paths["checkpoints"] / f"{stage}.pt")


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def stage_param_keys(stage: str, raw_params: dict, spec: dict | None = None) -> list[str]:
    """The params keys dvc.yaml lists for ``stage``, ``${...}`` templates resolved against
    params.yaml (as DVC resolves them)."""
    spec = spec or _dvc_yaml()
    scope = {**raw_params, **_vars(spec)}
    keys = []
    for entry in spec["stages"][stage].get("params", []):
        for key in ([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]):
            keys.append(re.sub(r"\$\{([^}]+)\}", lambda m: str(_dotted(scope, m.group(1).strip())), key))
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


def run_stage(name: str, work: Callable[[Any, SimpleNamespace, Any], StageResult], *, headline: bool = False) -> None:
    """Entry point of ``python -m stages.<name>`` (see the module docstring). ``headline``: the
    summary goes to the parent run unprefixed, with every param (evaluate: runs compare on it)."""
    from pipeline.config import ConfigError

    setup_environment()
    try:
        p = load_params()
        paths = stage_paths()
        params = stage_params(name, p)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from prefect import flow

    from pipeline.data import DataError

    @flow(name=name)
    def stage_flow() -> None:
        from pipeline.configbase import flatten, to_dict
        from pipeline.tracking import stage_run

        with stage_run(name) as run:
            run.log_params(params)
            result = stage_task(work, name=name)(p, paths, run)
            run.log_summary(result.summary, parent_prefix="" if headline else name)
            if headline:
                run.log_params(flatten(to_dict(p)), parent=True)
            for model_name, path in result.models.items():
                run.log_model_reference(path, model_name)
            for path in result.artifacts:
                if Path(path).exists():
                    run.log_artifact(path)

    try:
        stage_flow()
    except (UserFacingError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        _record_imports()


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
