"""Training batches as a pure function of (seed, step, rank), so a resumed run sees exactly the
batches an uninterrupted one would have, whichever path serves them.

Batch ``step`` draws, from one generator seeded by (seed, step): the row indices of the whole
global batch, then for augmentation each image's crop offset and flip. Rank r of N processes
takes the contiguous share [r B/N, (r+1) B/N) of those draws, so N processes train on exactly
the global batch one process would (pipeline/distributed.py), and a run resumed on another
number of processes continues on the same data. ``augment`` (``data.augment``):
``none`` (the centre crop), ``crop`` (a random ``side`` x ``side`` window of the stored image,
uniform over the offsets), ``crop_flip`` (that, mirrored left-right with probability 1/2).
The crop offsets and flips are drawn even for ``none`` (which reads the centre view, room 0),
after the indices, so the indices do not depend on ``augment``.

Two paths serve the same batches (tests/test_batches.py checks they are equal):

* a set that fits ``max_device_bytes`` lives on the device: one transfer, then device-side
  gathers (the demo set);
* a larger one is read from the shards (memory maps) by ``workers`` DataLoader processes, which
  gather, crop and flip on the host while the device trains; batches arrive pinned on CUDA.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..data.prepare import worker_count
from ..images import images_to_input
from .device import to_device_async

AUGMENTS = ("none", "crop", "crop_flip")
# forkserver, not fork: the stage process has Prefect's and MLflow's threads (and maybe CUDA),
# which a forked child would inherit half-copied; not spawn: a spawned worker ends through
# interpreter finalisation, which aborts in torch's C++ teardown ("terminate called without an
# active exception") after a few hundred batches; a forkserver child ends with os._exit.
_LOADER_CONTEXT = "forkserver"


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The generator of batch ``step``: seeded by seed * 1_000_003 + step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def draw(n: int, batch_size: int, seed: int, step: int, room: int, rank: int = 0, world: int = 1
         ) -> tuple[torch.Tensor, ...]:
    """(row indices, crop offsets y, x in [0, room], flips 0/1) of rank ``rank``'s share of the
    global batch ``step`` of ``batch_size`` rows (all of it for one process)."""
    g = batch_generator(seed, step)
    idx = torch.randint(0, n, (batch_size,), generator=g)
    oy = torch.randint(0, room + 1, (batch_size,), generator=g)
    ox = torch.randint(0, room + 1, (batch_size,), generator=g)
    flip = torch.randint(0, 2, (batch_size,), generator=g)
    if world == 1:
        return idx, oy, ox, flip
    per = batch_size // world
    mine = slice(rank * per, (rank + 1) * per)
    return idx[mine], oy[mine], ox[mine], flip[mine]


def crop_flip(raw: torch.Tensor, side: int, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor | None
              ) -> torch.Tensor:
    """uint8 (B, T, T, 3) -> (B, side, side, 3): image b's window at (oy[b], ox[b]), mirrored
    left-right where flip[b] (None: no flips). One gather, on whatever device ``raw`` is on."""
    b, t = raw.shape[0], raw.shape[1]
    if t == side and flip is None:
        return raw
    ar = torch.arange(side, device=raw.device)
    rows = oy.to(raw.device)[:, None] + ar                                      # (B, side)
    cols = ox.to(raw.device)[:, None] + ar
    if flip is not None:
        f = flip.to(raw.device).bool()[:, None]
        cols = torch.where(f, ox.to(raw.device)[:, None] + (side - 1 - ar), cols)
    return raw[torch.arange(b, device=raw.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _finish(raw: torch.Tensor, images: bool, side: int, augment: str, oy, ox, flip) -> torch.Tensor:
    """Gathered rows -> the batch: images cropped (and flipped) by ``augment``; token rows as they are."""
    if not images:
        return raw
    return crop_flip(raw, side, oy, ox, flip if augment == "crop_flip" else None)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is batch ``step`` (uint8 images or token rows), gathered from the host
    rows (memory maps) the way :meth:`BatchSource.batch` gathers them on the device."""

    def __init__(self, data, batch_size: int, seed: int, rank: int, world: int, room: int, images: bool,
                 side: int, augment: str):
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.room, self.images, self.side, self.augment = room, images, side, augment

    def __len__(self) -> int:        # steps are unbounded; the sampler says which come
        return 1 << 62

    def __getitem__(self, step: int) -> torch.Tensor:
        idx, oy, ox, flip = draw(len(self.data), self.batch_size, self.seed, step, self.room, self.rank,
                                 self.world)
        raw = torch.from_numpy(np.asarray(self.data[idx.numpy()]))
        return _finish(raw, self.images, self.side, self.augment, oy, ox, flip)


