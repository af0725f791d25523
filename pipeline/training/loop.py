"""The training loop: a stage's ``step_fn(step) -> {name: 0-dim tensor}`` run for
``total_steps`` steps, with everything around it.

- metrics are accumulated on the device and read once per ``log_every`` steps (no host sync
  inside the hot loop), shown on a progress bar with the live loss and passed to ``on_log``;
- every ``checkpoint_every`` steps a checkpoint (checkpoint.py) holds every stateful object;
- a rerun with the same fingerprint resumes from the checkpoint and ends exactly where an
  uninterrupted run would have (batches are a function of (seed, step): batches.py); a
  finished run removes its checkpoint.

Under torchrun (pipeline/distributed.py) every rank runs this loop with the same schedule: the
logged means are averaged over ranks (one all-reduce per log interval), only rank 0 shows the
bar, writes and removes the checkpoint, and every rank resumes from the file rank 0 resumes from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import distributed
from ..progress import Progress
from .checkpoint import gather_rng_states, load_checkpoint, remove_checkpoint, save_checkpoint
from .device import amp_dtype, pick_device


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    steps: int
    resumed_from: int
    seconds: float
    final: dict[str, float] = field(default_factory=dict)
    #: the averaged weights (a state dict on the CPU) when the run kept an EMA of them, else None
    ema_state_dict: dict | None = None


class Trainer:
    def __init__(self, name: str, *, total_steps: int, checkpoint_path: str | Path | None,
                 run_fingerprint: str = "", checkpoint_every: int = 200, log_every: int = 10,
                 precision: str = "auto", device: torch.device | str | None = None, progress: bool = True):
        self.name = name
        self.total_steps = total_steps
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.run_fingerprint = run_fingerprint
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.device = distributed.local_device(device if isinstance(device, torch.device) else pick_device(device))
        distributed.init(self.device)
        self.amp_dtype = amp_dtype(precision, self.device)
        self.progress = progress

    def autocast(self):
        """Context for encoder/decoder compute; quantizers switch it off for themselves."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def fit(self, step_fn: Callable[[int], Mapping[str, torch.Tensor]], state: Mapping[str, Any],
            on_log: Callable[[int, dict[str, float]], None] | None = None,
            stop_after: int | None = None) -> TrainResult:
        """Run steps [resumed step, total_steps). ``state``: objects with state_dict/load_state_dict.

        ``stop_after`` ends the run early after that many steps (simulates an interruption).
        """
        start, history, pending = load_checkpoint(self.checkpoint_path, self.run_fingerprint, state, self.device,
                                                  self.name)
        agreed = distributed.broadcast_object(start)
        if agreed != start:
            raise RuntimeError(
                f"[{self.name}] rank {distributed.rank()} would start at step {start} but rank 0 resumes from step "
                f"{agreed} ({self.checkpoint_path}): every process must see the same checkpoint file (put "
                "checkpoints on a filesystem all machines share)")
        main = distributed.is_main()
        if on_log is not None:
            # A resumed run reports the intervals logged before the interruption again, so its
            # tracking run's curves cover every step (the killed attempt's run is marked killed).
            for row in history:
                on_log(row["step"], {k: v for k, v in row.items() if k != "step"})
        t0 = time.monotonic()
        bar = Progress(self.name, self.total_steps, start, self.progress and main)
        # Per-key sums stay on the device; a key absent from some steps is averaged over
        # the steps that reported it (e.g. codes replaced, reported once per round).
        sums = {k: torch.tensor(v, device=self.device) for k, v in pending.get("sums", {}).items()}
        counts: dict[str, int] = dict(pending.get("counts", {}))
        step = start
        try:
            for step in range(start + 1, self.total_steps + 1):
                metrics = step_fn(step - 1)
                for k, v in metrics.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v.clone()
                    counts[k] = counts.get(k, 0) + 1
                if step % self.log_every == 0 or step == self.total_steps:
                    means = {k: v / counts[k] for k, v in _rank_mean(sums).items()}  # the one sync per interval
                    sums, counts = {}, {}
                    history.append({"step": step, **means})
                    if on_log is not None:
                        on_log(step, means)
                    bar.update(step, means)
                interrupt = stop_after is not None and step - start >= stop_after
                if self.checkpoint_path is not None and (
                        (step % self.checkpoint_every == 0 and step < self.total_steps) or interrupt):
                    # The open interval's sums, averaged over ranks on every rank (the logged mean
                    # is linear in them, so this changes no logged value), are what rank 0 saves.
                    pending_sums = _rank_mean(sums)
                    sums = {k: torch.tensor(v, device=self.device) for k, v in pending_sums.items()}
                    rng = gather_rng_states(self.device)
                    if main:
                        save_checkpoint(self.checkpoint_path, self.run_fingerprint, step, history,
                                        {"sums": pending_sums, "counts": counts}, state, self.device, rng)
                if interrupt:
                    break
        finally:
            bar.close()
        if step >= self.total_steps and self.checkpoint_path is not None and main:
            remove_checkpoint(self.checkpoint_path)
        final = dict(history[-1]) if history else {}
        final.pop("step", None)
        return TrainResult(history, step, start, time.monotonic() - t0, final)


def _rank_mean(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """{key: float} of device sums averaged over ranks: one stack, one all-reduce, one host read.
    Every rank holds the same keys in the same order (the same step runs everywhere); the order
    is kept, since it is the order of the history's rows and of the model files' ``final``."""
    if not sums:
        return {}
    keys = list(sums)
    values = distributed.all_reduce_mean(torch.stack([sums[k].float() for k in keys])).tolist()
    return dict(zip(keys, values))
