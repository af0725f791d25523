"""Dense NS-VQ embedding-loss statistics (Triton): the per-code pass, and the host plumbing of
NSVQ's two kernels, streaming, no N x K tensor.

What the two kernels compute, for z (N, D), codebook e (K, D), tau and lam (the contract of
``pipeline.quantizers.ns_loss.ns_search_stats``):

    d_ik  = max(0, ||z_i||^2 + ||e_k||^2 - 2 z_i.e_k),   winner_i = argmin_k d_ik
    w_ik  = 1 if k == winner_i else min(1, lam K softmax_k(-d_ik / tau))
    total = sum_ik w_ik d_ik,   s_k = sum_i w_ik,   M_k = sum_i w_ik z_i

The row pass (pipeline/kernels/ns_fused_triton.py) sweeps every code tile once per row block:
the nearest-code search and, in the same sweep, the per-row log-sum-exp of -d/tau. It writes
per row the winner, ||z||^2 and C = log2(lam K) - lse2, so that the per-code pass gets
lam K softmax = exp2(s (-a) + C) with one FMA and one exp2 (s = ||e||^2 - 2 z.e the code
score, a = log2(e) / tau).

The per-code pass (here, ``_ns_codes_kernel``: one program per BLOCK_K codes x SPLIT row
ranges, loop over rows, like flash-attention's dK/dV backward, no atomics): each thread owns
BLOCK_K / (32 num_warps) codes, their -2 e, ||e||^2 and accumulators in registers, and streams
its rows one at a time (warp-uniform scalar loads, the next row loaded while the current one is
used): per (row, code) D score FMAs, FMA + exp2 + min for w, the winner select, s += w,
T += w ||z||^2 and D FMAs for M += w z; no reductions in the loop. The total is formed per code
at the end from sum_i w_ik d_ik = T_k + ||e_k||^2 s_k - 2 e_k.M_k. With SPLIT > 1 each split
writes partial (s, M, total) that the host sums in a fixed order (deterministic).

D <= 16 uses hand-unrolled fp32 FMAs (pipeline/kernels/tiles.py). There the clamp d >= 0 is
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

from .launch import (FMA_MAX_D, TRITON_DEFAULT_STAGES, Launch, code_tiles, dot_block_d, interpret_mode,
                     merged_config, num_sms, padded_dim)
from .tiles import dot_scores, load_code_cols, pack_codebook, vec_scores, vfma

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# the per-code pass, FMA path (D <= 16)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _mstore(m_ptr, codes64, kmask, acc, D: tl.constexpr, d: tl.constexpr):
    if d < D:
        tl.store(m_ptr + codes64 * D + d, acc, mask=kmask)


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
    m0 = vfma(m0, w, z0, D, 0)
    m1 = vfma(m1, w, z1, D, 1)
    m2 = vfma(m2, w, z2, D, 2)
    m3 = vfma(m3, w, z3, D, 3)
    m4 = vfma(m4, w, z4, D, 4)
    m5 = vfma(m5, w, z5, D, 5)
    m6 = vfma(m6, w, z6, D, 6)
    m7 = vfma(m7, w, z7, D, 7)
    m8 = vfma(m8, w, z8, D, 8)
    m9 = vfma(m9, w, z9, D, 9)
    m10 = vfma(m10, w, z10, D, 10)
    m11 = vfma(m11, w, z11, D, 11)
    m12 = vfma(m12, w, z12, D, 12)
    m13 = vfma(m13, w, z13, D, 13)
    m14 = vfma(m14, w, z14, D, 14)
    m15 = vfma(m15, w, z15, D, 15)
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
# the per-code pass, tl.dot path (D > 16): "ieee" or "tf32x3" (the PRECISION constexpr)
# ----------------------------------------------------------------------------------------------


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
    """Launch config of NSVQ's two kernels; the params ``quantizer.search.ns_kernel`` override keys.

    F_*: the fused row pass (pipeline/kernels/ns_fused_triton.py): BLOCK_N rows per program,
    BLOCK_K codes per packed tile (the pack width both passes read), num_warps, num_stages,
    BLOCK_D (dot path D chunk, 0 = auto).
    C_*: the per-code pass: BLOCK_K codes per program (FMA path: each thread owns
    BLOCK_K / (32 num_warps) codes; dot path: the pack width), BLOCK_R rows per step (FMA path:
    2, rows are streamed in pairs; dot path: the tl.dot M dimension, >= 16), num_warps, SPLIT
    row ranges per code block (partials summed on the host in a fixed order; 0 = auto, about 16
    warps per SM), num_stages.
    precision: the dot path's tl.dot input precision (D > 16), "ieee" (fp32 FMA on the CUDA
    cores, the default) or "tf32x3" (3-pass split TF32 on the tensor cores, relative error
    about 2^-21 per product); the FMA path (D <= 16) is fp32 whatever this says.
    """
    use_dot = d > FMA_MAX_D
    if interpret_mode():
        cfg = dict(F_BLOCK_N=64, F_BLOCK_K=32, F_num_warps=4,
                   C_BLOCK_K=256, C_BLOCK_R=16, C_num_warps=1, C_SPLIT=1)
        if not use_dot:
            cfg["C_BLOCK_R"] = 2
    elif use_dot:
        cfg = dict(F_BLOCK_N=64, F_BLOCK_K=64, F_num_warps=8,
                   C_BLOCK_K=64, C_BLOCK_R=32, C_num_warps=4, C_SPLIT=0)
    elif d <= 8:    # H100 sweep: C_SPLIT 4 1.92 ms vs auto 1.95 ms (N=16,384, K=65,536)
        cfg = dict(F_BLOCK_N=64, F_BLOCK_K=32, F_num_warps=4,
                   C_BLOCK_K=256, C_BLOCK_R=2, C_num_warps=1, C_SPLIT=4)
    else:  # fewer rows / codes per thread: z columns and M accumulators grow with D
        cfg = dict(F_BLOCK_N=32, F_BLOCK_K=32, F_num_warps=8,
                   C_BLOCK_K=128, C_BLOCK_R=2, C_num_warps=1, C_SPLIT=0)
    if use_dot:  # the per-code pass of the dot path runs one program per packed tile
        cfg["C_BLOCK_K"] = cfg["F_BLOCK_K"]
    cfg["F_BLOCK_D"] = 0      # auto (ns_fused_triton.fused_block_d)
    # The row-block shape is the one the unfused pass 1 was swept at on the H100 (until a sweep of
    # the fused pass says otherwise); num_stages is Triton's default, which these launches compiled
    # with before they named it. It only changes the dot path (D > 16), where the sweep also tries 1.
    cfg.update(C_num_stages=TRITON_DEFAULT_STAGES, F_num_stages=TRITON_DEFAULT_STAGES)
    cfg["precision"] = "ieee"
    return cfg


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
    cfg = merged_config(default_ns_config(n, k, d), config, who)
    use_dot = d > FMA_MAX_D
    return NSShape(n, k, d, cfg, use_dot, padded_dim(d, use_dot), cfg["F_BLOCK_K"], code_tiles(k, cfg["F_BLOCK_K"]))


@dataclass
class NSLaunch(NSShape):
    """What both passes need, prepared once per call: the shape, fp32 contiguous inputs and the
    packed codebook (read by the row pass and the per-code pass)."""
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


class CodesPlan(NamedTuple):
    launch: Launch
    rows_per_split: int        # a runtime argument of the kernel
    split: int                 # row ranges per code block (partials summed on the host)
    programs_k: int            # code blocks


def plan_codes_pass(S: NSShape, sms: int) -> CodesPlan:
    """The per-code pass on a GPU with ``sms`` SMs (C_SPLIT = 0: about 16 warps per SM, at least 64
    rows per split)."""
    cfg, n, d = S.cfg, S.n, S.d
    bk2 = S.pbk if S.use_dot else cfg["C_BLOCK_K"]
    br = cfg["C_BLOCK_R"]
    nprog_k = S.t if S.use_dot else triton.cdiv(S.k, bk2)
    split = int(cfg["C_SPLIT"])
    if split <= 0:
        warps = max(1, nprog_k * cfg["C_num_warps"])
        split = max(1, min(16 * sms // warps, triton.cdiv(n, 64)))
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
    """The per-code pass from the row pass's per-row winner, ||z||^2 and C: (total, s, M)."""
    plan = plan_codes_pass(L, num_sms(L.z.device))
    dev = L.z.device
    s_part = torch.empty((plan.split, L.k), dtype=torch.float32, device=dev)
    m_part = torch.empty((plan.split, L.k, L.d), dtype=torch.float32, device=dev)
    t_part = torch.empty((plan.split * plan.programs_k,), dtype=torch.float32, device=dev)
    plan.launch(L.z, win, zsq, crow, L.packed, s_part, m_part, t_part, L.n, L.k, plan.rows_per_split, L.neg_a)
    total = t_part.sum()
    if plan.split == 1:
        return total, s_part[0], m_part[0]
    return total, s_part.sum(0), m_part.sum(0)
