"""The building blocks the search and NS-loss kernels share (Triton jit helpers) and the
packed codebook they all read.

Packed codebook ``P (T, DP + 1, BLOCK_K)``: rows 0..DP-1 of a tile hold ``-2 c_d`` (zero for
d >= D and for padded codes), row DP holds ``||c||^2`` (+inf for padded codes, so they never
win and add exp2(-inf) = 0). Scaling by -2 is exact in binary floating point, so
``score = ||c||^2 + sum_d z_d (-2 c_d)`` is the torch reference's ``||c||^2 - 2 z.c`` up to
summation order. One contiguous block per tile: every load in the hot loops is a base pointer
plus a compile-time offset, and the loops need no masks. T is even (the two-buffer loops
consume tiles in pairs).

FMA path (D <= 16). Triton has no lists of tensors, so the D columns are hand-unrolled into
variables z0..z15 / c0..c15 behind compile-time ``if d < D`` guards (unused ones are dead code
and cost nothing). Why not one (BLOCK_N, BLOCK_D) tile for a BLOCK_D constexpr instead: compiled
for sm_90 (Triton 3.8.0, ``python tools/fma_tile_experiment.py``), the search written that way
has a longer hot loop, 412 instructions per two code tiles against 391 at D = 8 and 226 against
209 at D = 16 (the same FFMAs, plus shared-memory loads, stores and two barriers per iteration:
Triton stages the broadcast code tile through shared memory). The double-buffered loop itself is
written once, ``sweep_code_tiles``, for the search and NSVQ's row pass.

tl.dot path (D > 16): ``dot_scores`` computes a (BLOCK_N, BLOCK_K) score tile with
``tl.dot(z_chunk, code_tile, input_precision=...)``, D in chunks of BLOCK_D.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import code_tiles, next_pow2


# ----------------------------------------------------------------------------------------------
# the packed codebook
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


def pack_codebook(codebook: torch.Tensor, dp: int, block_k: int) -> tuple[torch.Tensor, int]:
    """Packed tiles (T, dp + 1, block_k) fp32 (the module docstring) and T (code_tiles)."""
    k, d = codebook.shape
    t = code_tiles(k, block_k)
    packed = torch.empty((t, dp + 1, block_k), dtype=torch.float32, device=codebook.device)
    block_dp = min(64 if block_k <= 64 else 32, next_pow2(dp))
    _pack_codebook_kernel[(t,)](codebook, packed, k, D=d, DP=dp, BLOCK_DP=block_dp,
                                BLOCK_K=block_k, num_warps=4)
    return packed, t


# ----------------------------------------------------------------------------------------------
# FMA path (D <= 16): register-held columns
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
def fold_tile(best, bt, l, sc, t, a, nzsq, ONLINE: tl.constexpr, CLAMP: tl.constexpr):
    """Fold one tile ``t`` of scores ``sc`` (BLOCK_N, BLOCK_K) into the per-(row, slot) state: the
    running minimum ``best`` and the tile it came from ``bt`` (strict <: the earliest tile keeps an
    exact tie), and with ONLINE also ``l = sum exp2(-(s - best) a)`` over the slot's codes so far,
    updated like an online softmax with one exp2 (ns_fused_triton.py). CLAMP: the exponent uses
    max(score, -||z||^2), i.e. distances >= 0. Without ONLINE, ``l`` passes through untouched."""
    upd = sc < best
    if ONLINE:
        if CLAMP:
            diff = tl.maximum(sc, nzsq[:, None]) - tl.maximum(best, nzsq[:, None])
        else:
            diff = sc - best
        e = tl.exp2(-tl.abs(diff) * a)
        l = tl.where(upd, l * e + 1.0, l + e)
    best = tl.where(upd, sc, best)
    bt = tl.where(upd, t, bt)
    return best, bt, l


@triton.jit
def sweep_code_tiles(p_ptr, t_lo, t_last, best, bt, l, a, nzsq,
                     z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                     D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONLINE: tl.constexpr,
                     EVEN: tl.constexpr):
    """The FMA path's loop over the packed code tiles t_lo..t_last (the search's, and NSVQ's row
    pass's): per tile, the scores ||c||^2 - 2 z.c of the register-held z columns folded into the
    slot state (``fold_tile``). Unrolled twice with two register buffers, so the next tile's
    loads are in flight while the current tile is used. EVEN: the range holds an even number of
    tiles (the whole packed codebook does); otherwise an odd tail re-processes the last tile, a
    no-op for the argmin (strict < never fires on equal scores), so ONLINE needs EVEN."""
    offs_k = tl.arange(0, BLOCK_K)
    TILE: tl.constexpr = (D + 1) * BLOCK_K
    (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
     an) = load_code_tile(p_ptr + t_lo * TILE + offs_k, D, BLOCK_K)
    for t in range(t_lo, t_last + 1, 2):
        if EVEN:
            tb = t + 1
        else:
            tb = tl.minimum(t + 1, t_last)
        (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
         bn) = load_code_tile(p_ptr + tb * TILE + offs_k, D, BLOCK_K)
        sc = tile_scores(tl.broadcast_to(an[None, :], [BLOCK_N, BLOCK_K]), z0, z1, z2, z3, z4, z5, z6, z7,
                         z8, z9, z10, z11, z12, z13, z14, z15,
                         a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, D)
        best, bt, l = fold_tile(best, bt, l, sc, t, a, nzsq, ONLINE, False)
        ta = tl.minimum(t + 2, t_last)
        (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
         an) = load_code_tile(p_ptr + ta * TILE + offs_k, D, BLOCK_K)
        sc = tile_scores(tl.broadcast_to(bn[None, :], [BLOCK_N, BLOCK_K]), z0, z1, z2, z3, z4, z5, z6, z7,
                         z8, z9, z10, z11, z12, z13, z14, z15,
                         b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, D)
        best, bt, l = fold_tile(best, bt, l, sc, tb, a, nzsq, ONLINE, False)
    return best, bt, l


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
def vfma(acc, zd, cd, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        acc = acc + zd * cd
    return acc


@triton.jit
def vec_scores(acc, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
               c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D: tl.constexpr):
    """acc + sum_d z_d * c_d, same-shaped operands (fp32 FMAs, d in order)."""
    acc = vfma(acc, z0, c0, D, 0)
    acc = vfma(acc, z1, c1, D, 1)
    acc = vfma(acc, z2, c2, D, 2)
    acc = vfma(acc, z3, c3, D, 3)
    acc = vfma(acc, z4, c4, D, 4)
    acc = vfma(acc, z5, c5, D, 5)
    acc = vfma(acc, z6, c6, D, 6)
    acc = vfma(acc, z7, c7, D, 7)
    acc = vfma(acc, z8, c8, D, 8)
    acc = vfma(acc, z9, c9, D, 9)
    acc = vfma(acc, z10, c10, D, 10)
    acc = vfma(acc, z11, c11, D, 11)
    acc = vfma(acc, z12, c12, D, 12)
    acc = vfma(acc, z13, c13, D, 13)
    acc = vfma(acc, z14, c14, D, 14)
    acc = vfma(acc, z15, c15, D, 15)
    return acc


@triton.jit
def _ccol(ptr, kmask, D: tl.constexpr, d: tl.constexpr, PBK: tl.constexpr, BLOCK_K: tl.constexpr):
    v = tl.zeros([BLOCK_K], tl.float32)
    if d < D:
        v = tl.load(ptr + d * PBK, mask=kmask, other=0.0)
    return v


@triton.jit
def load_code_cols(ptr, kmask, D: tl.constexpr, PBK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes at pointers ``ptr`` into packed tiles of width PBK: -2 e_0..-2 e_15, ||e||^2
    (masked codes: zeros and +inf)."""
    c0 = _ccol(ptr, kmask, D, 0, PBK, BLOCK_K)
    c1 = _ccol(ptr, kmask, D, 1, PBK, BLOCK_K)
    c2 = _ccol(ptr, kmask, D, 2, PBK, BLOCK_K)
    c3 = _ccol(ptr, kmask, D, 3, PBK, BLOCK_K)
    c4 = _ccol(ptr, kmask, D, 4, PBK, BLOCK_K)
    c5 = _ccol(ptr, kmask, D, 5, PBK, BLOCK_K)
    c6 = _ccol(ptr, kmask, D, 6, PBK, BLOCK_K)
    c7 = _ccol(ptr, kmask, D, 7, PBK, BLOCK_K)
    c8 = _ccol(ptr, kmask, D, 8, PBK, BLOCK_K)
    c9 = _ccol(ptr, kmask, D, 9, PBK, BLOCK_K)
    c10 = _ccol(ptr, kmask, D, 10, PBK, BLOCK_K)
    c11 = _ccol(ptr, kmask, D, 11, PBK, BLOCK_K)
    c12 = _ccol(ptr, kmask, D, 12, PBK, BLOCK_K)
    c13 = _ccol(ptr, kmask, D, 13, PBK, BLOCK_K)
    c14 = _ccol(ptr, kmask, D, 14, PBK, BLOCK_K)
    c15 = _ccol(ptr, kmask, D, 15, PBK, BLOCK_K)
    cn = tl.load(ptr + D * PBK, mask=kmask, other=float("inf"))
    return c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn


