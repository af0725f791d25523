"""Fused nearest-code search (Triton): argmin_k ||z_i - c_k||^2 without an N x K matrix.

API: ``nearest_code_triton(z (N, D), codebook (K, D)) -> (idx int64 (N,), dist fp32 (N,))``,
the contract of ``pipeline.quantizers.search.nearest_code_torch`` (which dispatches here for
backend="triton"). Numbers, tile choices and the GPU sweep: bench/NOTES_kernels.md.

Design:

* Prep (one small kernel per call): the codebook is packed into tiles
  ``P (T, DP + 1, BLOCK_K)``: rows 0..DP-1 hold ``-2 c_d`` (zero for d >= D and for padded
  codes), row DP holds ``||c||^2`` (+inf for padded codes, so they never win). Scaling by -2 is
  exact in binary floating point, so ``score = ||c||^2 + sum_d z_d (-2 c_d)`` is the reference's
  ``||c||^2 - 2 z.c`` up to summation order. One contiguous block per tile: every load in the
  hot loop is a base pointer plus a compile-time offset, and the loop needs no masks.
* Main kernel: one program per BLOCK_N rows (x SPLIT_K ranges of code tiles when there are too
  few row tiles to fill the GPU; a small merge kernel then picks the first best split):
    - D <= 16 ("fma" path): z columns live in registers (hand-unrolled z0..z15), each code tile
      costs D fp32 FMAs per (row, code) on the CUDA cores, the first one taking ||c||^2 as its
      addend. The loop is unrolled twice with two register buffers, so the next tile's loads are
      in flight while the current tile is used. With BLOCK_K = 32 Triton's default layout gives
      each thread one code column and BLOCK_N / num_warps rows.
    - D > 16 ("dot" path): ``tl.dot(z_chunk, code_tile, input_precision="ieee")`` (fp32 FMA
      dot), D in chunks of <= 64; ``precision="tf32x3"`` is an opt-in tensor-core variant.
  The running argmin is kept ELEMENTWISE per (row, column slot): one compare and two selects per
  score and no cross-thread reduction in the loop (a per-tile tl.argmin costs ~6 ops per
  element). Each slot remembers the tile index t of its best score (code = t * BLOCK_K + slot);
  strict ``<`` keeps the earliest tile on exact ties and the final reduction over slots takes
  the lowest code index among the slots equal to the row minimum: lowest index on exact ties,
  like torch.argmin.
* The winner's distance is recomputed exactly as sum_d (z_d - c_idx,d)^2 in fp32 from the
  original codebook (a gather of N rows) at the end of the same kernel (or of the merge kernel).

Precision: the decision uses fp32 products and fp32 accumulation (FMA path, or "ieee" dot),
i.e. the expansion ||c||^2 - 2 z.c of the torch reference in another summation order, so the
indices agree except where two codes are within fp32 rounding of each other. The opt-in
``precision="tf32x3"`` (dot path) uses the 3-pass split-TF32 tensor-core product (relative error
~2^-21 per product instead of 2^-24): near-ties a few ulps apart may flip; plain tf32 is not
offered (it would need an exact fp32 re-check pass to be correct).

Importing this module requires triton; ``pipeline.quantizers.search`` imports it only when the
Triton backend is selected. Under TRITON_INTERPRET=1 it runs on CPU tensors (tests).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

# D up to this uses the unrolled FMA path; larger D uses tl.dot.
FMA_MAX_D = 16
# tl.dot input precisions the kernels accept; plain "tf32" would need an exact fp32 re-check.
DOT_PRECISIONS = ("ieee", "tf32x3")
# Triton's num_stages on CUDA when a launch names none. The NS-loss and merge launches ran with it
# before they named it, the H100 figures in reports/bench included.
TRITON_DEFAULT_STAGES = 3


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# prep: packed code tiles P (T, DP + 1, BLOCK_K): P[t, d, j] = -2 c[t*BLOCK_K + j, d] (zero for
# d >= D or padded codes), P[t, DP, j] = ||c||^2 (+inf for padded codes). One contiguous block
# per tile: every load in the hot loops is base + compile-time offset.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _pack_codebook_kernel(cb_ptr, p_ptr, K, D: tl.constexpr, DP: tl.constexpr,
                          BLOCK_DP: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    k = t * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = k < K
    offs_d = tl.arange(0, BLOCK_DP)
    base = p_ptr + t.to(tl.int64) * ((DP + 1) * BLOCK_K)
    c2 = tl.zeros([BLOCK_K], tl.float32)
    for d0 in range(0, DP, BLOCK_DP):
        dd = d0 + offs_d
        c = tl.load(cb_ptr + k[:, None].to(tl.int64) * D + dd[None, :],
                    mask=kmask[:, None] & (dd[None, :] < D), other=0.0)
        c2 += tl.sum(c * c, axis=1)
        tl.store(base + dd[None, :] * BLOCK_K + tl.arange(0, BLOCK_K)[:, None], -2.0 * c,
                 mask=dd[None, :] < DP)
    c2 = tl.where(kmask, c2, float("inf"))
    tl.store(base + DP * BLOCK_K + tl.arange(0, BLOCK_K), c2)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def dot_block_d(d: int, cap: int = 64) -> int:
    """D chunk of the tl.dot path: a power of two in [16, cap]."""
    return min(cap, max(16, _next_pow2(d)))


def padded_dim(d: int, use_dot: bool, cap: int = 64) -> int:
    if not use_dot:
        return d
    bd = dot_block_d(d, cap)
    return -(-d // bd) * bd


def code_tiles(k: int, block_k: int) -> int:
    """T, the packed codebook's tile count: ceil(K / block_k) rounded up to an even count (the
    two-buffer loops consume tiles in pairs)."""
    t = -(-k // block_k)
    return t + t % 2


def pack_codebook(codebook: torch.Tensor, dp: int, block_k: int) -> tuple[torch.Tensor, int]:
    """Packed tiles (T, dp + 1, block_k) fp32 (see _pack_codebook_kernel) and T (code_tiles)."""
    k, d = codebook.shape
    t = code_tiles(k, block_k)
    packed = torch.empty((t, dp + 1, block_k), dtype=torch.float32, device=codebook.device)
    block_dp = min(64 if block_k <= 64 else 32, _next_pow2(dp))
    _pack_codebook_kernel[(t,)](codebook, packed, k, D=d, DP=dp, BLOCK_DP=block_dp,
                                BLOCK_K=block_k, num_warps=4)
    return packed, t


# ----------------------------------------------------------------------------------------------
# FMA path (D <= 16). Triton has no lists of tensors, so the D columns are hand-unrolled into
# variables z0..z15 / c0..c15 behind compile-time ``if d < D`` guards (unused ones are dead code).
# These helpers are shared with the NS-loss kernels (pipeline/kernels/ns_loss_triton.py).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _zcol(z_ptr, rows, rmask, D: tl.constexpr, d: tl.constexpr, BLOCK_N: tl.constexpr):
    v = tl.zeros([BLOCK_N], tl.float32)
    if d < D:
        v = tl.load(z_ptr + rows * D + d, mask=rmask, other=0.0)
    return v


@triton.jit
def load_z_cols(z_ptr, rows64, rmask, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Columns 0..15 of the (N, D) row block (zeros beyond D)."""
    z0 = _zcol(z_ptr, rows64, rmask, D, 0, BLOCK_N)
    z1 = _zcol(z_ptr, rows64, rmask, D, 1, BLOCK_N)
    z2 = _zcol(z_ptr, rows64, rmask, D, 2, BLOCK_N)
    z3 = _zcol(z_ptr, rows64, rmask, D, 3, BLOCK_N)
    z4 = _zcol(z_ptr, rows64, rmask, D, 4, BLOCK_N)
    z5 = _zcol(z_ptr, rows64, rmask, D, 5, BLOCK_N)
    z6 = _zcol(z_ptr, rows64, rmask, D, 6, BLOCK_N)
    z7 = _zcol(z_ptr, rows64, rmask, D, 7, BLOCK_N)
    z8 = _zcol(z_ptr, rows64, rmask, D, 8, BLOCK_N)
    z9 = _zcol(z_ptr, rows64, rmask, D, 9, BLOCK_N)
    z10 = _zcol(z_ptr, rows64, rmask, D, 10, BLOCK_N)
    z11 = _zcol(z_ptr, rows64, rmask, D, 11, BLOCK_N)
    z12 = _zcol(z_ptr, rows64, rmask, D, 12, BLOCK_N)
    z13 = _zcol(z_ptr, rows64, rmask, D, 13, BLOCK_N)
    z14 = _zcol(z_ptr, rows64, rmask, D, 14, BLOCK_N)
    z15 = _zcol(z_ptr, rows64, rmask, D, 15, BLOCK_N)
    return z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15


