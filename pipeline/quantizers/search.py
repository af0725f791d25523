"""Nearest-code search shared by every quantizer, k-means and the metrics.

``nearest_code(z, codebook)`` returns, for each row of ``z`` (N, D), the index of the
closest row of ``codebook`` (K, D) in squared Euclidean distance and that distance.
It never materializes the N x K distance matrix: the torch path works on row chunks
whose N_chunk x K block stays under ``max_block_elems``; on CUDA a fused Triton kernel
(``pipeline/kernels/search_triton.py``) streams code tiles and writes only N indices.
The torch path is the reference the kernel is tested against.
"""
from __future__ import annotations

import torch

from .. import configbase

# One chunk's distance block holds at most this many fp32 elements (256 MiB).
MAX_BLOCK_ELEMS = 1 << 26

#: ``precision`` of the GPU kernels -> Triton's tl.dot input_precision. It only matters on the
#: kernels' tl.dot path (CUDA, D > 16): "fp32" multiplies in fp32 on the CUDA cores, "tf32x3"
#: splits each fp32 operand into two TF32 parts and sums three tensor-core products (relative
#: error about 2^-21 per product instead of 2^-24). The torch path and D <= 16 are fp32 always.
KERNEL_PRECISIONS = {"fp32": "ieee", "tf32x3": "tf32x3"}
BACKENDS = ("auto", "torch", "triton")


def kernel_config(precision: str, overrides: dict | None = None) -> dict:
    """The Triton kernels' ``config`` for a ``KERNEL_PRECISIONS`` name and launch-config overrides."""
    if precision not in KERNEL_PRECISIONS:
        raise ValueError(f"kernel precision must be one of {', '.join(KERNEL_PRECISIONS)}, got {precision!r}")
    return {**(overrides or {}), "precision": KERNEL_PRECISIONS[precision]}


def select_backend(z: torch.Tensor, backend: str) -> str:
    """"torch" or "triton" for a call on ``z``: ``backend`` itself unless "auto", which picks
    the Triton kernels for CUDA tensors when Triton is there and the chunked torch path otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if z.is_cuda:
        from ..kernels import triton_available

        if triton_available():
            return "triton"
    return "torch"


def search_kwargs(sp, kernel=None) -> dict:
    """``nearest_code`` (or ``ns_search_and_loss``) keyword arguments from a SearchParams section
    (pipeline/config.py); ``kernel``: the launch-config section to use (default ``sp.kernel``,
    the search kernel's), whose unset (None) keys keep the kernel's defaults."""
    overrides = configbase.to_dict(sp.kernel if kernel is None else kernel)
    return dict(chunk_size=sp.chunk, backend=sp.backend, precision=sp.precision,
                config={k: v for k, v in overrides.items() if v is not None})


def chunk_rows(num_codes: int, chunk_size: int, max_block_elems: int = MAX_BLOCK_ELEMS) -> int:
    """Rows per chunk so that one chunk x K block stays under ``max_block_elems``."""
    return max(1, min(chunk_size, max_block_elems // max(1, num_codes)))


@torch.no_grad()
def nearest_code_torch(z: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 8192,
                       max_block_elems: int = MAX_BLOCK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked reference: argmin_k ||z_i - c_k||^2 via ||c_k||^2 - 2 z_i.c_k per row chunk.

    The returned distance is recomputed exactly as ||z_i - c_idx||^2 (no cancellation).
    """
    z = z.float()
    codebook = codebook.float()
    n = z.shape[0]
    c2 = (codebook * codebook).sum(1)
    idx = torch.empty(n, dtype=torch.long, device=z.device)
    rows = chunk_rows(codebook.shape[0], chunk_size, max_block_elems)
    ct = codebook.t()
    for s in range(0, n, rows):
        zc = z[s:s + rows]
        # c2 - 2 z.c: the ||z||^2 term is constant per row and does not change the argmin.
        idx[s:s + rows] = torch.addmm(c2, zc, ct, beta=1.0, alpha=-2.0).argmin(1)
    return idx, winner_distance(z, codebook, idx)


def winner_distance(z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """||z_i - c_idx_i||^2 in fp32, computed directly (no ||z||^2 + ||c||^2 - 2 z.c cancellation)."""
    return (z.float() - codebook.float()[idx]).pow(2).sum(1)


def check_shapes(who: str, z: torch.Tensor, codebook: torch.Tensor) -> None:
    """z (N, D) and codebook (K, D), or a ValueError naming ``who`` and both shapes."""
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"{who}: z {tuple(z.shape)} and codebook {tuple(codebook.shape)} "
                         "must be (N, D) and (K, D)")


@torch.no_grad()
def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, chunk_size: int = 8192, backend: str = "auto",
                 precision: str = "fp32", config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) long and squared distance (N,) fp32 of the nearest code for each row of z.

    backend: see :func:`select_backend`. precision: see ``KERNEL_PRECISIONS`` (with "tf32x3"
    two codes within ~2^-21 relative of each other may swap; the returned distance is the
    chosen code's exact fp32 distance either way). config: launch-config overrides of the
    search kernel (``SearchKernelParams``). The torch path ignores precision and config.
    """
    kernel_cfg = kernel_config(precision, config)
    check_shapes("nearest_code", z, codebook)
    if select_backend(z, backend) == "triton":
        from ..kernels.search_triton import nearest_code_triton

        return nearest_code_triton(z, codebook, config=kernel_cfg)
    return nearest_code_torch(z, codebook, chunk_size)