class BatchSource:
    """Random batches of rows of ``data`` on the device; ``batch_size`` is the global batch, of
    which this process (``rank`` of ``world``, default: pipeline/distributed.py's) gets its share.

    ``images=True``: uint8 (N, S, S, 3) images (a pipeline.data.ShardedImages, whose stored
    rows may be larger than S, or an array), given as float (B, 3, S, S) in [-1, 1]
    (channels-last on CUDA) with ``augment`` applied; ``images=False``: integer rows (N, T)
    (token sequences), given as long (B, T). See the module docstring for the two paths.
    """

    def __init__(self, data, batch_size: int, seed: int, device: torch.device, *, images: bool = True,
                 augment: str = "none", workers: int = 0, rank: int | None = None, world: int | None = None,
                 max_device_bytes: int = 2 << 30):
        if augment not in AUGMENTS:
            raise ValueError(f"augment: {augment!r} is not one of {', '.join(AUGMENTS)}")
        if images:
            if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
                raise ValueError(f"expected uint8 (N, H, W, 3) images, got {data.dtype} {data.shape}")
        elif data.ndim != 2:
            raise ValueError(f"expected (N, T) rows, got shape {tuple(data.shape)}")
        self.n = data.shape[0]
        here = distributed.world()
        self.rank = here.rank if rank is None else rank
        self.world = here.size if world is None else world
        if batch_size % self.world:
            raise ValueError(f"batch_size: the global batch of {batch_size} does not split into {self.world} "
                             "equal shares (one per process)")
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.is_images = images
        self.augment = augment if images else "none"
        self.side = data.shape[1] if images else 0
        # Random crops read the stored rows (room around the served side); `none` reads the
        # centre view, so its batches need no crop at all.
        cropping = images and self.augment != "none" and hasattr(data, "stored")
        stored = data.stored() if cropping else data
        self.room = stored.shape[1] - self.side if images else 0
        self.workers = worker_count(workers)
        self._loader = None
        self._next_step = None
        if stored.nbytes <= max_device_bytes:
            dtype = None if images else torch.long
            self.data = torch.tensor(np.asarray(stored), dtype=dtype, device=device)   # one copy, then gathers
        else:
            self.data = stored                                                  # host (memmaps), read by workers
        self.channels_last = images and device.type == "cuda"

    def indices(self, step: int) -> torch.Tensor:
        return draw(self.n, self.batch_size, self.seed, step, self.room, self.rank, self.world)[0]

    def _host_batch(self, step: int) -> torch.Tensor:
        """Batch ``step`` from the DataLoader; restarted there when steps are not consecutive."""
        if self._loader is None or step != self._next_step:
            self.close()
            dataset = _StepBatches(self.data, self.batch_size, self.seed, self.rank, self.world, self.room,
                                   self.is_images, self.side, self.augment)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, sampler=_Steps(step), num_workers=self.workers,
                pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
                multiprocessing_context=_LOADER_CONTEXT if self.workers else None)
            self._loader = iter(loader)
        self._next_step = step + 1
        batch = next(self._loader)
        return batch.to(self.device, non_blocking=True) if self.device.type == "cuda" else batch

    def batch(self, step: int) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            idx, oy, ox, flip = draw(self.n, self.batch_size, self.seed, step, self.room, self.rank, self.world)
            raw = _finish(self.data[to_device_async(idx, self.device)], self.is_images, self.side, self.augment,
                          oy, ox, flip)
        else:
            raw = self._host_batch(step)
        if not self.is_images:
            return raw.long()
        x = images_to_input(raw)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def close(self) -> None:
        """Stop the loader's worker processes (they also stop when the source is collected)."""
        if self._loader is not None:
            shutdown = getattr(self._loader, "_shutdown_workers", None)    # absent without workers
            if shutdown is not None:
                shutdown()
            self._loader = None


class _Steps(torch.utils.data.Sampler):
    """Steps ``start``, ``start + 1``, ... (the loop stops asking when training ends)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        step = self.start
        while True:
            yield step
            step += 1
