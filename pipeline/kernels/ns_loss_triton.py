"""Fused dense NS-VQ embedding-loss statistics (Triton), streaming, no N x K tensor.

API: ``ns_loss_stats_triton(z (N, D), codebook (K, D), winner (N,), tau, lam)
-> (total 0-dim fp32, s (K,) fp32, M (K, D) fp32)``, the contract of
``pipeline.quantizers.ns_loss.ns_loss_stats`` (used by ns_embedding_loss(backend="triton")):

    d_ik  = max(0, ||z_i||^2 + ||e_k||^2 - 2 z_i.e_k)
    w_ik  = 1 if k == winner_i else min(1, lam K softmax_k(-d_ik / tau))
    total = sum_ik w_ik d_ik,   s_k = sum_i w_ik,   M_k = sum_i w_ik z_i

Two kernels, after the codebook pack shared with the search kernel (tiles of -2 e and ||e||^2):

pass 1 (``_ns_rows_kernel``: one program per BLOCK_N rows, loop over code tiles) computes the
    log-sum-exp of -d/tau per row in base 2. Instead of a running max (a cross-thread max per
    tile, or a second exp per element) the shift is the winner's own exponent: when the winner
    is the nearest code it IS the row max, so every term is <= ~1 and the sum is >= 1 (one
    FMA, one exp2, one add per element on top of the D score FMAs). If a row's sum overflows (a
    winner far from the nearest code at small tau), that program sweeps again for the exact row
    max and redoes the sum: exact for any winner, free in the normal case. It writes per row
    ||z||^2 and C = log2(lam K) - lse2, so that pass 2 gets lam K softmax = exp2(s (-a) + C)
    with one FMA and one exp2 (s = ||e||^2 - 2 z.e the code score, a = log2(e) / tau).
pass 2 (``_ns_codes_kernel``: one program per BLOCK_K codes x SPLIT row ranges, loop over rows,
    like flash-attention's dK/dV backward, no atomics): each thread owns BLOCK_K / (32 num_warps)
    codes, their -2 e, ||e||^2 and accumulators in registers, and streams its rows one at a time
    (warp-uniform scalar loads, the next row loaded while the current one is used): per
    (row, code) D score FMAs, FMA + exp2 + min for w, the winner select, s += w, T += w ||z||^2
    and D FMAs for M += w z; no reductions in the loop. The total is formed per code at the end
    from sum_i w_ik d_ik = T_k + ||e_k||^2 s_k - 2 e_k.M_k. With SPLIT > 1 each split writes
    partial (s, M, total) that the host sums in a fixed order (deterministic).

D <= 16 uses hand-unrolled fp32 FMAs (the helpers of search_triton). There the clamp d >= 0 is
skipped: it only changes d_ik < 0, i.e. rounding noise of the expansion for codes equal to z_i
(w changes by a factor exp(|d| / tau) ~ 1 + 1e-7 / tau, total by ~1e-7 absolute). D > 16 uses
tl.dot for the scores and for M (w^T z), and keeps the clamp: input_precision "ieee" (fp32 FMA
dot on the CUDA cores) by default, or "tf32x3" (``config={"precision": "tf32x3"}``, 3-pass split
TF32 on the tensor cores, relative error ~2^-21 per product instead of 2^-24: the exponents
-d/tau carry the same cancellation error as the fp32 reference, 8x larger). All other
arithmetic is fp32; exp2 is the hardware ex2.approx.ftz (rel. error ~2^-22).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .search_triton import (FMA_MAX_D, TRITON_DEFAULT_STAGES, Launch, _interpret, _num_sms, apply_env_config,
                            check_precision, code_tiles, device_guard, dot_block_d, dot_scores, load_code_tile,
                            load_z_cols, pack_codebook, padded_dim, tile_scores)

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# small unrolled helpers (D <= 16)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _vfma(acc, zd, cd, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        acc = acc + zd * cd
    return acc


@triton.jit
def vec_scores(acc, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
               c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D: tl.constexpr):
    """acc + sum_d z_d * c_d, same-shaped operands (fp32 FMAs, d in order)."""
    acc = _vfma(acc, z0, c0, D, 0)
    acc = _vfma(acc, z1, c1, D, 1)
    acc = _vfma(acc, z2, c2, D, 2)
    acc = _vfma(acc, z3, c3, D, 3)
    acc = _vfma(acc, z4, c4, D, 4)
    acc = _vfma(acc, z5, c5, D, 5)
    acc = _vfma(acc, z6, c6, D, 6)
    acc = _vfma(acc, z7, c7, D, 7)
    acc = _vfma(acc, z8, c8, D, 8)
    acc = _vfma(acc, z9, c9, D, 9)
    acc = _vfma(acc, z10, c10, D, 10)
    acc = _vfma(acc, z11, c11, D, 11)
    acc = _vfma(acc, z12, c12, D, 12)
    acc = _vfma(acc, z13, c13, D, 13)
    acc = _vfma(acc, z14, c14, D, 14)
    acc = _vfma(acc, z15, c15, D, 15)
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
def _mstore(m_ptr, codes64, kmask, acc, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        tl.store(m_ptr + codes64 * D + d, acc, mask=kmask)


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
# pass 1: per-row log-sum-exp
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sweep_init(MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The row sweeps' per-(row, slot) accumulator: MODE 0 a sum (0), MODE 1 a max (-inf)."""
    if MODE == 0:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    else:
        acc = tl.full([BLOCK_N, BLOCK_K], float("-inf"), tl.float32)
    return acc


