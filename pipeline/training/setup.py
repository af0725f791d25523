"""``setup_training``: the set-up every training stage shares, in one call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import distributed
from .batches import BatchSource
from .loop import Trainer, TrainResult
from .optim import make_adam


@dataclass(frozen=True)
class RunOptions:
    """How a stage runs a recipe, beside its params: checkpoints, device, progress."""
    checkpoint: str | Path | None = None   # where the run checkpoints; None: never
    fingerprint: str = ""                  # what a checkpoint must match to be resumed
    device: torch.device | str | None = None   # None: $NSVQ_DEVICE, else CUDA when present
    progress: bool = True
    stop_after: int | None = None          # end after this many steps (tests: an interruption)
    augment: str = "none"                  # data.augment: how training images are cropped (batches.py)
    workers: int = 0                       # data.workers: loader processes for sets off the device; 0: the cores


@dataclass
class Training:
    """What a recipe's step function works with."""
    trainer: Trainer
    optimizer: torch.optim.Optimizer
    batches: BatchSource
    stop_after: int | None = None
    #: what a step calls for the trained forward: the model under DDP when several processes
    #: run (its backward averages the gradients over ranks), else the model itself.
    net: torch.nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def fit(self, step_fn: Callable[[int], Mapping[str, torch.Tensor]], state: Mapping[str, Any],
            on_log=None) -> TrainResult:
        """Run the loop; ``state``: the stateful objects a checkpoint holds (the optimizer is added)."""
        try:
            return self.trainer.fit(step_fn, {**state, "optimizer": self.optimizer}, on_log=on_log,
                                    stop_after=self.stop_after)
        finally:
            self.batches.close()


def setup_training(name: str, lp, model: torch.nn.Module, data, *, total_steps: int, run: RunOptions = RunOptions(),
                   parameters=None, optimizer: Callable[[list, Any], torch.optim.Optimizer] = make_adam,
                   images: bool = True, find_unused: bool = False, ddp: bool = True) -> Training:
    """Device, model on it, optimizer, batches and the Trainer, from a LoopParams section ``lp``.

    The model moves to the device (channels-last on CUDA, which only reorders 4-D conv weights);
    ``optimizer(parameters, lp)`` is built over ``parameters`` (default: the model's; make_adam
    keeps those that require a gradient); batches of ``data`` (images, or token rows with
    ``images=False``) are a pure function of (lp.seed, step), augmented by ``run.augment``; the Trainer checkpoints to
    ``run.checkpoint`` under ``run.fingerprint`` every lp.checkpoint_every steps and logs every
    lp.log_every. Under torchrun, ``lp.batch_size`` is the global batch (each rank gets its share)
    and ``Training.net`` is the model under DDP (``find_unused``: some trained parameters may get
    no gradient in a step; see ``distributed.wrap``; ``ddp=False``: the recipe wraps its own
    forwards, ``net`` is the bare model).
    """
    trainer = Trainer(name, total_steps=total_steps, checkpoint_path=run.checkpoint, run_fingerprint=run.fingerprint,
                      checkpoint_every=lp.checkpoint_every, log_every=lp.log_every, precision=lp.precision,
                      device=run.device, progress=run.progress)
    dev = trainer.device
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = optimizer(list(model.parameters()) if parameters is None else list(parameters), lp)
    batches = BatchSource(data, lp.batch_size, lp.seed, dev, images=images, augment=run.augment, workers=run.workers)
    net = distributed.wrap(model, dev, find_unused=find_unused) if ddp else model
    return Training(trainer, opt, batches, run.stop_after, net)
