"""Compile the Triton kernels for the H100 (sm_90) on a machine without a GPU.

Triton ships ptxas and cuobjdump, so the real compile to a cubin runs on the CPU. Two uses:

- tests/test_kernels_compile.py: every kernel compiles at its default launch config, its
  per-thread stack (register spills, which become local-memory traffic in the hot loop) stays
  bounded, and its shared memory fits an H100 block (a launch asking for more fails on the GPU);
- tools/sass_compare.py: whether a change altered the machine code at all. A refactor that
  leaves a kernel's SASS identical leaves the GPU timings measured before it valid;
- tools/sweep_resources.py: what every config of the GPU sweep compiles to.

Nothing here launches a kernel; only ``kernel_cases`` imports torch (through the kernel modules).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import NamedTuple

N_BENCH, K_BENCH = 16_384, 65_536      # the quantizer-step size
H100_SMS = 132                          # H100 SXM: the auto split-K / split-rows choices depend on it
H100_MAX_SHARED = 232_448               # bytes of shared memory one block may use (227 KB, opt-in)
# Set, this moves kernel_cases() off the GPU's default launch configs (to the interpreter's), and
# makes triton.jit return interpreted functions that cannot be compiled: compile with it unset.
CONFIG_ENV_VARS = ("TRITON_INTERPRET",)


class KernelCase(NamedTuple):
    label: str
    fn: object                 # a triton.JITFunction
    signature: dict            # runtime arguments: name -> Triton type ("*fp32", "i32", ...)
    constexprs: dict
    num_warps: int
    num_stages: int


class Cubin(NamedTuple):
    data: bytes
    shared: int                # dynamic shared memory per block (bytes), which the launch must fit


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int) -> Cubin:
    """The sm_90 cubin of ``fn`` specialized on ``constexprs``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    return Cubin(compiled.asm["cubin"], compiled.metadata.shared)


def _cuobjdump(cubin: Cubin, flag: str) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin.data)
        return subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: Cubin) -> dict:
    """{"regs", "stack", "shared"}: registers and stack bytes per thread (cuobjdump -res-usage),
    shared memory bytes per block."""
    usage = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", usage)
    if not m:
        raise RuntimeError(f"no REG/STACK in cuobjdump's resource usage:\n{usage}")
    return {"regs": int(m.group(1)), "stack": int(m.group(2)), "shared": cubin.shared}


def sass_instructions(cubin: Cubin) -> list[str]:
    """The SASS instructions in order, without addresses and encodings, so that two builds of
    the same code compare equal."""
    out = []
    for line in _cuobjdump(cubin, "-sass").splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;", line)
        if m:
            out.append(m.group(1))
    return out


