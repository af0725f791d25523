"""TransVQ (NS-VQ / TransVQ paper, reference ``ldm/modules/transVQ.py``): SimVQ with the
linear map replaced by a small transformer over the codes.

    X    = C W_in + P                    (C: (K, D) frozen N(0, 1/D); W_in: D -> M; P learned positions)
    X    = X + LinAttn(LN(X))            (one pre-LN block, single head,
    X    = X + MLP(LN(X))                 MLP M -> 2M -> M with GELU)
    codebook = LN(X) W_out               (W_out: M -> D)

with linear attention LinAttn(H) = (phi(Q) (phi(K)^T V)) / (phi(Q) sum_j phi(K_j)),
phi(x) = elu(x) + 1, model dim M = 256. Each code is one token, so every code's position
depends on every other code and on shared weights: the codebook loss moves all codes,
including unused ones. Cost is O(K M^2), never K x K. Loss and STE as in SimVQ.

Not ``replaceable`` and no k-means init, for the same reasons as SimVQ (frozen random C).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .simvq import SimVQ


class LinearAttention(nn.Module):
    """Single-head linear attention with the positive feature map phi(x) = elu(x) + 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # x: (L, M) tokens
        q = F.elu(self.to_q(x)) + 1.0
        k = F.elu(self.to_k(x)) + 1.0
        v = self.to_v(x)
        kv = k.t() @ v                                         # (M, M): no L x L matrix
        norm = q @ k.sum(0, keepdim=True).t()                  # (L, 1)
        return self.to_out((q @ kv) / (norm + self.eps))


class CodebookTransformer(nn.Module):
    """One pre-LN block (linear attention + MLP) mapping the frozen codes to the codebook."""

    def __init__(self, codebook_size: int, dim: int, model_dim: int = 256, mlp_ratio: float = 2.0,
                 learned_pos: bool = True):
        super().__init__()
        self.proj_in = nn.Linear(dim, model_dim, bias=False)
        self.pos = nn.Embedding(codebook_size, model_dim) if learned_pos else None
        self.norm1 = nn.LayerNorm(model_dim)
        self.attn = LinearAttention(model_dim)
        self.norm2 = nn.LayerNorm(model_dim)
        hidden = max(1, int(model_dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(model_dim, hidden), nn.GELU(), nn.Linear(hidden, model_dim))
        self.norm_out = nn.LayerNorm(model_dim)
        self.proj_out = nn.Linear(model_dim, dim, bias=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:    # (K, D) -> (K, D)
        x = self.proj_in(codes)
        if self.pos is not None:
            x = x + self.pos.weight
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.proj_out(self.norm_out(x))


class TransVQ(SimVQ):
    """SimVQ with :class:`CodebookTransformer` as the map over the frozen table."""

    def build_transform(self) -> nn.Module:
        o = self.options
        return CodebookTransformer(self.codebook_size, self.dim, o.model_dim, o.mlp_ratio, o.learned_pos)