@triton.jit
def load_row_block(z_ptr, N, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The FMA row passes' prologue: this program's BLOCK_N row indices and mask, their z
    columns z_0..z_15 in registers (0 past D or N) and ||z||^2."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15) = load_z_cols(
        z_ptr, rows.to(tl.int64), rmask, D, BLOCK_N)
    zsq = vec_scores(tl.zeros([BLOCK_N], tl.float32), z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10,
                     z11, z12, z13, z14, z15,
                     z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15, D)
    return rows, rmask, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15, zsq


# ----------------------------------------------------------------------------------------------
# both paths
# ----------------------------------------------------------------------------------------------


@triton.jit
def finish_argmin(best, bt, offs_k, BLOCK_K: tl.constexpr):
    """Row argmin over the elementwise (value, tile) slots; lowest code index on exact ties."""
    m = tl.min(best, axis=1)
    kk = bt * BLOCK_K + offs_k[None, :]
    cand = tl.where(best == m[:, None], kk, 2147483647)
    idx = tl.min(cand, axis=1)
    # a row whose every score is NaN keeps no slot; fall back to code 0
    idx = tl.where(idx == 2147483647, 0, idx)
    return m, idx


@triton.jit
def exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D: tl.constexpr, BLOCK_N: tl.constexpr,
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


# ----------------------------------------------------------------------------------------------
# tl.dot path (D > 16)
# ----------------------------------------------------------------------------------------------


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
