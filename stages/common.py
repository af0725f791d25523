"""What every stage shares: output paths, params loading, the entry point, small writers.

``main(flow)`` validates params.yaml before anything else (a bad key or value exits with
status 2 and a message naming it, having written nothing), switches telemetry off, then
runs the stage's Prefect flow. Without a configured Prefect API the flow runs against
Prefect's local ephemeral server, so stages work offline.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.atomic import atomic_path

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
PRETRAIN_MODEL = Path("models/pretrain.pt")
CODEBOOK_INIT = Path("models/codebook_init.pt")
VQ_MODEL = Path("models/vq.pt")
TOKENIZER = Path("models/tokenizer.pt")
PRIOR_MODEL = Path("models/prior.pt")
TOKENS = Path("data/tokens")
SAMPLES = Path("data/samples")
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"
CHECKPOINTS = Path("checkpoints")


def setup_environment() -> None:
    from pipeline.tracking import disable_telemetry

    disable_telemetry()
    # The ephemeral Prefect server takes 12-25 s to start on a small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")


def load_params():
    from pipeline.config import load_params as _load

    return _load(PARAMS)


def main(flow: Callable[[], Any]) -> None:
    """Entry point of ``python -m stages.<name>``."""
    from pipeline.config import ConfigError

    setup_environment()
    try:
        load_params()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from pipeline.data import DataError

    try:
        flow()
    except (UserFacingError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        _record_imports()


class UserFacingError(RuntimeError):
    """An input problem the user must fix (bad data, missing upstream output)."""


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
    if not path.exists():
        raise UserFacingError(f"{path} is missing: run the '{stage}' stage first (dvc repro {stage})")
    return path


def stage_task(fn=None, **kw):
    """A Prefect task that never caches (stage inputs hold models and MLflow clients; DVC
    already decides what reruns)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    deco = task(cache_policy=NO_CACHE, **kw)
    return deco(fn) if fn is not None else deco
