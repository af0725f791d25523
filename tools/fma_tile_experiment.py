"""Would the FMA path be better written for a BLOCK_D constexpr than with named scalars? Compile
both for sm_90 (no GPU needed) and compare their hot loops.

    python tools/fma_tile_experiment.py [--d 8]

The FMA-path kernels (D <= 16) hold the D columns of z in named registers z0..z15
(pipeline/kernels/tiles.py). The obvious alternative keeps z as one (BLOCK_N, BLOCK_D) tile and
forms each score tile as sum_d z[:, d, None] * c[None, d, :]. This writes the search kernel that
way (same packed codebook, same two-buffer loop, same argmin) and prints, for it and for the
shipped kernel at the bench's launch (N = 16,384, K = 65,536, default config): the hot loop's
length (two code tiles per iteration), its instruction mix, registers and spills. Run with
TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from pipeline.kernels.tiles import exact_dist, finish_argmin  # noqa: E402


@triton.jit
def _search_fma_tile_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, pval_ptr, pidx_ptr, N, T, T_SPLIT,
                            D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    dmask = offs_d < D
    zt = tl.load(z_ptr + rows64[:, None] * D + offs_d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    TILE: tl.constexpr = (D + 1) * BLOCK_K
    best = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    t_lo = pid_s * T_SPLIT
    t_last = tl.minimum(t_lo + T_SPLIT, T) - 1
    cptr = offs_d[:, None] * BLOCK_K + offs_k[None, :]
    a = tl.load(p_ptr + t_lo * TILE + cptr, mask=dmask[:, None], other=0.0)
    an = tl.load(p_ptr + t_lo * TILE + D * BLOCK_K + offs_k)
    for t in range(t_lo, t_last + 1, 2):
        tb = tl.minimum(t + 1, t_last)
        b = tl.load(p_ptr + tb * TILE + cptr, mask=dmask[:, None], other=0.0)
        bn = tl.load(p_ptr + tb * TILE + D * BLOCK_K + offs_k)
        acc = tl.sum(zt[:, :, None] * a[None, :, :], axis=1) + an[None, :]
        upd = acc < best
        best = tl.where(upd, acc, best)
        bt = tl.where(upd, t, bt)
        ta = tl.minimum(t + 2, t_last)
        a = tl.load(p_ptr + ta * TILE + cptr, mask=dmask[:, None], other=0.0)
        an = tl.load(p_ptr + ta * TILE + D * BLOCK_K + offs_k)
        acc = tl.sum(zt[:, :, None] * b[None, :, :], axis=1) + bn[None, :]
        upd = acc < best
        best = tl.where(upd, acc, best)
        bt = tl.where(upd, tb, bt)
    m, idx = finish_argmin(best, bt, offs_k, BLOCK_K)
    if SPLIT:
        tl.store(pval_ptr + pid_s * N + rows, m, mask=rmask)
        tl.store(pidx_ptr + pid_s * N + rows, idx, mask=rmask)
    else:
        idx64 = idx.to(tl.int64)
        dist = exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_D)
        tl.store(idx_ptr + rows, idx64, mask=rmask)
        tl.store(dist_ptr + rows, dist, mask=rmask)


def describe(label: str, cubin, sm90) -> None:
    loop = max(sm90.loop_bodies(cubin), key=len)
    ops = collections.Counter((x.split()[1] if x.startswith("@") else x.split()[0]).split(".")[0] for x in loop)
    res = sm90.resource_usage(cubin)
    mix = ", ".join(f"{op} {ops[op]}" for op in ("FFMA", "FSETP", "FSEL", "LDG", "LDS", "STS", "STSM", "BAR") if ops[op])
    print(f"{label:28s} loop {len(loop):4d} instructions ({mix}); regs {res['regs']}, stack {res['stack']} B")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=8)
    d = ap.parse_args().d
    from pipeline.kernels import search_triton as st
    from tools import sm90

    n, k = sm90.N_BENCH, sm90.K_BENCH
    plan = st.plan_search(n, k, d, st.default_config(n, k, d), sm90.H100_SMS)
    case = sm90.case_of("search", plan.search)
    print(f"Triton {triton.__version__}, sm_90, D = {d}, {case.constexprs}, {case.num_warps} warps")
    describe("named scalars (shipped)", sm90.compile_sm90(case.fn, case.signature, case.constexprs, case.num_warps,
                                                          case.num_stages), sm90)
    tile = dict(case.constexprs, BLOCK_D=triton.next_power_of_2(d))
    describe("BLOCK_D tile", sm90.compile_sm90(_search_fma_tile_kernel, case.signature, tile, case.num_warps,
                                               case.num_stages), sm90)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