@triton.jit
def _pcol(ptr, D: tl.constexpr, d: tl.constexpr, BLOCK_K: tl.constexpr):
    v = tl.zeros([BLOCK_K], tl.float32)
    if d < D:
        v = tl.load(ptr + d * BLOCK_K)
    return v


@triton.jit
def load_code_tile(ptr, D: tl.constexpr, BLOCK_K: tl.constexpr):
    """One packed code tile (ptr = tile base + arange(BLOCK_K)): -2 c_0..-2 c_15, ||c||^2."""
    c0 = _pcol(ptr, D, 0, BLOCK_K)
    c1 = _pcol(ptr, D, 1, BLOCK_K)
    c2 = _pcol(ptr, D, 2, BLOCK_K)
    c3 = _pcol(ptr, D, 3, BLOCK_K)
    c4 = _pcol(ptr, D, 4, BLOCK_K)
    c5 = _pcol(ptr, D, 5, BLOCK_K)
    c6 = _pcol(ptr, D, 6, BLOCK_K)
    c7 = _pcol(ptr, D, 7, BLOCK_K)
    c8 = _pcol(ptr, D, 8, BLOCK_K)
    c9 = _pcol(ptr, D, 9, BLOCK_K)
    c10 = _pcol(ptr, D, 10, BLOCK_K)
    c11 = _pcol(ptr, D, 11, BLOCK_K)
    c12 = _pcol(ptr, D, 12, BLOCK_K)
    c13 = _pcol(ptr, D, 13, BLOCK_K)
    c14 = _pcol(ptr, D, 14, BLOCK_K)
    c15 = _pcol(ptr, D, 15, BLOCK_K)
    cn = tl.load(ptr + D * BLOCK_K)
    return c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn


