"""A GPT-style autoregressive prior over token grids (the transformer of VQGAN's stage 2,
after GPT-2 / minGPT: pre-LN blocks, causal self-attention, learned positions).

Sequence layout. A tokenizer gives grids (h, w) of indices in [0, K), or (h, w, L) for a
residual quantizer with L levels. The sequence is the grid in raster order (row by row),
the L codes of a position consecutive (coarse level first): T = h * w * L tokens. The
model reads a start token followed by the first T - 1 tokens and predicts all T:
``logits[:, i]`` is p(s_i | s_<i).

Levels. Each level has its own codebook, so the input embedding has one table of K rows
per level (row ``level * K + index``) plus the start token; the output is K logits, the
level of position i being fixed by i (learned positions carry it). With L = 1 this is
the plain GPT over a K-token vocabulary.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnreadableFileError
from ..torchio import atomic_save, cpu_state_dict, load_state, safe_load


def grid_to_sequence(tokens: torch.Tensor) -> torch.Tensor:
    """(N, h, w) or (N, h, w, L) token grids -> (N, h * w * L) raster-order sequences."""
    if tokens.dim() not in (3, 4):
        raise ValueError(f"token grids must be (N, h, w) or (N, h, w, L), got {tuple(tokens.shape)}")
    return tokens.reshape(tokens.shape[0], -1)


def sequence_to_grid(seq: torch.Tensor, grid: tuple[int, int], levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`grid_to_sequence`: (N, T) -> (N, h, w) for one level, else (N, h, w, L)."""
    h, w = grid
    return seq.reshape(seq.shape[0], h, w) if levels == 1 else seq.reshape(seq.shape[0], h, w, levels)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenPrior(nn.Module):
    """p(s) = prod_i p(s_i | s_<i) over raster-ordered token sequences of length ``seq_len``."""

    def __init__(self, codebook_size: int, seq_len: int, levels: int = 1, width: int = 128, layers: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        if seq_len % levels:
            raise ValueError(f"seq_len ({seq_len}) must be a multiple of levels ({levels})")
        self.config = dict(codebook_size=codebook_size, seq_len=seq_len, levels=levels, width=width,
                           layers=layers, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.codebook_size, self.seq_len, self.levels = codebook_size, seq_len, levels
        self.start_token = levels * codebook_size
        self.tok_emb = nn.Embedding(levels * codebook_size + 1, width)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size, bias=False)
        self.register_buffer("level_of", torch.arange(seq_len) % levels, persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, 0.0, 0.02)
        for name, p in self.named_parameters():   # GPT-2: scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def _inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Embedding rows of [start, s_0 .. s_{t-2}] for targets s (B, t): level-offset indices."""
        prev = seq[:, :-1] + self.level_of[:seq.shape[1] - 1] * self.codebook_size
        start = torch.full((seq.shape[0], 1), self.start_token, dtype=seq.dtype, device=seq.device)
        return torch.cat([start, prev], dim=1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits (B, t, K) for target tokens ``seq`` (B, t), t <= seq_len: ``logits[:, i]``
        depends on ``seq[:, :i]`` only."""
        t = seq.shape[1]
        if not 1 <= t <= self.seq_len:
            raise ValueError(f"sequence length {t} is outside [1, {self.seq_len}]")
        x = self.drop(self.tok_emb(self._inputs(seq)) + self.pos_emb[:, :t])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def nll(self, seq: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per token, in nats (0-dim)."""
        logits = self(seq)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seq.reshape(-1))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, top_k: int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` sequences (n, seq_len) drawn token by token from softmax(logits / temperature),
        restricted to the ``top_k`` most likely codes when ``top_k`` > 0."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        device = self.pos_emb.device
        seq = torch.zeros(n, self.seq_len, dtype=torch.long, device=device)
        for i in range(self.seq_len):
            # The token at i is a placeholder: logits[:, i] only sees seq[:, :i].
            logits = self(seq[:, :i + 1])[:, -1].float() / temperature
            seq[:, i] = sample_logits(logits, top_k, generator)
        return seq


def sample_logits(logits: torch.Tensor, top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``logits`` (B, K); with ``top_k`` > 0 only from the k largest."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def save_prior(path: str | Path, prior: TokenPrior | None, meta: dict[str, Any] | None = None) -> None:
    """``{"config": ..., "state_dict": ..., "meta": ...}``, written atomically; ``prior=None``
    records that no prior was trained (config and state_dict None)."""
    state = None if prior is None else cpu_state_dict(prior)
    atomic_save({"config": None if prior is None else dict(prior.config), "state_dict": state,
                 "meta": meta or {}}, path)


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> tuple[TokenPrior | None, dict]:
    """(prior in eval mode or None when none was trained, the raw file dict)."""
    path = Path(path)
    blob = safe_load(path, "prior file")
    if not isinstance(blob, dict) or "config" not in blob:
        raise UnreadableFileError(f"{path}: not a prior file of this project (needs 'config')")
    if blob["config"] is None:
        return None, blob
    try:
        prior = TokenPrior(**blob["config"])
    except TypeError as e:
        raise UnreadableFileError(f"{path}: its prior config does not build a TokenPrior ({e})") from None
    load_state(prior, blob["state_dict"], path)
    return prior.to(device).eval(), blob
