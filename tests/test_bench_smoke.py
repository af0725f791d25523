"""The GPU benchmark scripts, run end to end on the CPU at toy sizes (NSVQ_BENCH_SMOKE=1).

GPU time is lent in short sessions; a script that breaks there wastes one. This runs every
part of ``bench/run_all.sh`` exactly as a GPU session would (same script, same order), with the
Triton kernels under TRITON_INTERPRET=1, and checks the JSON each part writes and the summary
keys bench/README.md reports. The numbers are meaningless and are not checked.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")]

SUMMARY_KEYS = {"quantizer_ms_k65536_d8", "quantizer_extra_mb_k65536_d8", "vqpytorch_ms_k65536_d8",
                "nsvq_search_ns_loss_ms_k65536_d8", "kmeans_s_k65536_1m", "train_img_per_s_k65536",
                "train_speedup_vs_eager_fp32", "train_mfu", "device", "date"}


def _smoke_env(out: Path) -> dict:
    env = {**os.environ, "NSVQ_BENCH_SMOKE": "1", "TRITON_INTERPRET": "1", "OUT": str(out),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return env


def _run_part(part: str, out: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "bench" / "run_all.sh"), part], env=_smoke_env(out), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{part}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"


def test_run_all_parts_in_smoke_mode(tmp_path):
    for part in ("kmeans", "quantizer", "train", "profile", "summary"):
        _run_part(part, tmp_path)

    q = json.loads((tmp_path / "quantizer.json").read_text())
    ours = [r for r in q["quantizer_step"] if r["impl"].startswith("ours") and "CUDA graph" not in r["impl"]]
    assert ours and all(math.isfinite(r["ms"]) for r in ours), ours
    assert {r["note"] for r in q["quantizer_step"] if "CUDA graph" in r["impl"]} == {"CUDA graphs need CUDA"}
    assert all(r["grad_rel_err"] <= 1e-4 for r in q["nsvq_search_ns_loss"]), q["nsvq_search_ns_loss"]
    assert q["tf32x3_search"] and all(r["mismatch_frac"] == 0.0 for r in q["tf32x3_search"])

    tr = json.loads((tmp_path / "train.json").read_text())
    steps = {(r["method"], r["step"]) for r in tr["train"]}
    assert ("nsvq", "optimized, tf32x3 quantizer") in steps and ("vq", "eager fp32") in steps
    assert all(r["host_syncs_per_step"] >= 0 for r in tr["train"])
    for prec in ("fp32", "tf32x3"):
        prof = json.loads((tmp_path / f"profile_train_nsvq_{prec}.json").read_text())
        assert prof["groups"][-1]["group"] == "step wall time" and prof["img_per_s"] > 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
    assert summary["device"] == "cpu" and summary["nsvq_search_ns_loss_ms_k65536_d8"] is not None


def test_sweep_part_checks_every_launch_config(tmp_path):
    """``run_all.sh sweep``: bench/sweep_kernels.py runs each kernel's whole sweep; in smoke mode
    at toy sizes under the interpreter, checked and not timed. Every config must run and agree
    with the torch reference (the script's own ``ok``), so a stale sweep key or a crash shows
    up here, not in a GPU session."""
    sys.path.insert(0, str(ROOT / "bench"))
    import sweep_kernels

    _run_part("sweep", tmp_path)
    for kernels, d in itertools.product(("search", "ns"), (8, 64)):
        log = tmp_path / f"sweep_{kernels}_d{d}.log"
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        header, results = lines[0], lines[1:]
        assert (header["device"], header["d"]) == ("cpu", d), header
        sweep = getattr(sweep_kernels, f"{kernels}_sweep")(d)
        assert len(results) == 1 + len(sweep), (log.name, results)   # the default, then every sweep config
        for res in results:
            assert "error" not in res and res["ok"] is True, (log.name, res)
            assert "ms" not in res and "ms_stats" not in res, res      # on the CPU: checked, not timed
