"""Every Triton kernel compiles for the H100 (sm_90) with its default launch config, without a GPU.

The interpreter tests (test_kernels_triton.py) check the kernels' arithmetic but run them as
Python: they accept things the compiler refuses (a plain Python global inside a jit function
did), and they say nothing about registers. Triton ships ptxas, so the real compile to a cubin
runs on this CPU machine: this test does it for each kernel at the bench's shapes and bounds
the spill (the per-thread stack), which on the GPU turns into local-memory traffic in the hot
loop (a 64-wide D chunk in the fused dot kernel spilled 3.7 KB per thread before F_BLOCK_D).

The lent GPU machine's image has an older Triton (3.6.0) than torch 2.14.1 brings here (3.8.0),
and device time is scarce, so the same compile also runs under that version: `make test`
installs it into .cache/triton-gpu (Makefile: GPU_TRITON) and this file, run as a script with
that folder first on PYTHONPATH, compiles every kernel and prints the resource usage as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")]

MAX_STACK_BYTES = 512     # the shipped configs: 0-232 bytes


def _ptr(dtype="fp32"):
    return f"*{dtype}"


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 1) -> dict:
    """Compile ``fn`` for sm_90; {"regs", "stack"} from cuobjdump's resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", usage)
    assert m, usage
    return {"regs": int(m.group(1)), "stack": int(m.group(2))}


def kernel_cases():
    """(label, kernel, signature, constexprs, num_warps, num_stages) at N = 16,384, K = 65,536."""
    from pipeline.kernels import ns_fused_triton as nf
    from pipeline.kernels import ns_loss_triton as nt
    from pipeline.kernels import search_triton as st

    f32, i32, i64 = "*fp32", "*i32", "*i64"
    search_sig = dict(z_ptr=f32, p_ptr=f32, cb_ptr=f32, idx_ptr=i64, dist_ptr=f32, pval_ptr=f32, pidx_ptr=i32,
                      N="i32", T="i32", T_SPLIT="i32")
    rows_sig = dict(z_ptr=f32, p_ptr=f32, win_ptr=i32, zsq_ptr=f32, crow_ptr=f32, N="i32", T="i32",
                    neg_a="fp32", log2_lamk="fp32")
    codes_sig = dict(z_ptr=f32, win_ptr=i64, zsq_ptr=f32, crow_ptr=f32, p_ptr=f32, s_ptr=f32, m_ptr=f32,
                     tot_ptr=f32, N="i32", K="i32", ROWS_PER_SPLIT="i32", neg_a="fp32")
    fused_sig = dict(z_ptr=f32, p_ptr=f32, cb_ptr=f32, idx_ptr=i64, dist_ptr=f32, zsq_ptr=f32, crow_ptr=f32,
                     N="i32", T="i32", a="fp32", log2_lamk="fp32")
    n, k = 16_384, 65_536
    cases = []
    for d in (8, 64):
        sc = st.default_config(n, k, d)
        ns = nt.default_ns_config(n, k, d)
        dot = d > st.FMA_MAX_D
        dp = st.padded_dim(d, dot)
        for prec in ("ieee", "tf32x3") if dot else ("ieee",):
            cfg = dict(ns, precision=prec)
            tag = f"D={d} {prec}"
            if dot:
                cases.append((f"search dot {tag}", st._search_dot_kernel, search_sig,
                              dict(D=d, DP=dp, BLOCK_D=st.dot_block_d(d), BLOCK_N=sc["BLOCK_N"], BLOCK_K=sc["BLOCK_K"],
                                   SPLIT=False, PRECISION=prec, BLOCK_DD=64), sc["num_warps"], sc["num_stages"]))
                cases.append((f"NS pass 1 dot {tag}", nt._ns_rows_dot_kernel, rows_sig,
                              dict(D=d, DP=dp, BLOCK_D=min(32, st.dot_block_d(d)), BLOCK_N=cfg["R_BLOCK_N"],
                                   BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec), cfg["R_num_warps"], 1))
                cases.append((f"NS pass 2 dot {tag}", nt._ns_codes_dot_kernel, codes_sig,
                              dict(D=d, DP=dp, BLOCK_D=st.dot_block_d(d), BLOCK_R=cfg["C_BLOCK_R"],
                                   BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec), cfg["C_num_warps"], 1))
                cases.append((f"fused search + NS pass 1 dot {tag}", nf._ns_fused_rows_dot_kernel, fused_sig,
                              dict(D=d, DP=dp, BLOCK_D=nf.fused_block_d(cfg, d), BLOCK_N=cfg["F_BLOCK_N"],
                                   BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec, BLOCK_DD=64), cfg["F_num_warps"], 1))
            else:
                cases.append((f"search fma {tag}", st._search_fma_kernel, search_sig,
                              dict(D=d, BLOCK_N=sc["BLOCK_N"], BLOCK_K=sc["BLOCK_K"], SPLIT=False),
                              sc["num_warps"], sc["num_stages"]))
                cases.append((f"NS pass 1 {tag}", nt._ns_rows_kernel, rows_sig,
                              dict(D=d, BLOCK_N=cfg["R_BLOCK_N"], BLOCK_K=cfg["R_BLOCK_K"]), cfg["R_num_warps"], 1))
                cases.append((f"NS pass 2 {tag}", nt._ns_codes_kernel, codes_sig,
                              dict(D=d, PBK=cfg["R_BLOCK_K"], BLOCK_K=cfg["C_BLOCK_K"]), cfg["C_num_warps"], 1))
                cases.append((f"fused search + NS pass 1 {tag}", nf._ns_fused_rows_kernel, fused_sig,
                              dict(D=d, BLOCK_N=cfg["F_BLOCK_N"], BLOCK_K=cfg["R_BLOCK_K"]), cfg["F_num_warps"], 1))
    return cases


