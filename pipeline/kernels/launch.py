"""Host-side plumbing shared by the Triton kernels: launch records, configs, device facts.

Nothing here is a kernel. ``Launch`` is the static part of one kernel launch (kernel, grid,
constexprs, compile options); the host code launches through it, and tools/sm90.py compiles the
very same record for the H100 without a GPU, so the two cannot drift apart.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import torch

# D up to this uses the FMA path (z columns in registers); larger D uses tl.dot.
FMA_MAX_D = 16
# tl.dot input precisions the kernels accept; plain "tf32" would need an exact fp32 re-check.
DOT_PRECISIONS = ("ieee", "tf32x3")
# Triton's num_stages on CUDA when a launch names none. The NS-loss and merge launches ran with it
# before they named it, the H100 figures in bench/README.md included.
TRITON_DEFAULT_STAGES = 3


def interpret_mode() -> bool:
    """True under Triton's interpreter (TRITON_INTERPRET=1: kernels run on CPU tensors, in numpy)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def dot_block_d(d: int, cap: int = 64) -> int:
    """D chunk of the tl.dot path: a power of two in [16, cap]."""
    return min(cap, max(16, next_pow2(d)))


def padded_dim(d: int, use_dot: bool, cap: int = 64) -> int:
    if not use_dot:
        return d
    bd = dot_block_d(d, cap)
    return -(-d // bd) * bd


def code_tiles(k: int, block_k: int) -> int:
    """T, the packed codebook's tile count: ceil(K / block_k) rounded up to an even count (the
    two-buffer loops consume tiles in pairs)."""
    t = -(-k // block_k)
    return t + t % 2


def merged_config(defaults: dict, overrides: dict | None, who: str) -> dict:
    """``defaults`` with ``overrides`` applied; an unknown key or precision is a ValueError naming ``who``."""
    cfg = dict(defaults)
    unknown = sorted(set(overrides or {}) - set(cfg))
    if unknown:
        raise ValueError(f"{who}: unknown launch-config key(s) {', '.join(unknown)} (known: {', '.join(cfg)})")
    cfg.update(overrides or {})
    if cfg["precision"] not in DOT_PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {', '.join(map(repr, DOT_PRECISIONS))}, "
                         f"got {cfg['precision']!r}")
    return cfg


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (the interpreter on the CPU: 4)."""
    if device.type == "cuda":
        return _cuda_sms(torch.device(device).index if device.index is not None
                         else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class Launch(NamedTuple):
    """The static part of one kernel launch: the kernel, its grid, constexprs and compile
    options. The host code launches it; tools/sm90.py compiles the same thing for
    the H100 without a GPU, so the two cannot drift apart."""
    kernel: object             # a triton.JITFunction
    grid: tuple
    constexprs: dict
    num_warps: int
    num_stages: int

    def __call__(self, *args):
        return self.kernel[self.grid](*args, **self.constexprs, num_warps=self.num_warps,
                                      num_stages=self.num_stages)
