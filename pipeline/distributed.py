"""Several processes, one run: ``torch.distributed`` as ``torchrun`` sets it up.

``torchrun`` (or ``python -m torch.distributed.run``) starts the processes and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in each one's environment; this module reads
them. Without them the run is one process and every helper here is the identity, so the
single-process path runs no collective and gives the numbers it gave before.

How a run stays one run on every rank (README, "Many GPUs"):

- every rank holds the same model, codebook and RNG state: the initial weights come from the
  same seed; gradients are averaged by DDP; whatever a quantizer computes from the whole batch
  (code counts, EMA sums, pooled latents) is all-reduced or gathered before use; every random
  draw is made on every rank in the same amount (per-row noise is drawn for the whole global
  batch and each rank keeps its rows, :func:`rows_of_global`), so the RNG states never part;
- a global batch of B rows is split into equal contiguous shares: rank r trains on rows
  [r B/N, (r+1) B/N) of the batch one process would draw, so N processes see the same data as
  one, whatever N is;
- only rank 0 writes files, checkpoints and tracking runs (:func:`is_main`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

#: How long a collective may wait for a rank before the job fails (a rank that died leaves the
#: others waiting; torchrun normally ends them first, this bounds it when it cannot).
TIMEOUT_ENV = "NSVQ_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


def world() -> World:
    """This process's place among the run's processes (one process: World(0, 1, 0))."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def size() -> int:
    return world().size


def rank() -> int:
    return world().rank


def is_main() -> bool:
    """True on the process that writes outputs, checkpoints and tracking (rank 0)."""
    return world().rank == 0


def active() -> bool:
    """True when collectives run (a process group of more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun described (NCCL on CUDA, gloo on the CPU); a no-op for
    one process or when already joined."""
    if world().size <= 1 or dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timeout)


def local_device(preference: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (one GPU per process)."""
    if preference.type == "cuda" and preference.index is None and world().size > 1:
        return torch.device("cuda", world().local_rank)
    return preference


def share(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows (the last ranks get one row fewer when ``n``
    does not divide: used to shard evaluation sets, never training batches)."""
    w, r = size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


# -- collectives (identity for one process) ------------------------------------------------
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place; ``t`` itself for one process."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order (each rank's ``t`` has the same shape)."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of every rank in rank order when shares differ by one row (:func:`share`)."""
    if not active():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.empty_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    if most == 0:
        return t
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def gather_array(a: np.ndarray) -> np.ndarray:
    """numpy rows of every rank in rank order (:func:`gather_rows` through the backend's device:
    the GPU for NCCL, the CPU for gloo); ``a`` itself for one process."""
    if not active():
        return a
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return gather_rows(torch.from_numpy(np.ascontiguousarray(a)).to(dev)).cpu().numpy()


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if active():
        dist.broadcast(t, src)
    return t


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (small picklable values: a resume decision)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def rows_of_global(draw, local_rows: int):
    """This rank's rows of a draw made for the whole global batch: ``draw(global_rows)`` runs
    on every rank with the same RNG state, so the RNG states stay equal on all ranks and each
    rank's rows are what one process would have drawn for them."""
    if not active():
        return draw(local_rows)
    full = draw(local_rows * dist.get_world_size())
    r = dist.get_rank()
    return full[r * local_rows:(r + 1) * local_rows]


def wrap(model: torch.nn.Module, device: torch.device, *, find_unused: bool = False,
         broadcast_buffers: bool = False) -> torch.nn.Module:
    """``model`` under DDP when collectives run, else ``model`` itself.

    ``broadcast_buffers`` (default False): buffers (EMA tables, usage counts) are kept equal by
    the quantizers' own reductions; DDP's per-forward copy from rank 0 would hide a rank that
    drifted. True for the GAN discriminator, whose BatchNorm statistics are per rank.
    ``find_unused``: for recipes whose set of trained parameters changes during the run (the
    frozen encoder of train_vq's second phase, SF-DiVeQ's warm-up, where the codes are unused).
    """
    if not active():
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():   # torch 2.14 renames broadcast_buffers; older ones lack the new name
        warnings.simplefilter("ignore", FutureWarning)
        return DDP(model, device_ids=ids, broadcast_buffers=broadcast_buffers, find_unused_parameters=find_unused)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