@triton.jit
def _fma_step(acc, zd, cd, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        acc = acc + zd[:, None] * cd[None, :]
    return acc


@triton.jit
def tile_scores(acc, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D: tl.constexpr):
    """acc + sum_d z_d[:, None] * c_d[None, :] (fp32 FMAs, d = 0..D-1 in order)."""
    acc = _fma_step(acc, z0, c0, D, 0)
    acc = _fma_step(acc, z1, c1, D, 1)
    acc = _fma_step(acc, z2, c2, D, 2)
    acc = _fma_step(acc, z3, c3, D, 3)
    acc = _fma_step(acc, z4, c4, D, 4)
    acc = _fma_step(acc, z5, c5, D, 5)
    acc = _fma_step(acc, z6, c6, D, 6)
    acc = _fma_step(acc, z7, c7, D, 7)
    acc = _fma_step(acc, z8, c8, D, 8)
    acc = _fma_step(acc, z9, c9, D, 9)
    acc = _fma_step(acc, z10, c10, D, 10)
    acc = _fma_step(acc, z11, c11, D, 11)
    acc = _fma_step(acc, z12, c12, D, 12)
    acc = _fma_step(acc, z13, c13, D, 13)
    acc = _fma_step(acc, z14, c14, D, 14)
    acc = _fma_step(acc, z15, c15, D, 15)
    return acc


@triton.jit
def _argmin_update(best, bt, t, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                   c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn,
                   D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc = tl.broadcast_to(cn[None, :], [BLOCK_N, BLOCK_K])
    acc = tile_scores(acc, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                      c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D)
    upd = acc < best
    best = tl.where(upd, acc, best)
    bt = tl.where(upd, t, bt)
    return best, bt


@triton.jit
def _dist_step(dist, zd, cb_ptr, idx, rmask, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        diff = zd - tl.load(cb_ptr + idx * D + d, mask=rmask, other=0.0)
        dist = dist + diff * diff
    return dist


@triton.jit
def exact_dist_cols(z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                    cb_ptr, idx64, rmask, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum_d (z_d - cb[idx, d])^2 in fp32 for register-held z columns (D <= 16): the winner's
    exact distance, free of the expansion's cancellation."""
    dist = tl.zeros([BLOCK_N], tl.float32)
    dist = _dist_step(dist, z0, cb_ptr, idx64, rmask, D, 0)
    dist = _dist_step(dist, z1, cb_ptr, idx64, rmask, D, 1)
    dist = _dist_step(dist, z2, cb_ptr, idx64, rmask, D, 2)
    dist = _dist_step(dist, z3, cb_ptr, idx64, rmask, D, 3)
    dist = _dist_step(dist, z4, cb_ptr, idx64, rmask, D, 4)
    dist = _dist_step(dist, z5, cb_ptr, idx64, rmask, D, 5)
    dist = _dist_step(dist, z6, cb_ptr, idx64, rmask, D, 6)
    dist = _dist_step(dist, z7, cb_ptr, idx64, rmask, D, 7)
    dist = _dist_step(dist, z8, cb_ptr, idx64, rmask, D, 8)
    dist = _dist_step(dist, z9, cb_ptr, idx64, rmask, D, 9)
    dist = _dist_step(dist, z10, cb_ptr, idx64, rmask, D, 10)
    dist = _dist_step(dist, z11, cb_ptr, idx64, rmask, D, 11)
    dist = _dist_step(dist, z12, cb_ptr, idx64, rmask, D, 12)
    dist = _dist_step(dist, z13, cb_ptr, idx64, rmask, D, 13)
    dist = _dist_step(dist, z14, cb_ptr, idx64, rmask, D, 14)
    dist = _dist_step(dist, z15, cb_ptr, idx64, rmask, D, 15)
    return dist


@triton.jit
def _finish_argmin(best, bt, offs_k, BLOCK_K: tl.constexpr):
    """Row argmin over the elementwise (value, tile) slots; lowest code index on exact ties."""
    m = tl.min(best, axis=1)
    kk = bt * BLOCK_K + offs_k[None, :]
    cand = tl.where(best == m[:, None], kk, 2147483647)
    idx = tl.min(cand, axis=1)
    # a row whose every score is NaN keeps no slot; fall back to code 0
    idx = tl.where(idx == 2147483647, 0, idx)
    return m, idx


@triton.jit
def _search_fma_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, pval_ptr, pidx_ptr,
                       N, T, T_SPLIT,
                       D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT: tl.constexpr):
    """FMA path (D <= 16). p_ptr: packed code tiles (T, D + 1, BLOCK_K). The loop is unrolled
    twice with two register buffers: the next tile is loaded while the current one is used.
    An odd tail re-processes the last tile (a no-op: strict < never fires on equal scores)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15) = load_z_cols(z_ptr,
     rows64, rmask, D, BLOCK_N)

    offs_k = tl.arange(0, BLOCK_K)
    TILE: tl.constexpr = (D + 1) * BLOCK_K
    best = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    t_lo = pid_s * T_SPLIT
    t_last = tl.minimum(t_lo + T_SPLIT, T) - 1
    (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
     an) = load_code_tile(p_ptr + t_lo * TILE + offs_k, D, BLOCK_K)
    for t in range(t_lo, t_last + 1, 2):
        tb = tl.minimum(t + 1, t_last)
        (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
         bn) = load_code_tile(p_ptr + tb * TILE + offs_k, D, BLOCK_K)
        best, bt = _argmin_update(best, bt, t, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11,
                                  z12, z13, z14, z15,
                                  a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14,
                                  a15, an, D, BLOCK_N, BLOCK_K)
        ta = tl.minimum(t + 2, t_last)
        (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
         an) = load_code_tile(p_ptr + ta * TILE + offs_k, D, BLOCK_K)
        best, bt = _argmin_update(best, bt, tb, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11,
                                  z12, z13, z14, z15,
                                  b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
                                  b15, bn, D, BLOCK_N, BLOCK_K)

    m, idx = _finish_argmin(best, bt, offs_k, BLOCK_K)
    if SPLIT:
        tl.store(pval_ptr + pid_s * N + rows, m, mask=rmask)
        tl.store(pidx_ptr + pid_s * N + rows, idx, mask=rmask)
    else:
        idx64 = idx.to(tl.int64)
        dist = exact_dist_cols(z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                               cb_ptr, idx64, rmask, D, BLOCK_N)
        tl.store(idx_ptr + rows, idx64, mask=rmask)
        tl.store(dist_ptr + rows, dist, mask=rmask)


@triton.jit
def _exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_DD: tl.constexpr):
    """sum_d (z[row, d] - cb[idx, d])^2 in fp32, D in chunks of BLOCK_DD."""
    offs_d = tl.arange(0, BLOCK_DD)
    dist = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_DD):
        dd = d0 + offs_d
        msk = rmask[:, None] & (dd[None, :] < D)
        zz = tl.load(z_ptr + rows64[:, None] * D + dd[None, :], mask=msk, other=0.0)
        cc = tl.load(cb_ptr + idx64[:, None] * D + dd[None, :], mask=msk, other=0.0)
        diff = zz - cc
        dist += tl.sum(diff * diff, axis=1)
    return dist


@triton.jit
def dot_scores(z_ptr, rows64, rmask, zt, tile, D: tl.constexpr, DP: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               USE_ZT: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_N, BLOCK_K) scores ||e||^2 - 2 z.e for one packed tile, the tl.dot path's inner
    step in the search, both NS passes and the fused pass. With USE_ZT (and DP == BLOCK_D) zt is
    the caller's z tile, else the z chunks are loaded here (L1/L2 hits)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    sc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    if USE_ZT and DP == BLOCK_D:
        ctile = tl.load(tile + offs_d[:, None] * BLOCK_K + offs_k[None, :])
        sc = tl.dot(zt, ctile, sc, input_precision=PRECISION)
    else:
        for d0 in range(0, DP, BLOCK_D):
            dd = d0 + offs_d
            zc = tl.load(z_ptr + rows64[:, None] * D + dd[None, :],
                         mask=rmask[:, None] & (dd[None, :] < D), other=0.0)
            ctile = tl.load(tile + dd[:, None] * BLOCK_K + offs_k[None, :])
            sc = tl.dot(zc, ctile, sc, input_precision=PRECISION)
    return sc + tl.load(tile + DP * BLOCK_K + offs_k)[None, :]


@triton.jit
def _search_dot_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, pval_ptr, pidx_ptr,
                       N, T, T_SPLIT,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_DD: tl.constexpr):
    """tl.dot path. p_ptr: packed code tiles (T, DP + 1, BLOCK_K), DP a multiple of BLOCK_D."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    TILE: tl.constexpr = (DP + 1) * BLOCK_K
    zt = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if DP == BLOCK_D:  # whole (padded) D in one chunk: the z tile stays in registers
        zt = tl.load(z_ptr + rows64[:, None] * D + offs_d[None, :],
                     mask=rmask[:, None] & (offs_d[None, :] < D), other=0.0)

    best = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    t_lo = pid_s * T_SPLIT
    t_hi = tl.minimum(t_lo + T_SPLIT, T)
    for t in range(t_lo, t_hi):
        acc = dot_scores(z_ptr, rows64, rmask, zt, p_ptr + t * TILE, D, DP, BLOCK_D, BLOCK_N, BLOCK_K, True,
                         PRECISION)
        upd = acc < best
        best = tl.where(upd, acc, best)
        bt = tl.where(upd, t, bt)

    m, idx = _finish_argmin(best, bt, offs_k, BLOCK_K)
    if SPLIT:
        tl.store(pval_ptr + pid_s * N + rows, m, mask=rmask)
        tl.store(pidx_ptr + pid_s * N + rows, idx, mask=rmask)
    else:
        idx64 = idx.to(tl.int64)
        dist = _exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_DD)
        tl.store(idx_ptr + rows, idx64, mask=rmask)
        tl.store(dist_ptr + rows, dist, mask=rmask)


@triton.jit
def _merge_kernel(z_ptr, cb_ptr, pval_ptr, pidx_ptr, idx_ptr, dist_ptr, N, S,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DD: tl.constexpr):
    """Split-K merge: first split with the smallest value wins (splits are in code order)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    best = tl.load(pval_ptr + rows, mask=rmask, other=0.0)
    idx = tl.load(pidx_ptr + rows, mask=rmask, other=0)
    for s in range(1, S):
        v = tl.load(pval_ptr + s * N + rows, mask=rmask, other=0.0)
        i = tl.load(pidx_ptr + s * N + rows, mask=rmask, other=0)
        upd = v < best
        best = tl.where(upd, v, best)
        idx = tl.where(upd, i, idx)
    rows64 = rows.to(tl.int64)
    idx64 = idx.to(tl.int64)
    dist = _exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_DD)
    tl.store(idx_ptr + rows, idx64, mask=rmask)
    tl.store(dist_ptr + rows, dist, mask=rmask)


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def default_config(n: int, k: int, d: int) -> dict:
    """Launch config. Keys: BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K (0 = auto: split
    the codes when there are too few row tiles to fill the GPU), precision ("ieee" | "tf32x3",
    dot path only), path ("fma" for D <= 16 | "dot").

    FMA path: with BLOCK_K = 32 Triton's default layout gives each thread one code column and
    BLOCK_N / num_warps rows, so a thread holds (BLOCK_N / num_warps) * D z values; the
    defaults keep that <= 128 registers. They are the design's guesses for H100; sweep with
    ``python -m pipeline.kernels.search_triton --sweep`` (see bench/NOTES_kernels.md).
    ``NSVQ_SEARCH_CONFIG="BLOCK_N=64,num_warps=8"`` overrides any key.
    """
    use_dot = d > FMA_MAX_D
    if _interpret():
        cfg = dict(BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1, SPLIT_K=1)
    elif use_dot:   # H100 sweep (reports/bench): 2 stages 15.2 ms vs 1 stage 16.0 at D=64, K=262,144
        cfg = dict(BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2, SPLIT_K=0)
    elif d <= 8:    # H100 sweep: 128 x 32, 8 warps 0.543 ms; 64 x 32, 4 warps 0.561 ms (D=8, K=65,536)
        cfg = dict(BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=1, SPLIT_K=0)
    elif d <= 12:
        cfg = dict(BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=1, SPLIT_K=0)
    else:
        cfg = dict(BLOCK_N=32, BLOCK_K=32, num_warps=8, num_stages=1, SPLIT_K=0)
    cfg["precision"] = "ieee"
    cfg["path"] = "dot" if use_dot else "fma"
    return apply_env_config(cfg, "NSVQ_SEARCH_CONFIG", ("precision", "path"))


def apply_env_config(cfg: dict, var: str, str_keys: tuple[str, ...]) -> dict:
    """Override ``cfg`` from the env var ``var`` ("KEY=VALUE,..."): ints except ``str_keys``."""
    for item in filter(None, (s.strip() for s in os.environ.get(var, "").split(","))):
        key, val = (x.strip() for x in item.split("="))
        cfg[key] = val if key in str_keys else int(val)
    return cfg


def check_precision(cfg: dict, who: str) -> None:
    if cfg["precision"] not in DOT_PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {', '.join(map(repr, DOT_PRECISIONS))}, "
                         f"got {cfg['precision']!r}")


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(torch.device(device).index if device.index is not None
                         else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class Launch(NamedTuple):
    """The static part of one kernel launch: the kernel, its grid, constexprs and compile
    options. The host code launches it; pipeline/kernels/sm90.py compiles the same thing for
    the H100 without a GPU, so the two cannot drift apart."""
    kernel: object             # a triton.JITFunction
    grid: tuple
    constexprs: dict
    num_warps: int
    num_stages: int

    def __call__(self, *args):
        return self.kernel[self.grid](*args, **self.constexprs, num_warps=self.num_warps,
                                      num_stages=self.num_stages)


class SearchPlan(NamedTuple):
    search: Launch
    merge: Launch | None       # split-K merge, when the code tiles are split across programs
    t_split: int               # code tiles per split (a runtime argument of the search kernel)
    split: int
    dp: int                    # the packed codebook's layout: padded D and tile width
    block_k: int


def plan_search(n: int, k: int, d: int, cfg: dict, num_sms: int) -> SearchPlan:
    """The launches of nearest_code_triton for N = n, K = k, D = d, the merged config ``cfg``,
    on a GPU with ``num_sms`` SMs (SPLIT_K = 0 splits the codes when there are too few row tiles
    for about two programs per SM)."""
    use_dot = cfg["path"] == "dot"
    bn, bkk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    dp = padded_dim(d, use_dot)
    t = code_tiles(k, bkk)
    row_tiles = triton.cdiv(n, bn)
    split = int(cfg["SPLIT_K"])
    if split <= 0:  # auto: about two programs per SM
        target = 2 * num_sms
        split = triton.cdiv(target, row_tiles) if row_tiles < target else 1
    split = max(1, min(split, t))
    t_split = -(-t // split)                 # code tiles per split
    split = -(-t // t_split)
    block_dd = min(64, _next_pow2(d))
    if use_dot:
        search = Launch(_search_dot_kernel, (row_tiles, split),
                        dict(D=d, DP=dp, BLOCK_D=dot_block_d(d), BLOCK_N=bn, BLOCK_K=bkk, SPLIT=split > 1,
                             PRECISION=cfg["precision"], BLOCK_DD=block_dd),
                        cfg["num_warps"], cfg["num_stages"])
    else:
        search = Launch(_search_fma_kernel, (row_tiles, split),
                        dict(D=d, BLOCK_N=bn, BLOCK_K=bkk, SPLIT=split > 1), cfg["num_warps"], cfg["num_stages"])
    merge = None
    if split > 1:
        mb = 64
        merge = Launch(_merge_kernel, (triton.cdiv(n, mb),), dict(D=d, BLOCK_N=mb, BLOCK_DD=block_dd), 4,
                       TRITON_DEFAULT_STAGES)
    return SearchPlan(search, merge, t_split, split, dp, bkk)


@torch.no_grad()
def nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, *, config: dict | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) int64 and exact squared distance (N,) fp32 of the nearest code for each row.

    fp16/bf16 inputs are upcast to fp32. ``config`` overrides keys of ``default_config``.
    """
    with device_guard(z):
        return _nearest_code_triton(z, codebook, config)


def _nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, config: dict | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code_triton: z {tuple(z.shape)} and codebook {tuple(codebook.shape)} "
                         "must be (N, D) and (K, D)")
    z = z.detach().float().contiguous()
    cb = codebook.detach().float().contiguous()
    n, d = z.shape
    k = cb.shape[0]
    if k == 0 or d == 0:
        raise ValueError("nearest_code_triton: empty codebook or D == 0")
    idx = torch.empty(n, dtype=torch.long, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    if n == 0:
        return idx, dist
    cfg = default_config(n, k, d)
    if config:
        cfg.update(config)
    check_precision(cfg, "nearest_code_triton")
    if cfg["path"] != "dot" and d > FMA_MAX_D:
        raise ValueError(f"nearest_code_triton: the fma path supports D <= {FMA_MAX_D}")
    plan = plan_search(n, k, d, cfg, _num_sms(z.device))
    packed, t = pack_codebook(cb, plan.dp, plan.block_k)
    if packed.numel() >= 2**31:
        raise ValueError("nearest_code_triton: K * D too large for int32 offsets")
    if plan.merge:
        pval = torch.empty((plan.split, n), dtype=torch.float32, device=z.device)
        pidx = torch.empty((plan.split, n), dtype=torch.int32, device=z.device)
    else:
        pval, pidx = dist, idx  # unused
    plan.search(z, packed, cb, idx, dist, pval, pidx, n, t, plan.t_split)
    if plan.merge:
        plan.merge(z, cb, pval, pidx, idx, dist, n, plan.split)
    return idx, dist


# ----------------------------------------------------------------------------------------------
# GPU check / benchmark / sweep: python -m pipeline.kernels.search_triton [--sweep] [--d 8] ...
# ----------------------------------------------------------------------------------------------
def sweep_configs(d: int) -> list[dict]:
    """Configs worth timing on the GPU (bench/NOTES_kernels.md)."""
    if d <= FMA_MAX_D:
        cfgs = []
        for bn, bk, nw in ((64, 32, 4), (64, 32, 8), (32, 32, 4), (128, 32, 8), (32, 32, 2),
                           (64, 64, 4), (64, 64, 8), (128, 64, 8)):
            if (bn // nw) * d * (bk // 32) <= 160:
                cfgs.append(dict(path="fma", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, SPLIT_K=0))
        cfgs += [dict(path="fma", BLOCK_N=128, BLOCK_K=32, num_warps=8, SPLIT_K=2),
                 dict(path="fma", BLOCK_N=64, BLOCK_K=32, num_warps=4, SPLIT_K=2)]
        # tensor cores with 3xTF32 (near-fp32, not bit-faithful; see the module docstring)
        cfgs += [dict(path="dot", precision="tf32x3", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
                      num_stages=ns, SPLIT_K=0)
                 for bn, bk, nw, ns in ((64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2))]
        return cfgs
    cfgs = [dict(path="dot", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns, SPLIT_K=0)
            for bn, bk, nw, ns in ((64, 64, 8, 1), (64, 64, 4, 1), (128, 64, 8, 1), (64, 128, 8, 1),
                                   (64, 64, 8, 2))]
    cfgs += [dict(path="dot", precision="tf32x3", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
                  num_stages=ns, SPLIT_K=0)
             for bn, bk, nw, ns in ((64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3))]
    return cfgs


def _check_against_torch(idx, dist, z, cb, ridx, rdist) -> dict:
    """Mismatch count, whether every mismatch is a near-tie (1e-5 relative, fp64), the returned
    distance's error, and ``ok``: no mismatch beyond near-ties and the distance within 1e-5."""
    mism = (idx != ridx).nonzero().flatten()
    bad = 0
    if mism.numel():
        zz = z[mism].double()
        d_ours = ((zz - cb[idx[mism]].double()) ** 2).sum(1)
        d_ref = ((zz - cb[ridx[mism]].double()) ** 2).sum(1)
        bad = int(((d_ours - d_ref).abs() > 1e-5 * d_ref.abs().clamp_min(1e-30)).sum())
    exact = (z - cb[idx]).pow(2).sum(1)
    derr = ((dist - exact).abs() / exact.clamp_min(1e-12)).max().item()
    return dict(mismatches=int(mism.numel()), non_tie_mismatches=bad, dist_rel_err=derr,
                ok=bad == 0 and derr < 1e-5)


def _cli(argv=None) -> int:
    """Check every config against nearest_code_torch at full size (non-near-tie mismatches,
    winner distance), then time it; exit 1 if an fp32 config is wrong or the default fails."""
    import json

    from pipeline.quantizers.search import nearest_code_torch

    from .cli import parse_args, print_header, random_inputs, timer

    args = parse_args("check / time nearest_code_triton on the GPU", argv)
    z, cb = random_inputs(args)
    flops = 2.0 * args.n * args.k * args.d
    print_header(args, gflop=flops / 1e9)
    ridx, rdist = nearest_code_torch(z, cb)
    ms = None if args.check else timer(args)
    if ms:
        print(json.dumps(dict(impl="torch", ms=ms(lambda: nearest_code_torch(z, cb)))))
    cfgs = [dict()] + (sweep_configs(args.d) if args.sweep else [])
    failed = 0
    for cfg in cfgs:
        full = default_config(args.n, args.k, args.d)
        full.update(cfg)
        try:
            idx, dist = nearest_code_triton(z, cb, config=cfg)
            res = dict(config=full, **_check_against_torch(idx, dist, z, cb, ridx, rdist))
            strict = full.get("precision", "ieee") == "ieee"   # tf32x3 may swap near-ties: reported only
            failed += strict and not res["ok"]
            if ms:
                t = ms(lambda: nearest_code_triton(z, cb, config=cfg))
                res.update(ms=t, tflops=round(flops / t / 1e9, 2))
        except Exception as exc:  # a config that does not compile / fit: report and go on
            res = dict(config=full, error=repr(exc)[:300])
            failed += not cfg
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(_cli())
