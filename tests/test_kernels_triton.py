"""Triton kernels (nearest-code search, fused NS-loss statistics) against the torch references.

The checks live in tests/kernels_interp_check.py and run in a subprocess under Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is imported, so not in this
process), on CPU tensors: no GPU needed. A GPU run of the same comparisons at full size is
``python -m pipeline.kernels.search_triton --check`` / ``python -m pipeline.kernels.ns_loss_triton
--check`` (bench/NOTES_kernels.md).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "kernels_interp_check.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton not installed")


def _run(group: str) -> None:
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "1"
    env.pop("NSVQ_SEARCH_BACKEND", None)
    env.pop("NSVQ_SEARCH_CONFIG", None)
    env.pop("NSVQ_NS_CONFIG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(SCRIPT), group], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    print(out)
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    detail = "\n".join(fails or [out[-4000:]])
    assert proc.returncode == 0 and not fails, f"{group}: exit {proc.returncode}\n{detail}"
    assert "0 failures" in proc.stdout, out[-4000:]


def test_search_triton_interpreter():
    """Indices equal nearest_code_torch except near-ties (checked against fp64 distances), the
    returned distance is ||z - c_idx||^2, lowest index on exact ties, split-K, fma and dot paths,
    fp16/bf16 upcast, and the nearest_code(..., backend="triton") dispatch."""
    _run("search")


def test_ns_loss_stats_triton_interpreter():
    """(total, s, M) equal the fp64 statistics within 1e-4 relative (or fp32's own floor where a
    case's tau and norms put it higher): FMA and dot paths, row splits, lam = 0, and arbitrary
    winners that force pass 1's overflow fallback."""
    _run("ns")


def test_ns_search_stats_triton_interpreter():
    """The search fused into the NS loss's row pass: (idx, dist) equal nearest_code_triton's
    (FMA path; dot path: winners nearest within 1e-5), (total, s, M) equal the fp64 statistics for
    those winners (tolerance as above), exact ties, K below one tile, exponents spanning > 2^10, and the
    ns_search_and_loss entry point on both backends."""
    _run("fused")


def test_ns_embedding_loss_triton_interpreter():
    """ns_embedding_loss(backend="triton"): loss and codebook gradient equal the torch backend
    and the dense N x K formulation."""
    _run("loss")


def test_quantizer_steps_on_kernels_interpreter():
    """Every method's forward + backward with the search on the kernels, as on CUDA: no op that
    would make the host wait for the GPU, and no tensor as large as an fp32 N x K one."""
    _run("step")


def test_kernel_modules_import_without_running():
    """The quantizer modules import without triton being used (lazy import of the kernels)."""
    code = ("import pipeline.quantizers.search as s, pipeline.quantizers.ns_loss as n, sys; "
            "assert 'pipeline.kernels.search_triton' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