def compile_every_kernel() -> dict:
    """{label: {"regs", "stack"}} for every kernel_cases() entry, with the GPU's launch configs
    (not the interpreter's, and not a config overridden through the environment)."""
    for var in ("TRITON_INTERPRET", "NSVQ_SEARCH_CONFIG", "NSVQ_NS_CONFIG"):
        os.environ.pop(var, None)
    return {label: compile_sm90(fn, sig, consts, warps, stages)
            for label, fn, sig, consts, warps, stages in kernel_cases()}


def check_resources(results: dict) -> None:
    heavy = {k: v for k, v in results.items() if v["stack"] > MAX_STACK_BYTES}
    assert not heavy, f"kernels spilling more than {MAX_STACK_BYTES} bytes per thread: {heavy}"
    assert len(results) == 4 + 2 * 4


def test_every_kernel_compiles_for_sm90_without_heavy_spills(monkeypatch):
    for var in ("TRITON_INTERPRET", "NSVQ_SEARCH_CONFIG", "NSVQ_NS_CONFIG"):
        monkeypatch.delenv(var, raising=False)     # restored after the test
    results = compile_every_kernel()
    print(results)
    check_resources(results)


GPU_TRITON_DIR = Path(__file__).resolve().parents[1] / ".cache" / "triton-gpu"


def test_every_kernel_compiles_under_the_gpu_images_triton():
    """The same compile under the Triton that `make test` put in .cache/triton-gpu (the GPU
    image's version), in a subprocess so that it is the one imported."""
    if not (GPU_TRITON_DIR / "triton" / "__init__.py").is_file():
        pytest.fail(f"no Triton at {GPU_TRITON_DIR}: `make test` installs the GPU image's version there "
                    "(pip install --no-deps --target .cache/triton-gpu triton==<Makefile's GPU_TRITON>)",
                    pytrace=False)
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NSVQ_SEARCH_CONFIG", "NSVQ_NS_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join([str(GPU_TRITON_DIR), root] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert Path(out["triton_file"]).resolve().is_relative_to(GPU_TRITON_DIR.resolve()), out["triton_file"]
    check_resources(out["results"])


if __name__ == "__main__":      # the subprocess of the test above
    import triton

    print(json.dumps({"triton": triton.__version__, "triton_file": triton.__file__,
                      "results": compile_every_kernel()}))
