"""One cell of a study = one DVC experiment: ``dvc exp run --temp -n <name> -S ...``.

``--temp`` runs the experiment in a temporary copy of the repository (committed code plus
workspace changes to tracked files; untracked files are left out), so the workspace, its
params.yaml included, is never touched and cells cannot see each other's outputs. Stages
whose deps and params match an earlier run (prepare, pretrain, kmeans_init for a K seen
before) are restored from DVC's run-cache instead of rerun, so a cell costs train_vq and
what follows it.

Every cell gets the same budget overrides on top of its method and K (a claim's cells add
their own params: :class:`Cell`), and a stable name, ``study-<method>-k<K>[-<tag>]``. An experiment of that name left by an earlier study is removed
first (DVC refuses a duplicate name, and ``dvc exp run -f`` would also force every stage,
pretraining included, to rerun); a cell identical to an earlier one is then restored from
the run-cache in seconds, so rerunning a study resumes it.

The subprocess environment points MLflow at the repository's own store (a temporary copy
would otherwise create its own mlflow.db and lose it) and Prefect at the API the study runs
against, so the stages' flows and runs land next to the study's; and the FID features of the
validation split at one cache (``<repo>/.cache/fid``, metrics.reference_fid_features).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ERROR_CHARS = 400
#: params sections whose stages every cell shares unless a cell changes them (waves: flow.py)
UPSTREAM = ("data.", "model.", "pretrain.", "kmeans_init.")


@dataclass(frozen=True)
class Cell:
    """One experiment of a study: the method and K, params of its own on top of the study's
    budget (``sets``), the table columns it stands for (``labels``: arm, seed, ...) and a tag
    that makes its name unique (``study-<method>-k<K>-<tag>``)."""
    method: str
    K: int
    sets: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, object], ...] = ()
    tag: str = ""

    @property
    def name(self) -> str:
        return experiment_name(self.method, self.K, self.tag)

    def overrides(self, budget: dict[str, str]) -> dict[str, str]:
        return {**budget, **dict(self.sets)}

    @property
    def upstream(self) -> tuple:
        """What the shared stages (prepare, pretrain, kmeans_init) of this cell depend on."""
        return (self.K, tuple(kv for kv in self.sets if kv[0].startswith(UPSTREAM)))


@dataclass
class CellRun:
    method: str
    K: int
    name: str
    status: str                  # "ok" or "failed"
    error: str = ""
    wall_seconds: float = 0.0    # the whole ``dvc exp run``, restored stages included
    sets: dict = field(default_factory=dict)      # the cell's own params (Cell.sets)
    labels: dict = field(default_factory=dict)    # its table columns (Cell.labels)

    def as_dict(self) -> dict:
        return asdict(self)


def experiment_name(method: str, k: int, tag: str = "") -> str:
    return f"study-{method}-k{k}" + (f"-{tag}" if tag else "")


def set_args(overrides: dict[str, str]) -> list[str]:
    """{"a.b": "1"} -> ["-S", "a.b=1"] in a fixed (sorted) order."""
    return [arg for key in sorted(overrides) for arg in ("-S", f"{key}={overrides[key]}")]


def exp_run_command(method: str, k: int, overrides: dict[str, str], name: str | None = None) -> list[str]:
    cell = {**overrides, "quantizer.method": method, "quantizer.codebook_size": str(k)}
    return [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name or experiment_name(method, k),
            *set_args(cell)]


def cell_env(repo: Path, prefect_api_url: str | None) -> dict[str, str]:
    """The environment of a cell's ``dvc exp run`` (see the module docstring)."""
    from ..tracking import TELEMETRY_OFF, tracking_uri

    env = {**os.environ, **TELEMETRY_OFF, "MLFLOW_TRACKING_URI": tracking_uri(repo.resolve())}
    # Stages run `python -m stages.<name>`: the study's interpreter must be the one found.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    # The cells share one validation split: its FID features are computed by the first cell only.
    env.setdefault("NSVQ_FID_CACHE", str(repo.resolve() / ".cache" / "fid"))
    return env


def error_summary(output: str) -> str:
    """The most telling line of a failed run: a stage's own ``error: ...`` (stages/common.py),
    else a Python exception line, else DVC's ``ERROR: ...``, else the last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pattern in (r"^error: ", r"^\w+(Error|Exception): ", r"^ERROR: "):
        hits = [ln for ln in lines if re.search(pattern, ln)]
        if hits:
            return hits[-1][:ERROR_CHARS]
    return (lines[-1] if lines else "no output")[:ERROR_CHARS]


def remove_experiment(repo: Path, name: str, env: dict[str, str]) -> None:
    """Drop an experiment of this name from the current baseline, if there is one."""
    subprocess.run([sys.executable, "-m", "dvc", "exp", "remove", name], cwd=repo, env=env,
                   capture_output=True, text=True)


def run_cell(repo: Path, method: str, k: int, overrides: dict[str, str], env: dict[str, str],
             timeout: float | None = None, log=print, cell: Cell | None = None) -> CellRun:
    """Run one cell (``cell``: a claim's cell, its own params on top of ``overrides``); never
    raises for a failing experiment (the failure is in the result)."""
    cell = cell or Cell(method, k)
    name = cell.name
    remove_experiment(repo, name, env)
    cmd = exp_run_command(method, k, cell.overrides(overrides), name)
    extra = {"sets": dict(cell.sets), "labels": dict(cell.labels)}
    log("$ " + " ".join(["dvc", *cmd[3:]]))
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CellRun(method, k, name, "failed", f"timed out after {timeout:g} s", time.perf_counter() - t0, **extra)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        return CellRun(method, k, name, "failed", error_summary(out.stdout + "\n" + out.stderr), seconds, **extra)
    return CellRun(method, k, name, "ok", "", seconds, **extra)