def loop_bodies(cubin: Cubin, min_len: int = 10) -> list[list[str]]:
    """The SASS of each loop (a backward branch and the instructions from its target to it) of at
    least ``min_len`` instructions, in order: the hot loops, whose length per iteration is what a
    kernel's time at these sizes follows."""
    lines = []
    for line in _cuobjdump(cubin, "-sass").splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;", line)
        if m:
            lines.append((int(m.group(1), 16), m.group(2)))
    where = {a: i for i, (a, _) in enumerate(lines)}
    loops = []
    for i, (a, ins) in enumerate(lines):
        m = re.search(r"BRA\s+.*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in where:
            body = [x for _, x in lines[where[int(m.group(1), 16)]:i + 1]]
            if len(body) >= min_len:
                loops.append(body)
    return loops


_F32, _I32, _I64 = "*fp32", "*i32", "*i64"
_SEARCH_SIG = dict(z_ptr=_F32, p_ptr=_F32, cb_ptr=_F32, idx_ptr=_I64, dist_ptr=_F32, pval_ptr=_F32, pidx_ptr=_I32,
                   N="i32", T="i32", T_SPLIT="i32")
_SIGNATURES = {        # runtime arguments by kernel name, as the host code passes them
    "_search_fma_kernel": _SEARCH_SIG,
    "_search_dot_kernel": _SEARCH_SIG,
    "_merge_kernel": dict(z_ptr=_F32, cb_ptr=_F32, pval_ptr=_F32, pidx_ptr=_I32, idx_ptr=_I64, dist_ptr=_F32,
                          N="i32", S="i32"),
    "_ns_codes_kernel": (codes := dict(z_ptr=_F32, win_ptr=_I64, zsq_ptr=_F32, crow_ptr=_F32, p_ptr=_F32,
                                       s_ptr=_F32, m_ptr=_F32, tot_ptr=_F32, N="i32", K="i32",
                                       ROWS_PER_SPLIT="i32", neg_a="fp32")),
    "_ns_codes_dot_kernel": codes,
    "_ns_fused_rows_kernel": (fused := dict(z_ptr=_F32, p_ptr=_F32, cb_ptr=_F32, idx_ptr=_I64, dist_ptr=_F32,
                                            zsq_ptr=_F32, crow_ptr=_F32, N="i32", T="i32", a="fp32",
                                            log2_lamk="fp32")),
    "_ns_fused_rows_dot_kernel": fused,
}


def case_of(label: str, launch) -> KernelCase:
    """A kernel_cases entry from a launch the host code builds (pipeline.kernels.launch.Launch)."""
    fn = launch.kernel
    return KernelCase(label, fn, _SIGNATURES[fn.fn.__name__], launch.constexprs, launch.num_warps,
                      launch.num_stages)


def kernel_cases(n: int = N_BENCH, k: int = K_BENCH) -> list[KernelCase]:
    """Every kernel the quantizer step launches at N = n, K = k on an H100, with its default
    launch config, at D = 8 (FMA path) and D = 64 (tl.dot path, fp32 and tf32x3): the search
    (and its split-K merge, when the auto split applies), NSVQ's row pass (the search fused with
    the log-sum-exp) and its per-code pass. The constexprs and compile options come from the same
    planning functions the host code launches through. Call with CONFIG_ENV_VARS unset."""
    from pipeline.kernels import ns_fused_triton as nf
    from pipeline.kernels import ns_loss_triton as nt
    from pipeline.kernels import search_triton as st
    from pipeline.kernels.launch import FMA_MAX_D

    cases = []
    for d in (8, 64):
        dot = d > FMA_MAX_D
        path = "dot" if dot else "fma"
        for prec in ("ieee", "tf32x3") if dot else ("ieee",):
            tag = f"D={d} {prec}"
            plan = st.plan_search(n, k, d, dict(st.default_config(n, k, d), precision=prec), H100_SMS)
            shape = nt.ns_shape(n, k, d, dict(precision=prec), "kernel_cases")
            dot_tag = " dot" if dot else ""
            cases += [case_of(f"search {path} {tag}", plan.search)]
            if plan.merge and prec == "ieee":     # the merge has no precision
                cases += [case_of(f"search merge D={d}", plan.merge)]
            cases += [case_of(f"NS codes{dot_tag} {tag}", nt.plan_codes_pass(shape, H100_SMS).launch),
                      case_of(f"NS rows (search + lse){dot_tag} {tag}", nf.fused_rows_launch(shape))]
    return cases


def compile_every_kernel() -> dict:
    """{label: {"regs", "stack", "shared"}} for every kernel_cases() entry (run with
    CONFIG_ENV_VARS unset, so these are the GPU's launch configs)."""
    return {c.label: resource_usage(compile_sm90(c.fn, c.signature, c.constexprs, c.num_warps, c.num_stages))
            for c in kernel_cases()}


if __name__ == "__main__":
    # python tools/sm90.py [--labels]: every kernel's sm_90 resources (or only the case labels) as JSON
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    for var in CONFIG_ENV_VARS:
        if os.environ.get(var):
            raise SystemExit(f"unset {var}: it moves the kernels off the GPU's launch configs")
    if sys.argv[1:] == ["--labels"]:
        print(json.dumps([c.label for c in kernel_cases()]))
        raise SystemExit(0)
    import triton

    print(json.dumps({"triton": triton.__version__, "triton_file": triton.__file__,
                      "results": compile_every_kernel()}))
