"""Fused GPU kernels (Triton). Optional: each has a torch reference the tests compare it with
(pipeline/quantizers/search.py, ns_loss.py); nothing here imports the quantizers."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present (or TRITON_INTERPRET=1 is set)."""
    import os

    try:
        import triton  # noqa: F401
    except Exception:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return torch.cuda.is_available()