@triton.jit
def _sweep_add(acc, x, cst, MODE: tl.constexpr):
    """One tile of exponents x (BLOCK_N, BLOCK_K): MODE 0 acc + exp2(x + cst_i), MODE 1 max(acc, x)."""
    if MODE == 0:
        acc += tl.exp2(x + cst[:, None])
    else:
        acc = tl.maximum(acc, x)
    return acc


@triton.jit
def _sweep_finish(acc, MODE: tl.constexpr):
    """Per row: the slots' sum (MODE 0) or max (MODE 1)."""
    if MODE == 0:
        res = tl.sum(acc, axis=1)
    else:
        res = tl.max(acc, axis=1)
    return res


@triton.jit
def _rows_sweep(p_ptr, t_lo, t_last, neg_a, cst, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11,
                z12, z13, z14, z15,
                MODE: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """Over code tiles t_lo..t_last of the packed codebook, per row:
    MODE 0: sum_k exp2(s_ik * neg_a + cst_i);  MODE 1: max_k s_ik * neg_a
    (s_ik = ||e_k||^2 - 2 z_i.e_k).
    Two register buffers (next tile loaded while the current one is used); the tile count is
    even (pack_codebook pads T to even with +inf codes, which add exp2(-inf) = 0)."""
    offs_k = tl.arange(0, BLOCK_K)
    TILE: tl.constexpr = (D + 1) * BLOCK_K
    acc = _sweep_init(MODE, BLOCK_N, BLOCK_K)
    (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
     an) = load_code_tile(p_ptr + t_lo * TILE + offs_k, D, BLOCK_K)
    for t in range(t_lo, t_last + 1, 2):
        (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
         bn) = load_code_tile(p_ptr + (t + 1) * TILE + offs_k, D, BLOCK_K)
        sc = tile_scores(tl.broadcast_to(an[None, :], [BLOCK_N, BLOCK_K]), z0, z1, z2, z3, z4, z5,
                         z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                         a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, D)
        acc = _sweep_add(acc, sc * neg_a, cst, MODE)
        ta = tl.minimum(t + 2, t_last)
        (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
         an) = load_code_tile(p_ptr + ta * TILE + offs_k, D, BLOCK_K)
        sc = tile_scores(tl.broadcast_to(bn[None, :], [BLOCK_N, BLOCK_K]), z0, z1, z2, z3, z4, z5,
                         z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                         b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, D)
        acc = _sweep_add(acc, sc * neg_a, cst, MODE)
    return _sweep_finish(acc, MODE)


@triton.jit
def _ns_rows_kernel(z_ptr, p_ptr, win_ptr, zsq_ptr, crow_ptr, N, T, neg_a, log2_lamk,
                    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    (rows, rmask, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
     zsq) = load_row_block(z_ptr, N, D, BLOCK_N)
    # the winner's exponent: the shift of the log-sum-exp
    TILE: tl.constexpr = (D + 1) * BLOCK_K
    win = tl.load(win_ptr + rows, mask=rmask, other=0).to(tl.int32)
    win = tl.minimum(tl.maximum(win, 0), T * BLOCK_K - 1)  # never read out of bounds
    wptr = p_ptr + (win // BLOCK_K) * TILE + win % BLOCK_K
    (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
     cn) = load_code_cols(wptr, rmask, D, BLOCK_K, BLOCK_N)
    sw = vec_scores(cn, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D)
    shift = tl.where(rmask, sw * neg_a, 0.0)
    l = _rows_sweep(p_ptr, 0, T - 1, neg_a, -shift, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10,
                    z11, z12, z13, z14, z15,
                    0, D, BLOCK_N, BLOCK_K)
    # overflow (winner far from the row max): exact row max, then the sum again
    if tl.max((l > 3.0e38).to(tl.int32), axis=0) > 0:
        shift = _rows_sweep(p_ptr, 0, T - 1, neg_a, -shift, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9,
                            z10, z11, z12, z13, z14, z15,
                            1, D, BLOCK_N, BLOCK_K)
        shift = tl.where(rmask, shift, 0.0)
        l = _rows_sweep(p_ptr, 0, T - 1, neg_a, -shift, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10,
                        z11, z12, z13, z14, z15,
                        0, D, BLOCK_N, BLOCK_K)
    lse2 = shift + tl.log2(l)
    tl.store(zsq_ptr + rows, zsq, mask=rmask)
    tl.store(crow_ptr + rows, log2_lamk - lse2, mask=rmask)


# ----------------------------------------------------------------------------------------------
# pass 2: per-code accumulation of s, M and sum w d
# ----------------------------------------------------------------------------------------------
@triton.jit
def _zscal(z_ptr, r64, D: tl.constexpr, d: tl.constexpr):
    v = tl.full([], 0.0, tl.float32)
    if d < D:
        v = tl.load(z_ptr + r64 * D + d)
    return v


@triton.jit
def _load_row(z_ptr, zsq_ptr, crow_ptr, win_ptr, r, valid, D: tl.constexpr):
    """Scalars of row r: z_0..z_15, ||z||^2, C, winner; an invalid row gets C = -inf (w = 0)
    and winner -1."""
    r64 = r.to(tl.int64)
    z0 = _zscal(z_ptr, r64, D, 0)
    z1 = _zscal(z_ptr, r64, D, 1)
    z2 = _zscal(z_ptr, r64, D, 2)
    z3 = _zscal(z_ptr, r64, D, 3)
    z4 = _zscal(z_ptr, r64, D, 4)
    z5 = _zscal(z_ptr, r64, D, 5)
    z6 = _zscal(z_ptr, r64, D, 6)
    z7 = _zscal(z_ptr, r64, D, 7)
    z8 = _zscal(z_ptr, r64, D, 8)
    z9 = _zscal(z_ptr, r64, D, 9)
    z10 = _zscal(z_ptr, r64, D, 10)
    z11 = _zscal(z_ptr, r64, D, 11)
    z12 = _zscal(z_ptr, r64, D, 12)
    z13 = _zscal(z_ptr, r64, D, 13)
    z14 = _zscal(z_ptr, r64, D, 14)
    z15 = _zscal(z_ptr, r64, D, 15)
    zsq = tl.load(zsq_ptr + r)
    crow = tl.where(valid, tl.load(crow_ptr + r), float("-inf"))
    win = tl.where(valid, tl.load(win_ptr + r), -1)
    return z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15, zsq, crow, win


@triton.jit
def _codes_row_update(acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
                      z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15, zsq,
                      crow, win,
                      c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn,
                      codes, k_lo, neg_a, D: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """One row against the program's BLOCK_K codes: w, then s += w, t += w ||z||^2, M_d += w z_d
    (sum_i w d = t + ||e||^2 s - 2 e.M is formed once at the end)."""
    sc = vec_scores(cn, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D)
    w = tl.minimum(tl.exp2(sc * neg_a + crow), 1.0)
    if (win >= k_lo) & (win < k_lo + BLOCK_K):  # uniform branch, rarely taken
        w = tl.where(codes == win, 1.0, w)
    acc_s += w
    acc_t += w * zsq
    m0 = _vfma(m0, w, z0, D, 0)
    m1 = _vfma(m1, w, z1, D, 1)
    m2 = _vfma(m2, w, z2, D, 2)
    m3 = _vfma(m3, w, z3, D, 3)
    m4 = _vfma(m4, w, z4, D, 4)
    m5 = _vfma(m5, w, z5, D, 5)
    m6 = _vfma(m6, w, z6, D, 6)
    m7 = _vfma(m7, w, z7, D, 7)
    m8 = _vfma(m8, w, z8, D, 8)
    m9 = _vfma(m9, w, z9, D, 9)
    m10 = _vfma(m10, w, z10, D, 10)
    m11 = _vfma(m11, w, z11, D, 11)
    m12 = _vfma(m12, w, z12, D, 12)
    m13 = _vfma(m13, w, z13, D, 13)
    m14 = _vfma(m14, w, z14, D, 14)
    m15 = _vfma(m15, w, z15, D, 15)
    return acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15


@triton.jit
def _ns_codes_kernel(z_ptr, win_ptr, zsq_ptr, crow_ptr, p_ptr, s_ptr, m_ptr, tot_ptr,
                     N, K, ROWS_PER_SPLIT, neg_a,
                     D: tl.constexpr, PBK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Each thread owns BLOCK_K / (32 num_warps) codes (their -2 e, ||e||^2 and accumulators in
    registers) and streams the rows of its split one at a time (row scalars are warp-uniform
    loads, the next row is loaded while the current one is used): per (row, code) 2D + 6 fp32
    ops and one exp2, no reductions and no atomics in the loop."""
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    nprog_k = tl.num_programs(0)
    k_lo = pid_k * BLOCK_K
    codes = k_lo + tl.arange(0, BLOCK_K)
    kmask = codes < K
    TILE: tl.constexpr = (D + 1) * PBK
    cptr = p_ptr + (codes // PBK) * TILE + codes % PBK
    (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
     cn) = load_code_cols(cptr, kmask, D, PBK, BLOCK_K)
    m0 = tl.zeros([BLOCK_K], tl.float32)
    m1 = tl.zeros([BLOCK_K], tl.float32)
    m2 = tl.zeros([BLOCK_K], tl.float32)
    m3 = tl.zeros([BLOCK_K], tl.float32)
    m4 = tl.zeros([BLOCK_K], tl.float32)
    m5 = tl.zeros([BLOCK_K], tl.float32)
    m6 = tl.zeros([BLOCK_K], tl.float32)
    m7 = tl.zeros([BLOCK_K], tl.float32)
    m8 = tl.zeros([BLOCK_K], tl.float32)
    m9 = tl.zeros([BLOCK_K], tl.float32)
    m10 = tl.zeros([BLOCK_K], tl.float32)
    m11 = tl.zeros([BLOCK_K], tl.float32)
    m12 = tl.zeros([BLOCK_K], tl.float32)
    m13 = tl.zeros([BLOCK_K], tl.float32)
    m14 = tl.zeros([BLOCK_K], tl.float32)
    m15 = tl.zeros([BLOCK_K], tl.float32)
    acc_s = tl.zeros([BLOCK_K], tl.float32)
    acc_t = tl.zeros([BLOCK_K], tl.float32)
    r_lo = pid_s * ROWS_PER_SPLIT
    r_hi = tl.minimum(r_lo + ROWS_PER_SPLIT, N)
    (q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15, qsq, qc,
     qw) = _load_row(z_ptr, zsq_ptr, crow_ptr, win_ptr, r_lo, True, D)
    for r in range(r_lo, r_hi, 2):
        rb = tl.minimum(r + 1, r_hi - 1)
        (p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15, psq, pc,
         pw) = _load_row(z_ptr, zsq_ptr, crow_ptr, win_ptr, rb, r + 1 < r_hi, D)
        (acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14,
         m15) = _codes_row_update(
            acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
            q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15, qsq, qc, qw,
            c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn, codes, k_lo,
            neg_a, D, BLOCK_K)
        ra = tl.minimum(r + 2, r_hi - 1)
        (q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15, qsq, qc,
         qw) = _load_row(z_ptr, zsq_ptr, crow_ptr, win_ptr, ra, True, D)
        (acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14,
         m15) = _codes_row_update(
            acc_s, acc_t, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
            p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15, psq, pc, pw,
            c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, cn, codes, k_lo,
            neg_a, D, BLOCK_K)
    # sum_i w_ik d_ik = sum_i w_ik ||z_i||^2 + ||e_k||^2 s_k - 2 e_k.M_k (padded codes: 0 * inf)
    acc_t = vec_scores(acc_t + cn * acc_s, m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12,
                       m13, m14, m15,
                       c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, D)
    acc_t = tl.where(kmask, acc_t, 0.0)
    out = pid_s * K
    tl.store(s_ptr + out + codes, acc_s, mask=kmask)
    codes64 = codes.to(tl.int64) + out.to(tl.int64)
    _mstore(m_ptr, codes64, kmask, m0, D, 0)
    _mstore(m_ptr, codes64, kmask, m1, D, 1)
    _mstore(m_ptr, codes64, kmask, m2, D, 2)
    _mstore(m_ptr, codes64, kmask, m3, D, 3)
    _mstore(m_ptr, codes64, kmask, m4, D, 4)
    _mstore(m_ptr, codes64, kmask, m5, D, 5)
    _mstore(m_ptr, codes64, kmask, m6, D, 6)
    _mstore(m_ptr, codes64, kmask, m7, D, 7)
    _mstore(m_ptr, codes64, kmask, m8, D, 8)
    _mstore(m_ptr, codes64, kmask, m9, D, 9)
    _mstore(m_ptr, codes64, kmask, m10, D, 10)
    _mstore(m_ptr, codes64, kmask, m11, D, 11)
    _mstore(m_ptr, codes64, kmask, m12, D, 12)
    _mstore(m_ptr, codes64, kmask, m13, D, 13)
    _mstore(m_ptr, codes64, kmask, m14, D, 14)
    _mstore(m_ptr, codes64, kmask, m15, D, 15)
    tl.store(tot_ptr + pid_s * nprog_k + pid_k, tl.sum(acc_t, axis=0))


# ----------------------------------------------------------------------------------------------
# D > 16: tl.dot variants ("ieee" or "tf32x3", the PRECISION constexpr). DP (a multiple of
# BLOCK_D <= 64) is the packed width; the scores loop over D chunks (z chunks from L1/L2 when
# DP > BLOCK_D).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _ns_rows_dot_sweep(z_ptr, rows64, rmask, zt, p_ptr, T, neg_a, nzsq, cst, MODE: tl.constexpr,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    TILE: tl.constexpr = (DP + 1) * BLOCK_K
    acc = _sweep_init(MODE, BLOCK_N, BLOCK_K)
    for t in range(0, T):
        sc = dot_scores(z_ptr, rows64, rmask, zt, p_ptr + t * TILE, D, DP, BLOCK_D, BLOCK_N,
                        BLOCK_K, False, PRECISION)
        x = tl.maximum(sc, nzsq[:, None]) * neg_a
        acc = _sweep_add(acc, x, cst, MODE)
    return _sweep_finish(acc, MODE)


@triton.jit
def _ns_rows_dot_kernel(z_ptr, p_ptr, win_ptr, zsq_ptr, crow_ptr, N, T, neg_a, log2_lamk,
                        D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    TILE: tl.constexpr = (DP + 1) * BLOCK_K
    win = tl.load(win_ptr + rows, mask=rmask, other=0)
    win = tl.minimum(tl.maximum(win, 0), T * BLOCK_K - 1)  # never read out of bounds
    wbase = (win // BLOCK_K) * TILE + win % BLOCK_K
    zsq = tl.zeros([BLOCK_N], tl.float32)
    sw = tl.load(p_ptr + wbase + DP * BLOCK_K, mask=rmask, other=0.0)
    for d0 in range(0, DP, BLOCK_D):
        dd = d0 + offs_d
        msk = rmask[:, None] & (dd[None, :] < D)
        zc = tl.load(z_ptr + rows64[:, None] * D + dd[None, :], mask=msk, other=0.0)
        cw = tl.load(p_ptr + wbase[:, None] + dd[None, :] * BLOCK_K, mask=msk, other=0.0)
        zsq += tl.sum(zc * zc, axis=1)
        sw += tl.sum(zc * cw, axis=1)
    zt = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)  # unused: the sweeps reload z chunks
    nzsq = -zsq
    shift = tl.maximum(sw, nzsq) * neg_a
    shift = tl.where(rmask, shift, 0.0)
    l = _ns_rows_dot_sweep(z_ptr, rows64, rmask, zt, p_ptr, T, neg_a, nzsq, -shift, 0,
                           D, DP, BLOCK_D, BLOCK_N, BLOCK_K, PRECISION)
    if tl.max((l > 3.0e38).to(tl.int32), axis=0) > 0:
        shift = _ns_rows_dot_sweep(z_ptr, rows64, rmask, zt, p_ptr, T, neg_a, nzsq, -shift, 1,
                                   D, DP, BLOCK_D, BLOCK_N, BLOCK_K, PRECISION)
        shift = tl.where(rmask, shift, 0.0)
        l = _ns_rows_dot_sweep(z_ptr, rows64, rmask, zt, p_ptr, T, neg_a, nzsq, -shift, 0,
                               D, DP, BLOCK_D, BLOCK_N, BLOCK_K, PRECISION)
    lse2 = shift + tl.log2(l)
    tl.store(zsq_ptr + rows, zsq, mask=rmask)
    tl.store(crow_ptr + rows, log2_lamk - lse2, mask=rmask)


@triton.jit
def _ns_codes_dot_kernel(z_ptr, win_ptr, zsq_ptr, crow_ptr, p_ptr, s_ptr, m_ptr, tot_ptr,
                         N, K, ROWS_PER_SPLIT, neg_a,
                         D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One program per packed code tile (BLOCK_K = the pack width) and row split. M is
    accumulated by tl.dot(w^T, z) one D chunk at a time (for DP > BLOCK_D the row loop is
    repeated per chunk, recomputing the scores)."""
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    nprog_k = tl.num_programs(0)
    offs_c = tl.arange(0, BLOCK_K)
    codes = pid_k * BLOCK_K + offs_c
    kmask = codes < K
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    TILE: tl.constexpr = (DP + 1) * BLOCK_K
    tile = p_ptr + pid_k * TILE
    acc_s = tl.zeros([BLOCK_K], tl.float32)
    acc_t = tl.zeros([BLOCK_K], tl.float32)
    r_lo = pid_s * ROWS_PER_SPLIT
    r_hi = tl.minimum(r_lo + ROWS_PER_SPLIT, N)
    out64 = (codes.to(tl.int64) + pid_s.to(tl.int64) * K) * D
    for ch in range(0, DP // BLOCK_D):
        dd = ch * BLOCK_D + offs_d
        m_acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            rows = r0 + offs_r
            rmask = rows < r_hi
            rows64 = rows.to(tl.int64)
            zc = tl.load(z_ptr + rows64[:, None] * D + dd[None, :],
                         mask=rmask[:, None] & (dd[None, :] < D), other=0.0)
            sc = dot_scores(z_ptr, rows64, rmask, zc, tile, D, DP, BLOCK_D, BLOCK_R, BLOCK_K, True,
                            PRECISION)
            zsq = tl.load(zsq_ptr + rows, mask=rmask, other=0.0)
            crow = tl.load(crow_ptr + rows, mask=rmask, other=float("-inf"))
            win = tl.load(win_ptr + rows, mask=rmask, other=-1)
            sp = tl.maximum(sc, -zsq[:, None])
            w = tl.minimum(tl.exp2(sp * neg_a + crow[:, None]), 1.0)
            w = tl.where(codes[None, :] == win[:, None], 1.0, w)
            if ch == 0:
                acc_s += tl.sum(w, axis=0)
                acc_t += tl.sum(w * (sp + zsq[:, None]), axis=0)
            m_acc = tl.dot(tl.trans(w), zc, m_acc, input_precision=PRECISION)
        tl.store(m_ptr + out64[:, None] + dd[None, :], m_acc,
                 mask=kmask[:, None] & (dd[None, :] < D))
    # padded codes have d = inf and w = 0: drop their 0 * inf
    acc_t = tl.where(kmask, acc_t, 0.0)
    tl.store(s_ptr + pid_s * K + codes, acc_s, mask=kmask)
    tl.store(tot_ptr + pid_s * nprog_k + pid_k, tl.sum(acc_t, axis=0))


# ----------------------------------------------------------------------------------------------
# host
# ----------------------------------------------------------------------------------------------
def default_ns_config(n: int, k: int, d: int) -> dict:
    """Launch config of both passes; ``NSVQ_NS_CONFIG="R_BLOCK_N=64,C_SPLIT=4"`` overrides keys.

    R_*: pass 1 (rows): BLOCK_N rows per program, BLOCK_K codes per tile (also the pack width
    PBK), num_warps, num_stages. F_*: the fused search + pass 1 of ns_fused_triton: BLOCK_N,
    num_warps, num_stages, BLOCK_D (dot path D chunk, 0 = auto; its code tile is the pack width
    R_BLOCK_K).
    C_*: pass 2 (codes): BLOCK_K codes per program (FMA path: each thread owns
    BLOCK_K / (32 num_warps) codes), BLOCK_R rows per step (FMA path: 2, rows are streamed in
    pairs; dot path: the tl.dot M dimension, >= 16), num_warps, SPLIT row ranges per code block
    (partials summed on the host in a fixed order; 0 = auto, about 16 warps per SM), num_stages.
    precision: the dot path's tl.dot input precision (D > 16), "ieee" (fp32 FMA on the CUDA
    cores, the default) or "tf32x3" (3-pass split TF32 on the tensor cores, relative error
    about 2^-21 per product); the FMA path (D <= 16) is fp32 whatever this says.
    """
    use_dot = d > FMA_MAX_D
    if _interpret():
        cfg = dict(R_BLOCK_N=64, R_BLOCK_K=32, R_num_warps=4,
                   C_BLOCK_K=256, C_BLOCK_R=16, C_num_warps=1, C_SPLIT=1)
        if not use_dot:
            cfg["C_BLOCK_R"] = 2
    elif use_dot:
        cfg = dict(R_BLOCK_N=64, R_BLOCK_K=64, R_num_warps=8,
                   C_BLOCK_K=64, C_BLOCK_R=32, C_num_warps=4, C_SPLIT=0)
    elif d <= 8:    # H100 sweep: C_SPLIT 4 1.92 ms vs auto 1.95 ms (N=16,384, K=65,536)
        cfg = dict(R_BLOCK_N=64, R_BLOCK_K=32, R_num_warps=4,
                   C_BLOCK_K=256, C_BLOCK_R=2, C_num_warps=1, C_SPLIT=4)
    else:  # fewer rows / codes per thread: z columns and M accumulators grow with D
        cfg = dict(R_BLOCK_N=32, R_BLOCK_K=32, R_num_warps=8,
                   C_BLOCK_K=128, C_BLOCK_R=2, C_num_warps=1, C_SPLIT=0)
    if use_dot:  # pass 2 of the dot path runs one program per packed tile
        cfg["C_BLOCK_K"] = cfg["R_BLOCK_K"]
    # the fused search + pass 1 (ns_fused_triton): pass 1's shape until a GPU sweep says otherwise
    cfg["F_BLOCK_N"] = cfg["R_BLOCK_N"]
    cfg["F_num_warps"] = cfg["R_num_warps"]
    cfg["F_BLOCK_D"] = 0      # auto (ns_fused_triton.fused_block_d)
    # Triton's default, which these launches compiled with before they named it (the H100 figures
    # in reports/bench); it only changes the dot path (D > 16), where the sweep also tries 1
    cfg.update(R_num_stages=TRITON_DEFAULT_STAGES, C_num_stages=TRITON_DEFAULT_STAGES,
               F_num_stages=TRITON_DEFAULT_STAGES)
    cfg["precision"] = "ieee"
    return apply_env_config(cfg, "NSVQ_NS_CONFIG", ("precision",))


@dataclass
class NSShape:
    """The static part of an NS call, which fixes its launches: sizes, the merged config and the
    packed codebook's layout (padded D, tile width PBK, T tiles)."""
    n: int
    k: int
    d: int
    cfg: dict
    use_dot: bool
    dp: int
    pbk: int
    t: int


def ns_shape(n: int, k: int, d: int, config: dict | None, who: str) -> NSShape:
    """``config`` merged into default_ns_config (the precision checked; errors name ``who``)."""
    cfg = default_ns_config(n, k, d)
    if config:
        cfg.update(config)
    check_precision(cfg, who)
    use_dot = d > FMA_MAX_D
    return NSShape(n, k, d, cfg, use_dot, padded_dim(d, use_dot), cfg["R_BLOCK_K"], code_tiles(k, cfg["R_BLOCK_K"]))


@dataclass
class NSLaunch(NSShape):
    """What both passes need, prepared once per call: the shape, fp32 contiguous inputs and the
    packed codebook (shared by pass 1, or the fused search pass, and pass 2)."""
    z: torch.Tensor
    e: torch.Tensor
    packed: torch.Tensor | None
    neg_a: float
    log2_lamk: float


def prepare_ns(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float, config: dict | None,
               who: str) -> NSLaunch:
    """Validate (errors name ``who``), merge ``config`` into default_ns_config, pack the codebook
    (skipped when N == 0)."""
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"{who}: z {tuple(z.shape)} and codebook {tuple(codebook.shape)} "
                         "must be (N, D) and (K, D)")
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"{who}: empty codebook or D == 0")
    if tau <= 0:
        raise ValueError(f"{who}: tau must be > 0")
    z = z.detach().float().contiguous()
    e = codebook.detach().float().contiguous()
    shape = ns_shape(z.shape[0], e.shape[0], z.shape[1], config, who)
    packed = None
    if shape.n:
        packed, _ = pack_codebook(e, shape.dp, shape.pbk)
        if packed.numel() >= 2**31:
            raise ValueError(f"{who}: K * D too large for int32 offsets")
    lamk = float(lam) * shape.k
    return NSLaunch(**vars(shape), z=z, e=e, packed=packed, neg_a=-LOG2E / float(tau),
                    log2_lamk=math.log2(lamk) if lamk > 0 else float("-inf"))


def empty_stats(L: NSLaunch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dev = L.z.device
    return torch.zeros((), device=dev), torch.zeros(L.k, device=dev), torch.zeros(L.k, L.d, device=dev)


@torch.no_grad()
def ns_loss_stats_triton(z: torch.Tensor, codebook: torch.Tensor, winner: torch.Tensor, tau: float,
                         lam: float, *, config: dict | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_ik w_ik d_ik 0-dim, s (K,), M (K, D)), all fp32; see the module docstring."""
    with device_guard(z):
        L = prepare_ns(z, codebook, tau, lam, config, "ns_loss_stats_triton")
        if L.n == 0:
            return empty_stats(L)
        win = winner.detach().reshape(-1).to(device=L.z.device, dtype=torch.int32).contiguous()
        if win.numel() != L.n:
            raise ValueError("ns_loss_stats_triton: winner must have N entries")
        zsq = torch.empty(L.n, dtype=torch.float32, device=L.z.device)
        crow = torch.empty(L.n, dtype=torch.float32, device=L.z.device)
        ns_rows_launch(L)(L.z, L.packed, win, zsq, crow, L.n, L.t, L.neg_a, L.log2_lamk)
        return ns_codes_pass(L, win, zsq, crow)


def ns_rows_launch(S: NSShape) -> Launch:
    """Pass 1 (one program per R_BLOCK_N rows)."""
    cfg = S.cfg
    grid = (triton.cdiv(S.n, cfg["R_BLOCK_N"]),)
    opts = (cfg["R_num_warps"], cfg["R_num_stages"])
    if S.use_dot:
        block_d = min(32, dot_block_d(S.d))  # 32 keeps the FMA-dot operands in registers
        return Launch(_ns_rows_dot_kernel, grid, dict(D=S.d, DP=S.dp, BLOCK_D=block_d, BLOCK_N=cfg["R_BLOCK_N"],
                                                      BLOCK_K=S.pbk, PRECISION=cfg["precision"]), *opts)
    return Launch(_ns_rows_kernel, grid, dict(D=S.d, BLOCK_N=cfg["R_BLOCK_N"], BLOCK_K=S.pbk), *opts)


class CodesPlan(NamedTuple):
    launch: Launch
    rows_per_split: int        # a runtime argument of the kernel
    split: int                 # row ranges per code block (partials summed on the host)
    programs_k: int            # code blocks


def plan_codes_pass(S: NSShape, num_sms: int) -> CodesPlan:
    """Pass 2 on a GPU with ``num_sms`` SMs (C_SPLIT = 0: about 16 warps per SM, at least 64
    rows per split)."""
    cfg, n, d = S.cfg, S.n, S.d
    bk2 = S.pbk if S.use_dot else cfg["C_BLOCK_K"]
    br = cfg["C_BLOCK_R"]
    nprog_k = S.t if S.use_dot else triton.cdiv(S.k, bk2)
    split = int(cfg["C_SPLIT"])
    if split <= 0:
        warps = max(1, nprog_k * cfg["C_num_warps"])
        split = max(1, min(16 * num_sms // warps, triton.cdiv(n, 64)))
    rows_per_split = triton.cdiv(triton.cdiv(n, split), br) * br
    split = triton.cdiv(n, rows_per_split)
    grid = (nprog_k, split)
    opts = (cfg["C_num_warps"], cfg["C_num_stages"])
    if S.use_dot:
        launch = Launch(_ns_codes_dot_kernel, grid, dict(D=d, DP=S.dp, BLOCK_D=dot_block_d(d), BLOCK_R=br,
                                                         BLOCK_K=S.pbk, PRECISION=cfg["precision"]), *opts)
    else:
        launch = Launch(_ns_codes_kernel, grid, dict(D=d, PBK=S.pbk, BLOCK_K=bk2), *opts)
    return CodesPlan(launch, rows_per_split, split, nprog_k)


def ns_codes_pass(L: NSLaunch, win: torch.Tensor, zsq: torch.Tensor, crow: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 from the per-row winner, ||z||^2 and C of pass 1: (total, s, M)."""
    plan = plan_codes_pass(L, _num_sms(L.z.device))
    dev = L.z.device
    s_part = torch.empty((plan.split, L.k), dtype=torch.float32, device=dev)
    m_part = torch.empty((plan.split, L.k, L.d), dtype=torch.float32, device=dev)
    t_part = torch.empty((plan.split * plan.programs_k,), dtype=torch.float32, device=dev)
    plan.launch(L.z, win, zsq, crow, L.packed, s_part, m_part, t_part, L.n, L.k, plan.rows_per_split, L.neg_a)
    total = t_part.sum()
    if plan.split == 1:
        return total, s_part[0], m_part[0]
    return total, s_part.sum(0), m_part.sum(0)


# ----------------------------------------------------------------------------------------------
# GPU check / benchmark / sweep: python -m pipeline.kernels.ns_loss_triton [--sweep] [--d 8] ...
# ----------------------------------------------------------------------------------------------
def sweep_configs(d: int) -> list[dict]:
    """Pass-1 (R_*) and pass-2 (C_*) variants worth timing on the GPU (bench/NOTES_kernels.md);
    each entry overrides default_ns_config."""
    if d <= FMA_MAX_D:
        rows = [dict(R_BLOCK_N=bn, R_BLOCK_K=32, R_num_warps=nw)
                for bn, nw in ((64, 4), (64, 8), (32, 4), (128, 8), (32, 8)) if (bn // nw) * d <= 128]
        codes = [dict(C_BLOCK_K=bk, C_num_warps=nw, C_SPLIT=sp)
                 for bk, nw, sp in ((256, 1, 0), (256, 1, 4), (256, 1, 16), (128, 1, 0), (512, 2, 0),
                                    (256, 2, 0), (512, 1, 0)) if (bk // (32 * nw)) * d <= 64]
    else:
        rows = [dict(R_BLOCK_N=bn, R_BLOCK_K=bk, R_num_warps=nw)
                for bn, bk, nw in ((64, 64, 8), (32, 64, 4), (64, 32, 4), (128, 64, 8))]
        codes = [dict(C_BLOCK_R=br, C_num_warps=nw, C_SPLIT=sp)
                 for br, nw, sp in ((32, 4, 0), (16, 4, 0), (64, 4, 0), (32, 8, 0), (32, 4, 8))]
        # tensor-core variants: both passes in tf32x3 (the sweep's correctness check is the
        # same 1e-4 relative bound against the fp32 torch reference)
        codes += [dict(precision="tf32x3", R_BLOCK_N=bn, R_BLOCK_K=bk, R_num_warps=nw, C_BLOCK_R=br,
                       C_num_warps=cw)
                  for bn, bk, nw, br, cw in ((64, 64, 4, 32, 4), (128, 64, 8, 64, 4), (64, 64, 4, 64, 8))]
        # the default shapes without software pipelining (sm_90 SASS: pass 2 "ieee" spills 240
        # bytes per thread at 3 stages and none at 1; which is faster is the GPU's to say)
        codes += [dict(R_num_stages=1), dict(C_num_stages=1),
                  dict(precision="tf32x3", R_num_stages=1, C_num_stages=1)]
    return rows + codes


def _cli(argv=None) -> int:
    """Check every config's (total, s, M) against ns_loss_stats at full size (1e-4 relative),
    then time it and the autograd fwd+bwd; exit 1 if a config is wrong or the default fails."""
    import json

    from pipeline.quantizers.ns_loss import ns_embedding_loss, ns_loss_stats
    from pipeline.quantizers.search import nearest_code

    from .cli import parse_args, print_header, random_inputs, rel_err, timer

    args = parse_args("check / time ns_loss_stats_triton on the GPU", argv, ns=True)
    z, cb = random_inputs(args)
    win, _ = nearest_code(z, cb)
    print_header(args, tau=args.tau, lam=args.lam)
    ref = ns_loss_stats(z, cb, win, args.tau, args.lam)
    ms = None if args.check else timer(args)
    if ms:
        print(json.dumps(dict(impl="torch ns_loss_stats", ms=ms(lambda: ns_loss_stats(z, cb, win, args.tau, args.lam)))))
    failed = 0
    for cfg in [dict()] + (sweep_configs(args.d) if args.sweep else []):
        try:
            out = ns_loss_stats_triton(z, cb, win, args.tau, args.lam, config=cfg)
            errs = [rel_err(a, b) for a, b in zip(out, ref)]
            res = dict(config=cfg or "default", rel_err_total=errs[0], rel_err_s=errs[1],
                       rel_err_M=errs[2], ok=max(errs) <= 1e-4)
            failed += not res["ok"]
            if ms:
                res["ms_stats"] = ms(lambda: ns_loss_stats_triton(z, cb, win, args.tau, args.lam, config=cfg))
        except Exception as exc:
            res = dict(config=cfg or "default", error=repr(exc)[:300])
            failed += not cfg
        print(json.dumps(res), flush=True)
    if ms:  # forward + backward through the autograd Function, default config
        e = cb.clone().requires_grad_(True)

        def fwd_bwd():
            e.grad = None
            ns_embedding_loss(z, e, win, args.tau, args.lam, backend="triton").backward()

        print(json.dumps(dict(impl="ns_embedding_loss triton fwd+bwd", ms=ms(fwd_bwd))))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(_cli())
