"""Every Triton kernel compiles for the H100 (sm_90) with its default launch config, without a GPU.

The interpreter tests (test_kernels_triton.py) check the kernels' arithmetic but run them as
Python: they accept things the compiler refuses (a plain Python global inside a jit function
did), and they say nothing about registers. Triton ships ptxas, so the real compile to a cubin
runs on this CPU machine (tools/sm90.py), in a process without TRITON_INTERPRET: here for each
kernel at the bench's shapes, as the host code launches it. Its shared memory must fit an H100
block (a larger launch fails there) and its spill (the per-thread stack), which on the GPU turns
into local-memory traffic in the hot loop, stays bounded (a 64-wide D chunk in the fused dot
kernel spilled 3.7 KB per thread before F_BLOCK_D).

``make gpu-preflight`` runs this file under the lent GPU machine's older Triton as well (its
PYTHONPATH reaches the compile process).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")]

MAX_STACK_BYTES = 512     # the shipped configs: 0-240 bytes (Triton 3.8.0), 0-376 (3.6.0)
ROOT = Path(__file__).resolve().parents[1]


def clean_env() -> dict:
    """This process's environment without the variables that move kernels off the GPU's configs."""
    from tools.sm90 import CONFIG_ENV_VARS

    return {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}


def sm90_tool(*args: str):
    """tools/sm90.py's JSON output, in a process without TRITON_INTERPRET (the GPU's launch configs)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sm90.py"), *args], env=clean_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=None)
def compiled() -> dict:
    """Every kernel compiled once per session."""
    return sm90_tool()


@functools.lru_cache(maxsize=None)
def case_labels() -> list[str]:
    """kernel_cases()'s labels, as the GPU plans its launches (cheap: nothing is compiled)."""
    return sm90_tool("--labels") if importlib.util.find_spec("triton") is not None else []


@pytest.mark.parametrize("label", case_labels())
def test_kernel_compiles_for_sm90_and_fits_an_h100_block(label):
    from tools.sm90 import H100_MAX_SHARED

    res = compiled()["results"][label]
    assert res["stack"] <= MAX_STACK_BYTES, f"{label} spills {res['stack']} bytes per thread ({res})"
    assert res["shared"] <= H100_MAX_SHARED, f"{label} needs {res['shared']} B of shared memory ({res})"
    assert res["regs"] > 0


def test_every_kernel_case_was_compiled():
    assert sorted(compiled()["results"]) == sorted(case_labels())


def test_sass_compare_tool_compares_every_kernel_with_a_commit(tmp_path):
    """tools/sass_compare.py (working tree vs HEAD here): every kernel compiles in both trees and
    is compared; any verdict is allowed, since a developer may be editing a kernel (and HEAD may
    not have it yet)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "sass.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sass_compare.py"), "HEAD", "--json", str(out)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["kernels"]
    assert [r["kernel"] for r in rows] == case_labels()
    assert all(r["sass"] in ("identical", "registers renamed", "differs", "not comparable") and r["instructions"] > 0
               for r in rows), rows


def test_sweep_resources_tool_compiles_the_sweeps_configs(tmp_path):
    """tools/sweep_resources.py compiles each config the GPU sweep times, as the host code would
    launch it (here only the NS kernels' D = 8 configs, to stay quick)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from sweep_kernels import ns_sweep

    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_resources.py"), "--d", "8",
                           "--kernels", "ns", "--json", str(out)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows[::2]] == ns_sweep(8)
    assert all(r["fits"] and r["regs"] > 0 and r["stack"] <= MAX_STACK_BYTES for r in rows), rows


def test_fma_tile_experiment_runs():
    """tools/fma_tile_experiment.py (why the FMA path stays unrolled, tiles.py) still compiles both forms."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "fma_tile_experiment.py")], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "named scalars" in proc.stdout and "BLOCK_D tile" in proc.stdout, proc.stdout
