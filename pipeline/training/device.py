"""Where and in what precision training runs, and getting data there without a host sync."""
from __future__ import annotations

import os

import torch


def pick_device(preference: str | None = None) -> torch.device:
    """``preference`` or $NSVQ_DEVICE ("cpu", "cuda", "cuda:1", ...); default CUDA if available."""
    choice = preference or os.environ.get("NSVQ_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the encoder/decoder; None means plain fp32 (``auto``: bf16 on CUDA)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor ``t`` on ``device`` without making the host wait for the device.

    A plain ``.to("cuda")`` of a host tensor first waits for every kernel already queued
    (torch copies pageable memory with cudaMemcpy + stream sync), so one copy per step would
    stall the host each step and its next launches would stop overlapping the GPU's work.
    From pinned memory with ``non_blocking`` the copy is queued like a kernel; the caching
    host allocator keeps the pinned buffer alive until the copy is done.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def compile_autoencoder(model, enabled: bool) -> None:
    """torch.compile the encoder and decoder in place (the quantizer stays eager: its GPU
    path is already fused kernels, and its shapes vary with the codebook)."""
    if enabled:
        # Module.compile keeps the module (and its state_dict keys); torch.compile(m) would wrap it.
        model.encoder.compile()
        model.decoder.compile()
