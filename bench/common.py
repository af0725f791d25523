"""Timing and reporting helpers for the GPU benchmarks (torch only; never imported by tests).

Times are medians of CUDA-event-timed repetitions after warm-up (device work is async);
peak memory is what a call allocates above what was already allocated before it (the
inputs' own memory), from torch.cuda.max_memory_allocated.

NSVQ_BENCH_SMOKE=1 runs the scripts on the CPU at toy sizes (Triton kernels under
TRITON_INTERPRET=1, wall-clock times, no memory figures): the numbers mean nothing, but every
code path a GPU session will take runs, so tests/test_bench_smoke.py catches a broken script
before it costs device time.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench"
sys.path.insert(0, str(REPO))
SMOKE = os.environ.get("NSVQ_BENCH_SMOKE") == "1"
DEVICE = "cpu" if SMOKE else "cuda"


def sync() -> None:
    """Wait for the device's queued work (timings of async GPU work need it)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def time_ms(fn: Callable[[], object], warmup: int = 5, reps: int = 30, min_ms: float = 200.0) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` event-timed runs (more if they are short);
    smoke runs: the wall time of one call after one warm-up."""
    if DEVICE != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    reps = max(reps, min(2000, int(min_ms / one)))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object]) -> float:
    """MB allocated at peak by one ``fn()`` call beyond what was allocated before it (NaN off
    the GPU)."""
    if DEVICE != "cuda":
        fn()
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def meta() -> dict:
    return {"device": device_name(), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": _triton_version(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "git_commit": _git_commit()}


def _git_commit() -> str:
    """$NSVQ_GIT_COMMIT (the GPU box gets the tree without .git), else git's HEAD."""
    if os.environ.get("NSVQ_GIT_COMMIT"):
        return os.environ["NSVQ_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return ""


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or Path(os.environ.get("OUT", OUT))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps({"meta": meta(), **payload}, indent=2, sort_keys=True) + "\n")
    return path
