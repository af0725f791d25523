"""Torch objects on disk: model files and checkpoints are written atomically, with bytes that
depend only on their contents, and hold CPU tensors so they load anywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path


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
