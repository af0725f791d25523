"""The optimizer step every recipe takes, and Adam from a params section."""
from __future__ import annotations

import torch


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                   params=None) -> None:
    """zero_grad, backward, optional grad-norm clipping (no host sync), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(
            params if params is not None else [p for g in optimizer.param_groups for p in g["params"]],
            grad_clip, foreach=True)
    optimizer.step()


def make_adam(params, lp, *, lr: float | None = None, betas: tuple[float, float] = (0.9, 0.999)
              ) -> torch.optim.Optimizer:
    """Adam (AdamW when weight_decay > 0) from a LoopParams section; fused kernels on CUDA.

    ``lr`` overrides ``lp.lr`` (e.g. a discriminator's own rate); ``betas`` as in torch
    (GAN training uses (0.5, 0.9), as VQGAN does)."""
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and params[0].is_cuda
    lr = lp.lr if lr is None else lr
    if lp.weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=lp.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused)
