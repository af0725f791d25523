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

Not ``replaceable``, for the same reasons as SimVQ (frozen random C). The positions start
N(0, pos_std^2) (pos_std 1: nn.Embedding's init, the reference's).

The k-means start (train_vq ``init: kmeans``, :meth:`CodebookTransformer.start_as_identity`):
C := the codes c, and the block is set to pass them through. Both residual branches start at
zero (attention's and the MLP's output layers), W_in = [I_D; 0], every position
p = [0_D, a, -a, 0, ...], so X = [c, a, -a, 0...]. The output LayerNorm then gives
(X - m) / s with m = sum(c) / M and s = sqrt(|X - m|^2 / M) ~ a sqrt(2 / M) = s0 for a >> |c|,
and W_out = s0 [A^-1, 0], A = I - 1 1^T / M (the mean removed from the first D features;
A^-1 = I + 1 1^T / (M - D)), recovers c up to s0 / s - 1 ~ -|c|^2 / (4 a^2). With
a = 100 max|c| the start codebook equals the codes to ~1e-4 relative (tested). Needs learned
positions and model_dim >= D + 2.
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
                 learned_pos: bool = True, pos_std: float = 1.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, model_dim, bias=False)
        self.pos = nn.Embedding(codebook_size, model_dim) if learned_pos else None
        if self.pos is not None:
            with torch.no_grad():
                self.pos.weight.normal_(0.0, pos_std) if pos_std > 0 else self.pos.weight.zero_()
        self.norm1 = nn.LayerNorm(model_dim)
        self.attn = LinearAttention(model_dim)
        self.norm2 = nn.LayerNorm(model_dim)
        hidden = max(1, int(model_dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(model_dim, hidden), nn.GELU(), nn.Linear(hidden, model_dim))
        self.norm_out = nn.LayerNorm(model_dim)
        self.proj_out = nn.Linear(model_dim, dim, bias=False)

    @torch.no_grad()
    def start_as_identity(self, codes: torch.Tensor, ratio: float = 100.0) -> None:
        """Weights under which the block maps ``codes`` (K, D) to themselves, up to ~1/(4 ratio^2)
        relative (the construction: module docstring)."""
        m, d = self.proj_in.weight.shape
        if self.pos is None or m < d + 2:
            raise ValueError(f"the TransVQ k-means start needs quantizer.transvq.learned_pos: true and "
                             f"quantizer.transvq.model_dim >= code_dim + 2 (got {m}, code_dim {d})")
        a = ratio * codes.norm(dim=1).max().clamp_min(1e-6)
        self.proj_in.weight.zero_()
        self.proj_in.weight[:d].copy_(torch.eye(d))
        self.pos.weight.zero_()
        self.pos.weight[:, d], self.pos.weight[:, d + 1] = a, -a
        for layer in (self.attn.to_out, self.mlp[-1]):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        for norm in (self.norm1, self.norm2, self.norm_out):
            norm.reset_parameters()
        inv = torch.eye(d) + torch.ones(d, d) / (m - d)
        self.proj_out.weight.zero_()
        self.proj_out.weight[:, :d].copy_(a * (2.0 / m) ** 0.5 * inv)

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
        return CodebookTransformer(self.codebook_size, self.dim, o.model_dim, o.mlp_ratio, o.learned_pos, o.pos_std)

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        """C := the codes, the transformer set to start as the identity on them."""
        self.check_init_codes(codes)
        self.frozen_codebook.copy_(codes)
        self.transform.start_as_identity(codes.to(self.frozen_codebook))
