"""Compile the Triton kernels for the H100 (sm_90) on a machine without a GPU.

Triton ships ptxas and cuobjdump, so the real compile to a cubin runs on the CPU. Two uses:

- tests/test_kernels_compile.py: every kernel compiles at its default launch config, and its
  per-thread stack (register spills, which become local-memory traffic in the hot loop) stays
  bounded;
- bench/sass_compare.py: whether a change altered the machine code at all. A refactor that
  leaves a kernel's SASS identical leaves the GPU timings measured before it valid.

Nothing here launches a kernel; only ``kernel_cases`` imports torch (through the kernel modules).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import NamedTuple

N_BENCH, K_BENCH = 16_384, 65_536      # the quantizer-step size
# Set, these move kernel_cases() off the GPU's default launch configs (the interpreter's
# defaults, or a config override): compile with them unset.
CONFIG_ENV_VARS = ("TRITON_INTERPRET", "NSVQ_SEARCH_CONFIG", "NSVQ_NS_CONFIG")


class KernelCase(NamedTuple):
    label: str
    fn: object                 # a triton.JITFunction
    signature: dict            # runtime arguments: name -> Triton type ("*fp32", "i32", ...)
    constexprs: dict
    num_warps: int
    num_stages: int


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 1) -> bytes:
    """The sm_90 cubin of ``fn`` specialized on ``constexprs``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    return compiled.asm["cubin"]


def _cuobjdump(cubin: bytes, flag: str) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """{"regs", "stack"}: registers and stack bytes per thread (cuobjdump -res-usage)."""
    usage = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", usage)
    if not m:
        raise RuntimeError(f"no REG/STACK in cuobjdump's resource usage:\n{usage}")
    return {"regs": int(m.group(1)), "stack": int(m.group(2))}


def sass_instructions(cubin: bytes) -> list[str]:
    """The SASS instructions in order, without addresses and encodings, so that two builds of
    the same code compare equal."""
    out = []
    for line in _cuobjdump(cubin, "-sass").splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;", line)
        if m:
            out.append(m.group(1))
    return out


def kernel_cases(n: int = N_BENCH, k: int = K_BENCH) -> list[KernelCase]:
    """Every kernel at its default launch config for N = n, K = k, at D = 8 (FMA path) and
    D = 64 (tl.dot path, fp32 and tf32x3): 12 cases. Call with CONFIG_ENV_VARS unset."""
    from . import ns_fused_triton as nf
    from . import ns_loss_triton as nt
    from . import search_triton as st

    f32, i32, i64 = "*fp32", "*i32", "*i64"
    search_sig = dict(z_ptr=f32, p_ptr=f32, cb_ptr=f32, idx_ptr=i64, dist_ptr=f32, pval_ptr=f32, pidx_ptr=i32,
                      N="i32", T="i32", T_SPLIT="i32")
    rows_sig = dict(z_ptr=f32, p_ptr=f32, win_ptr=i32, zsq_ptr=f32, crow_ptr=f32, N="i32", T="i32",
                    neg_a="fp32", log2_lamk="fp32")
    codes_sig = dict(z_ptr=f32, win_ptr=i64, zsq_ptr=f32, crow_ptr=f32, p_ptr=f32, s_ptr=f32, m_ptr=f32,
                     tot_ptr=f32, N="i32", K="i32", ROWS_PER_SPLIT="i32", neg_a="fp32")
    fused_sig = dict(z_ptr=f32, p_ptr=f32, cb_ptr=f32, idx_ptr=i64, dist_ptr=f32, zsq_ptr=f32, crow_ptr=f32,
                     N="i32", T="i32", a="fp32", log2_lamk="fp32")
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
                cases += [
                    KernelCase(f"search dot {tag}", st._search_dot_kernel, search_sig,
                               dict(D=d, DP=dp, BLOCK_D=st.dot_block_d(d), BLOCK_N=sc["BLOCK_N"],
                                    BLOCK_K=sc["BLOCK_K"], SPLIT=False, PRECISION=prec, BLOCK_DD=64),
                               sc["num_warps"], sc["num_stages"]),
                    KernelCase(f"NS pass 1 dot {tag}", nt._ns_rows_dot_kernel, rows_sig,
                               dict(D=d, DP=dp, BLOCK_D=min(32, st.dot_block_d(d)), BLOCK_N=cfg["R_BLOCK_N"],
                                    BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec), cfg["R_num_warps"], 1),
                    KernelCase(f"NS pass 2 dot {tag}", nt._ns_codes_dot_kernel, codes_sig,
                               dict(D=d, DP=dp, BLOCK_D=st.dot_block_d(d), BLOCK_R=cfg["C_BLOCK_R"],
                                    BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec), cfg["C_num_warps"], 1),
                    KernelCase(f"fused search + NS pass 1 dot {tag}", nf._ns_fused_rows_dot_kernel, fused_sig,
                               dict(D=d, DP=dp, BLOCK_D=nf.fused_block_d(cfg, d), BLOCK_N=cfg["F_BLOCK_N"],
                                    BLOCK_K=cfg["R_BLOCK_K"], PRECISION=prec, BLOCK_DD=64), cfg["F_num_warps"], 1),
                ]
            else:
                cases += [
                    KernelCase(f"search fma {tag}", st._search_fma_kernel, search_sig,
                               dict(D=d, BLOCK_N=sc["BLOCK_N"], BLOCK_K=sc["BLOCK_K"], SPLIT=False),
                               sc["num_warps"], sc["num_stages"]),
                    KernelCase(f"NS pass 1 {tag}", nt._ns_rows_kernel, rows_sig,
                               dict(D=d, BLOCK_N=cfg["R_BLOCK_N"], BLOCK_K=cfg["R_BLOCK_K"]), cfg["R_num_warps"], 1),
                    KernelCase(f"NS pass 2 {tag}", nt._ns_codes_kernel, codes_sig,
                               dict(D=d, PBK=cfg["R_BLOCK_K"], BLOCK_K=cfg["C_BLOCK_K"]), cfg["C_num_warps"], 1),
                    KernelCase(f"fused search + NS pass 1 {tag}", nf._ns_fused_rows_kernel, fused_sig,
                               dict(D=d, BLOCK_N=cfg["F_BLOCK_N"], BLOCK_K=cfg["R_BLOCK_K"]), cfg["F_num_warps"], 1),
                ]
    return cases
