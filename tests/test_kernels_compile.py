"""Every Triton kernel compiles for the H100 (sm_90) with its default launch config, without a GPU.

The interpreter tests (test_kernels_triton.py) check the kernels' arithmetic but run them as
Python: they accept things the compiler refuses (a plain Python global inside a jit function
did), and they say nothing about registers. Triton ships ptxas, so the real compile to a cubin
runs on this CPU machine (pipeline/kernels/sm90.py): this test does it for each kernel at the
bench's shapes, as the host code launches it, bounds its shared memory by the H100's (a larger
launch fails there) and bounds the spill (the per-thread stack), which on the GPU turns into
local-memory traffic in the hot loop (a 64-wide D chunk in the fused dot kernel spilled 3.7 KB
per thread before F_BLOCK_D).

The lent GPU machine's image has an older Triton (3.6.0) than torch 2.14.1 brings here (3.8.0),
and device time is scarce, so the same compile also runs under that version: `make test`
installs it into .cache/triton-gpu (Makefile: GPU_TRITON) and this file, run as a script with
that folder first on PYTHONPATH, compiles every kernel and prints the resource usage as JSON.
"""
from __future__ import annotations

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
# search, NS pass 1, pass 2, fused: at D = 8, and at D = 64 in two precisions; the search's split-K
# merge at both D (at the bench's N the auto split applies)
N_KERNELS = 4 + 2 * 4 + 2
ROOT = Path(__file__).resolve().parents[1]


def compile_every_kernel() -> dict:
    """{label: {"regs", "stack", "shared"}} for every kernel_cases() entry (callers unset
    sm90.CONFIG_ENV_VARS, so these are the GPU's launch configs)."""
    from pipeline.kernels.sm90 import compile_sm90, kernel_cases, resource_usage

    return {c.label: resource_usage(compile_sm90(c.fn, c.signature, c.constexprs, c.num_warps, c.num_stages))
            for c in kernel_cases()}


def check_resources(results: dict) -> None:
    from pipeline.kernels.sm90 import H100_MAX_SHARED

    heavy = {k: v for k, v in results.items() if v["stack"] > MAX_STACK_BYTES}
    assert not heavy, f"kernels spilling more than {MAX_STACK_BYTES} bytes per thread: {heavy}"
    too_big = {k: v for k, v in results.items() if v["shared"] > H100_MAX_SHARED}
    assert not too_big, f"kernels needing more shared memory than an H100 block has ({H100_MAX_SHARED} B): {too_big}"
    assert len(results) == N_KERNELS


def test_every_kernel_compiles_for_sm90_without_heavy_spills(monkeypatch):
    from pipeline.kernels.sm90 import CONFIG_ENV_VARS

    for var in CONFIG_ENV_VARS:
        monkeypatch.delenv(var, raising=False)     # restored after the test
    results = compile_every_kernel()
    print(results)
    check_resources(results)


GPU_TRITON_DIR = ROOT / ".cache" / "triton-gpu"


def test_every_kernel_compiles_under_the_gpu_images_triton():
    """The same compile under the Triton that `make test` put in .cache/triton-gpu (the GPU
    image's version), in a subprocess so that it is the one imported."""
    if not (GPU_TRITON_DIR / "triton" / "__init__.py").is_file():
        pytest.fail(f"no Triton at {GPU_TRITON_DIR}: `make test` installs the GPU image's version there "
                    "(pip install --no-deps --target .cache/triton-gpu triton==<Makefile's GPU_TRITON>)",
                    pytrace=False)
    from pipeline.kernels.sm90 import CONFIG_ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(GPU_TRITON_DIR), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert Path(out["triton_file"]).resolve().is_relative_to(GPU_TRITON_DIR.resolve()), out["triton_file"]
    check_resources(out["results"])


def test_sass_compare_tool_compares_every_kernel_with_a_commit(tmp_path):
    """bench/sass_compare.py (working tree vs HEAD here): every kernel compiles in both trees and
    is compared; any verdict but "not comparable" is allowed, since a developer may be editing a
    kernel."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "sass.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sass_compare.py"), "HEAD", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["kernels"]
    assert len(rows) == N_KERNELS
    assert all(r["sass"] in ("identical", "registers renamed", "differs") and r["instructions"] > 0
               for r in rows), rows


def test_sweep_resources_tool_compiles_the_sweeps_configs(tmp_path):
    """bench/sweep_resources.py compiles each config the GPU sweep times, as the host code would
    launch it (here only the fused kernel's D = 8 configs, to stay quick)."""
    from pipeline.kernels.ns_fused_triton import sweep_configs

    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep_resources.py"), "--d", "8",
                           "--module", "ns_fused_triton", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == sweep_configs(8)
    assert all(r["fits"] and r["regs"] > 0 and r["stack"] <= MAX_STACK_BYTES for r in rows), rows


if __name__ == "__main__":      # the subprocess of test_every_kernel_compiles_under_the_gpu_images_triton
    import triton

    print(json.dumps({"triton": triton.__version__, "triton_file": triton.__file__,
                      "results": compile_every_kernel()}))
