"""Training batches as a pure function of (seed, step), so a resumed run sees exactly the
batches an uninterrupted one would have."""
from __future__ import annotations

import numpy as np
import torch

from ..images import images_to_input
from .device import to_device_async


class BatchSource:
    """Random batches of rows of ``data`` on the device.

    ``images=True``: uint8 (N, H, W, 3) images, given as float (B, 3, H, W) in [-1, 1]
    (channels-last on CUDA); ``images=False``: integer rows (N, T) (token sequences), given as
    long (B, T). Small sets live on the device (one transfer, then device-side gathers); larger
    ones are indexed on the host and copied per batch. Batch ``step`` draws its rows with a
    generator seeded by (seed, step).
    """

    def __init__(self, data, batch_size: int, seed: int, device: torch.device, *, images: bool = True,
                 max_device_bytes: int = 2 << 30):
        if images:
            if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
                raise ValueError(f"expected uint8 (N, H, W, 3) images, got {data.dtype} {data.shape}")
        elif data.ndim != 2:
            raise ValueError(f"expected (N, T) rows, got shape {tuple(data.shape)}")
        self.n = data.shape[0]
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.is_images = images
        dtype = None if images else torch.long
        if data.nbytes <= max_device_bytes:
            self.data = torch.tensor(np.asarray(data), dtype=dtype, device=device)   # one copy, then gathers
        else:
            self.data = data                                                    # host (memmap), read per batch
        self.channels_last = images and device.type == "cuda"

    def indices(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(0, self.n, (self.batch_size,), generator=g)

    def batch(self, step: int) -> torch.Tensor:
        idx = self.indices(step)
        if isinstance(self.data, torch.Tensor):
            raw = self.data[to_device_async(idx, self.device)]
        else:
            raw = to_device_async(torch.from_numpy(np.asarray(self.data[idx.numpy()])), self.device)
        if not self.is_images:
            return raw.long()
        x = images_to_input(raw)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
