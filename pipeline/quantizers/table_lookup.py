"""Straight-through table lookup with the squared-error VQ losses in closed form.

One autograd node replaces the gather, the two MSE terms and the straight-through
arithmetic of a table quantizer (VQ, NS-VQ), which matters on the GPU where each of those
small ops costs a kernel launch. With q = E[idx] and d_i = ||z_i - q_i||^2 (exact, from
the search):

    forward:  z_q = q                                   (forward value of (modified) STE)
              loss = (w_cb + beta) * sum_i d_i / (N D)  (w_cb ||sg(z) - q||^2 + beta ||z - sg(q)||^2, means)
    backward: dL/dz = g_zq - beta * c (q - z)           c = 2 g_loss / (N D)
              dL/dE[idx] += w_cb * c (q - z) + a g_zq   (codebook term; modified STE: a, else 0)

VQ-VAE uses w_cb = 1, a = 0; NS-VQ uses w_cb = 0 (its dense loss replaces the codebook
term) and a = 2 alpha / numel(z) (the NS-VQ paper's modified STE).
"""
from __future__ import annotations

import torch


class _TableLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, table, idx, sqdist, w_cb: float, beta: float, a: float):
        q = table.index_select(0, idx)
        n, d = z.shape
        loss = sqdist.sum() * ((w_cb + beta) / (n * d))
        ctx.save_for_backward(z, table, idx)
        ctx.coef = (w_cb, beta, a, n * d)
        return q, loss

    @staticmethod
    def backward(ctx, g_zq, g_loss):
        z, table, idx = ctx.saved_tensors
        w_cb, beta, a, nd = ctx.coef
        diff = table.index_select(0, idx) - z                  # q - z
        c = g_loss * (2.0 / nd)
        grad_z = g_zq - (beta * c) * diff
        per_row = (w_cb * c) * diff
        if a:
            per_row = per_row + a * g_zq
        # Atomic scatter-add: no sort of the indices (index backward would sort N of them).
        grad_table = torch.zeros_like(table).index_add_(0, idx, per_row)
        return grad_z, grad_table, None, None, None, None, None


def table_lookup(z: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, sqdist: torch.Tensor, *,
                 codebook_weight: float = 1.0, beta: float = 0.25, ste_scale: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q, loss) for rows z (N, D), table (K, D), nearest indices and their squared distances."""
    return _TableLookup.apply(z, table, idx, sqdist, float(codebook_weight), float(beta), float(ste_scale))
