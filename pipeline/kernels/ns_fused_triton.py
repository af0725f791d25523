"""NSVQ's row pass (Triton): the nearest-code search and the dense NS loss's per-row
log-sum-exp in one sweep over the N x K scores.

API: ``ns_search_stats_triton(z (N, D), codebook (K, D), tau, lam) -> (idx int64 (N,),
dist fp32 (N,), total, s (K,), M (K, D))``: ``nearest_code_triton``'s (idx, dist) and the NS
statistics (total, s, M) for winner = idx (pipeline/kernels/ns_loss_triton.py), the contract of
``pipeline.quantizers.ns_loss.ns_search_stats``.

Why one sweep: NSVQ's quantizer needs the winners (a search over all N x K scores) and the NS
loss, whose row pass needs the per-row log-sum-exp over the same N x K scores. Per (row, column
slot) the kernel keeps the running minimum score ``best``, the tile it came from, and
``l = sum exp2(-(s - best) a)`` over the slot's codes so far (a = log2(e) / tau). A new score s
updates them as an online softmax does, with one exp2:

    e = exp2(-|s - best| a);   l = (s < best) ? l e + 1 : l + e;   best = min(best, s)

The row's argmin is the search kernel's (strict < per slot, then the lowest code among the
slots equal to the row minimum: lowest index on exact ties), from bit-identical scores on the
FMA path, so ``idx`` equals ``nearest_code_triton``'s there. At the end the slots are combined,
``lse2 = -b a + log2 sum_slots l exp2(-(best_slot - b) a)`` with b the row minimum, and the
per-code pass of ns_loss_triton (s, M, total) runs on the winners and C = log2(lam K) - lse2.
The quantizer's work is 6NKD FLOP (2 here, 4 in the per-code pass) instead of 8NKD for a
separate search and row pass, at the price of one select and a few ops per score.

The dot path (D > 16) clamps distances at 0 (scores at -||z||^2) before the exponent (as the
per-code pass does); the argmin is taken on the unclamped scores, as the search does. Slots
start at FLT_MAX rather than +inf so that a padded code (score +inf) never updates one and
never makes inf - inf. Launch config: default_ns_config's F_* keys (rows per program, warps, stages, the
dot path's D chunk) and the pack width F_BLOCK_K.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launch, device_guard, dot_block_d, next_pow2
from .ns_loss_triton import NSShape, empty_stats, ns_codes_pass, prepare_ns
from .tiles import dot_scores, exact_dist, exact_dist_cols, finish_argmin, fold_tile, load_row_block, sweep_code_tiles

FLT_MAX = tl.constexpr(3.4028234663852886e38)   # a jit global must be a constexpr (compiled, not interpreted)


@triton.jit
def _finish_rows(best, bt, l, a, log2_lamk, nzsq, offs_k, BLOCK_K: tl.constexpr, CLAMP: tl.constexpr):
    """(argmin, C = log2(lam K) - log2-sum-exp2 of the row's exponents) from the slot states."""
    m, idx = finish_argmin(best, bt, offs_k, BLOCK_K)
    if CLAMP:
        brow = tl.maximum(m, nzsq)
        bslot = tl.maximum(best, nzsq[:, None])
    else:
        brow = m
        bslot = best
    lsum = tl.sum(l * tl.exp2((brow[:, None] - bslot) * a), axis=1)
    return idx, log2_lamk - (tl.log2(lsum) - brow * a)


@triton.jit
def _ns_fused_rows_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, zsq_ptr, crow_ptr, N, T, a, log2_lamk,
                          D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """FMA path (D <= 16): one program per BLOCK_N rows over all code tiles (tiles.sweep_code_tiles;
    T is even: pack_codebook pads with +inf codes, which never update a slot)."""
    (rows, rmask, z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
     zsq) = load_row_block(z_ptr, N, D, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    best = tl.full([BLOCK_N, BLOCK_K], FLT_MAX, tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    l = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    best, bt, l = sweep_code_tiles(p_ptr, 0, T - 1, best, bt, l, a, zsq,
                                   z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                                   D, BLOCK_N, BLOCK_K, True, True)
    idx, crow = _finish_rows(best, bt, l, a, log2_lamk, -zsq, offs_k, BLOCK_K, False)
    idx64 = idx.to(tl.int64)
    dist = exact_dist_cols(z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                           cb_ptr, idx64, rmask, D, BLOCK_N)
    tl.store(idx_ptr + rows, idx64, mask=rmask)
    tl.store(dist_ptr + rows, dist, mask=rmask)
    tl.store(zsq_ptr + rows, zsq, mask=rmask)
    tl.store(crow_ptr + rows, crow, mask=rmask)


@triton.jit
def _ns_fused_rows_dot_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, zsq_ptr, crow_ptr, N, T, a,
                              log2_lamk, D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                              BLOCK_DD: tl.constexpr):
    """tl.dot path (D > 16): scores as in the search's dot kernel (the z tile stays in
    registers when DP == BLOCK_D), the exponents clamped at distance 0."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    TILE: tl.constexpr = (DP + 1) * BLOCK_K
    zsq = tl.zeros([BLOCK_N], tl.float32)
    zt = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for d0 in range(0, DP, BLOCK_D):
        dd = d0 + offs_d
        zt = tl.load(z_ptr + rows64[:, None] * D + dd[None, :],
                     mask=rmask[:, None] & (dd[None, :] < D), other=0.0)
        zsq += tl.sum(zt * zt, axis=1)
    nzsq = -zsq
    best = tl.full([BLOCK_N, BLOCK_K], FLT_MAX, tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    l = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for t in range(0, T):
        sc = dot_scores(z_ptr, rows64, rmask, zt, p_ptr + t * TILE, D, DP, BLOCK_D, BLOCK_N,
                        BLOCK_K, True, PRECISION)
        best, bt, l = fold_tile(best, bt, l, sc, t, a, nzsq, True, True)
    idx, crow = _finish_rows(best, bt, l, a, log2_lamk, nzsq, offs_k, BLOCK_K, True)
    idx64 = idx.to(tl.int64)
    dist = exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_DD)
    tl.store(idx_ptr + rows, idx64, mask=rmask)
    tl.store(dist_ptr + rows, dist, mask=rmask)
    tl.store(zsq_ptr + rows, zsq, mask=rmask)
    tl.store(crow_ptr + rows, crow, mask=rmask)


def fused_block_d(cfg: dict, d: int) -> int:
    """D chunk of the dot path (F_BLOCK_D, 0 = auto). Auto: the whole padded D (<= 64) in one
    tl.dot for tf32x3; 32-wide chunks for "ieee", whose FMA-dot with a 64-wide z tile held in
    registers next to the three slot states spills (sm_90 SASS, 64 x 64 x 8 warps: 3.7 KB of
    stack per thread, against 16 bytes with 32-wide chunks, see bench/README.md)."""
    widest = dot_block_d(d)
    bd = int(cfg.get("F_BLOCK_D", 0)) or (widest if cfg["precision"] == "tf32x3" else min(32, widest))
    if bd not in (16, 32, 64) or bd > widest:
        raise ValueError(f"ns_search_stats_triton: F_BLOCK_D must be 16, 32 or 64 and at most {widest}, got {bd}")
    return bd


def fused_rows_launch(S: NSShape) -> Launch:
    """The row pass: search + log-sum-exp (one program per F_BLOCK_N rows)."""
    cfg = S.cfg
    grid = (triton.cdiv(S.n, cfg["F_BLOCK_N"]),)
    opts = (cfg["F_num_warps"], cfg["F_num_stages"])
    if S.use_dot:
        return Launch(_ns_fused_rows_dot_kernel, grid,
                      dict(D=S.d, DP=S.dp, BLOCK_D=fused_block_d(cfg, S.d), BLOCK_N=cfg["F_BLOCK_N"], BLOCK_K=S.pbk,
                           PRECISION=cfg["precision"], BLOCK_DD=min(64, next_pow2(S.d))), *opts)
    return Launch(_ns_fused_rows_kernel, grid, dict(D=S.d, BLOCK_N=cfg["F_BLOCK_N"], BLOCK_K=S.pbk), *opts)


@torch.no_grad()
def ns_search_stats_triton(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float, *,
                           config: dict | None = None):
    """(idx int64 (N,), dist fp32 (N,), total 0-dim, s (K,), M (K, D)); see the module
    docstring. ``config`` overrides keys of ``default_ns_config``."""
    with device_guard(z):
        L = prepare_ns(z, codebook, tau, lam, config, "ns_search_stats_triton")
        dev = L.z.device
        idx = torch.empty(L.n, dtype=torch.long, device=dev)
        dist = torch.empty(L.n, dtype=torch.float32, device=dev)
        if L.n == 0:
            return (idx, dist, *empty_stats(L))
        zsq = torch.empty(L.n, dtype=torch.float32, device=dev)
        crow = torch.empty(L.n, dtype=torch.float32, device=dev)
        a = -L.neg_a                  # log2(e) / tau
        fused_rows_launch(L)(L.z, L.packed, L.e, idx, dist, zsq, crow, L.n, L.t, a, L.log2_lamk)
        return (idx, dist, *ns_codes_pass(L, idx, zsq, crow))
