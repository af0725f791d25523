"""Fused nearest-code search (Triton): argmin_k ||z_i - c_k||^2 without an N x K matrix.

API: ``nearest_code_triton(z (N, D), codebook (K, D)) -> (idx int64 (N,), dist fp32 (N,))``,
the contract of ``pipeline.quantizers.search.nearest_code_torch`` (which dispatches here for
backend="triton"). Numbers, tile choices and the GPU sweep: bench/README.md.

Design:

* Prep (one small kernel per call): the codebook is packed into tiles of ``-2 c`` and
  ``||c||^2`` (pipeline/kernels/tiles.py), so ``score = ||c||^2 + sum_d z_d (-2 c_d)`` is the
  reference's ``||c||^2 - 2 z.c`` up to summation order.
* Main kernel: one program per BLOCK_N rows (x SPLIT_K ranges of code tiles when there are too
  few row tiles to fill the GPU; a small merge kernel then picks the first best split):
    - D <= 16 ("fma" path): z columns live in registers, each code tile costs D fp32 FMAs per
      (row, code) on the CUDA cores, the first one taking ||c||^2 as its addend. The loop is
      unrolled twice with two register buffers, so the next tile's loads are in flight while the
      current tile is used. With BLOCK_K = 32 Triton's default layout gives each thread one code
      column and BLOCK_N / num_warps rows.
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

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launch import (FMA_MAX_D, TRITON_DEFAULT_STAGES, Launch, code_tiles, device_guard, dot_block_d,
                     interpret_mode, merged_config, next_pow2, num_sms, padded_dim)
from .tiles import (dot_scores, exact_dist, exact_dist_cols, finish_argmin, fold_tile, load_z_cols, pack_codebook,
                    sweep_code_tiles)


@triton.jit
def _search_fma_kernel(z_ptr, p_ptr, cb_ptr, idx_ptr, dist_ptr, pval_ptr, pidx_ptr,
                       N, T, T_SPLIT,
                       D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT: tl.constexpr):
    """FMA path (D <= 16). p_ptr: packed code tiles (T, D + 1, BLOCK_K); this program's split
    of them is swept by tiles.sweep_code_tiles."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15) = load_z_cols(z_ptr,
     rows64, rmask, D, BLOCK_N)

    offs_k = tl.arange(0, BLOCK_K)
    best = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
    bt = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    t_lo = pid_s * T_SPLIT
    t_last = tl.minimum(t_lo + T_SPLIT, T) - 1
    best, bt, _ = sweep_code_tiles(p_ptr, t_lo, t_last, best, bt, best, 0.0, best,
                                   z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,
                                   D, BLOCK_N, BLOCK_K, False, False)

    m, idx = finish_argmin(best, bt, offs_k, BLOCK_K)
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
        best, bt, _ = fold_tile(best, bt, best, acc, t, 0.0, best, False, False)

    m, idx = finish_argmin(best, bt, offs_k, BLOCK_K)
    if SPLIT:
        tl.store(pval_ptr + pid_s * N + rows, m, mask=rmask)
        tl.store(pidx_ptr + pid_s * N + rows, idx, mask=rmask)
    else:
        idx64 = idx.to(tl.int64)
        dist = exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_DD)
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
    dist = exact_dist(z_ptr, cb_ptr, rows64, rmask, idx64, D, BLOCK_N, BLOCK_DD)
    tl.store(idx_ptr + rows, idx64, mask=rmask)
    tl.store(dist_ptr + rows, dist, mask=rmask)


# ----------------------------------------------------------------------------------------------
# host
# ----------------------------------------------------------------------------------------------


def default_config(n: int, k: int, d: int) -> dict:
    """Launch config. Keys: BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K (0 = auto: split
    the codes when there are too few row tiles to fill the GPU), precision ("ieee" | "tf32x3",
    dot path only), path ("fma" for D <= 16 | "dot").

    FMA path: with BLOCK_K = 32 Triton's default layout gives each thread one code column and
    BLOCK_N / num_warps rows, so a thread holds (BLOCK_N / num_warps) * D z values; the
    defaults keep that <= 128 registers. They are the design's guesses for H100; sweep with
    ``python bench/sweep_kernels.py search --sweep`` (see bench/README.md). The params
    ``quantizer.search.kernel`` override any key but precision (``quantizer.search.precision``).
    """
    use_dot = d > FMA_MAX_D
    if interpret_mode():
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
    return cfg


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
    block_dd = min(64, next_pow2(d))
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
    cfg = merged_config(default_config(n, k, d), config, "nearest_code_triton")
    if cfg["path"] != "dot" and d > FMA_MAX_D:
        raise ValueError(f"nearest_code_triton: the fma path supports D <= {FMA_MAX_D}")
    plan = plan_search(n, k, d, cfg, num_sms(z.device))
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
