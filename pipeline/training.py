"""The one training loop every stage uses (pretrain, train_vq, refine_gan, train_prior).

A stage supplies ``step_fn(step) -> {name: 0-dim tensor}`` that does one optimisation step;
:class:`Trainer` owns everything around it:

- device (``NSVQ_DEVICE`` env var, else CUDA when present, else CPU) and precision
  (``auto``: bf16 autocast on CUDA, fp32 on CPU);
- metrics accumulated on the device and read once per ``log_every`` steps (no host sync
  inside the hot loop), a progress bar with the live loss, and an ``on_log`` callback;
- checkpoints every ``checkpoint_every`` steps, written atomically (temp file + rename),
  holding every stateful object, the RNG states and the loss history;
- resume: a rerun finds the checkpoint of an interrupted run with the same fingerprint
  (a hash of the stage's params and inputs) and continues from its step instead of
  starting over. A finished run removes its checkpoint.

Batches are drawn by :class:`BatchSource` with a generator seeded by (seed, step), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .atomic import atomic_path
from .images import images_to_input


def pick_device(preference: str | None = None) -> torch.device:
    """``preference`` or $NSVQ_DEVICE ("cpu", "cuda", "cuda:1", ...); default CUDA if available."""
    choice = preference or os.environ.get("NSVQ_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the encoder/decoder; None means plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (params dicts, input file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename over ``path``.

    Saved through a file object: given a path, torch.save names the zip's root folder after the
    file (here the random temp name), so the same object gave different bytes on every run and
    DVC saw a changed output, rerunning every stage downstream of an unchanged model."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def cpu_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` with every tensor detached and on the CPU, for model files that
    load anywhere. Not every entry is a tensor: a submodule's get_extra_state() (SF-DiVeQ's
    warm-up flag) is stored as whatever it returns, so non-tensors pass through."""
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.state_dict().items()}


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


class BatchSource:
    """Random batches of uint8 NHWC images as float (B, 3, H, W) in [-1, 1] on the device.

    Small sets live on the device as uint8 (one transfer, no per-step copies); larger
    ones are indexed on the host and copied per batch. Batch ``step`` is a pure function
    of (seed, step), which makes resumed runs identical to uninterrupted ones.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 max_device_bytes: int = 2 << 30):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.n = images.shape[0]
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        if images.nbytes <= max_device_bytes:
            self.images = torch.tensor(np.asarray(images), device=device)   # one copy, then device-side gathers
        else:
            self.images = images                                           # host memmap, read per batch
        self.channels_last = device.type == "cuda"

    def indices(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(0, self.n, (self.batch_size,), generator=g)

    def batch(self, step: int) -> torch.Tensor:
        idx = self.indices(step)
        if isinstance(self.images, torch.Tensor):
            raw = self.images[to_device_async(idx, self.device)]
        else:
            raw = to_device_async(torch.from_numpy(self.images[idx.numpy()]), self.device)
        x = images_to_input(raw)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    steps: int
    resumed_from: int
    seconds: float
    final: dict[str, float] = field(default_factory=dict)


class _Progress:
    """tqdm when available, else a line every few seconds (the core must not need tqdm)."""

    def __init__(self, name: str, total: int, initial: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.name, self.total, self.last = name, total, 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=name, mininterval=1.0, file=sys.stderr,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, step: int, metrics: Mapping[str, float] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            if metrics:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}, refresh=False)
            self.bar.refresh()
        elif metrics and (time.monotonic() - self.last > 5 or step == self.total):
            self.last = time.monotonic()
            body = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.name}] {step}/{self.total} {body}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.amp_dtype = amp_dtype(precision, self.device)
        self.progress = progress

    def autocast(self):
        """Context for encoder/decoder compute; quantizers switch it off for themselves."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    # -- checkpoints ----------------------------------------------------------------
    def _load(self, state: Mapping[str, Any]) -> tuple[int, list, dict]:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0, [], {}
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # a checkpoint torn by a crash outside atomic_save: start over
            print(f"[{self.name}] ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
            return 0, [], {}
        if ckpt.get("fingerprint") != self.run_fingerprint:
            print(f"[{self.name}] checkpoint {path} is from other params/inputs; starting over", file=sys.stderr)
            return 0, [], {}
        for key, obj in state.items():
            obj.load_state_dict(ckpt["state"][key])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        print(f"[{self.name}] resuming from step {ckpt['step']} ({path})", file=sys.stderr)
        return ckpt["step"], ckpt["history"], ckpt["pending"]

    def _save(self, state: Mapping[str, Any], step: int, history: list, pending: dict) -> None:
        """``pending``: metric sums and counts of the unfinished log interval, so the interval
        that straddles an interruption still averages over all its steps."""
        if self.checkpoint_path is None:
            return
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        atomic_save({"step": step, "fingerprint": self.run_fingerprint, "history": history, "rng": rng,
                     "pending": pending, "state": {k: v.state_dict() for k, v in state.items()}},
                    self.checkpoint_path)

    # -- the loop -------------------------------------------------------------------
    def fit(self, step_fn: Callable[[int], Mapping[str, torch.Tensor]], state: Mapping[str, Any],
            on_log: Callable[[int, dict[str, float]], None] | None = None,
            stop_after: int | None = None) -> TrainResult:
        """Run steps [resumed step, total_steps). ``state``: objects with state_dict/load_state_dict.

        ``stop_after`` ends the run early after that many steps (simulates an interruption).
        """
        start, history, pending = self._load(state)
        t0 = time.monotonic()
        bar = _Progress(self.name, self.total_steps, start, self.progress)
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
                    means = {k: v.item() / counts[k] for k, v in sums.items()}  # the one sync per interval
                    sums, counts = {}, {}
                    history.append({"step": step, **means})
                    if on_log is not None:
                        on_log(step, means)
                    bar.update(step, means)
                interrupt = stop_after is not None and step - start >= stop_after
                if (step % self.checkpoint_every == 0 and step < self.total_steps) or interrupt:
                    self._save(state, step, history,
                               {"sums": {k: v.item() for k, v in sums.items()}, "counts": counts})
                if interrupt:
                    break
        finally:
            bar.close()
        if step >= self.total_steps and self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        final = dict(history[-1]) if history else {}
        final.pop("step", None)
        return TrainResult(history, step, start, time.monotonic() - t0, final)


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


def compile_autoencoder(model, enabled: bool) -> None:
    """torch.compile the encoder and decoder in place (the quantizer stays eager: its GPU
    path is already fused kernels, and its shapes vary with the codebook)."""
    if enabled:
        # Module.compile keeps the module (and its state_dict keys); torch.compile(m) would wrap it.
        model.encoder.compile()
        model.decoder.compile()
