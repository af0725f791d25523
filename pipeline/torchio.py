"""Torch objects on disk: model files and checkpoints are written atomically, with bytes that
depend only on their contents, hold CPU tensors so they load anywhere, and are read back with
a loader that cannot execute code."""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .errors import UnreadableFileError


class _HashingWriter:
    """A write-only file that hashes what passes through (torch.save only writes sequentially)."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str | Path) -> str:
    """torch.save to a temp file in the same folder, then rename over ``path``; returns the
    sha256 of the bytes written (hashed on the way out: no second read).

    Saved through a file object: given a path, torch.save names the zip's root folder after the
    file (here the random temp name), so the same object gave different bytes on every run and
    DVC saw a changed output, rerunning every stage downstream of an unchanged model."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _HashingWriter(f)
        torch.save(obj, out)
    return out.sha256.hexdigest()


def safe_load(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: only tensors, numbers, strings and containers
    come back, so a crafted file cannot run code (``weights_only=False`` unpickles arbitrary
    objects, and a pickle can call any function). Every failure is an
    :class:`UnreadableFileError` naming ``path`` and saying what it should have been (``what``,
    e.g. "model file")."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses a global it does not allow: the file holds code or foreign objects.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(f"{path}: refused to load this {what}: it holds objects other than "
                                  f"tensors and plain data, which could run code ({first})") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        # torch reports a truncated or corrupted zip as RuntimeError / OSError (errno 22) / EOFError.
        raise UnreadableFileError(f"{path}: unreadable {what} (truncated or corrupted? "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                                  ) from None


def cpu_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` with every tensor detached and on the CPU, for model files that
    load anywhere. Not every entry is a tensor: a submodule's get_extra_state() (SF-DiVeQ's
    warm-up flag) is stored as whatever it returns, so non-tensors pass through."""
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.state_dict().items()}


def load_state(module: torch.nn.Module, state_dict: Any, path: str | Path) -> None:
    """``module.load_state_dict(state_dict)``, a mismatch reported as an error naming ``path``."""
    if not isinstance(state_dict, dict):
        raise UnreadableFileError(f"{path}: its state_dict is a {type(state_dict).__name__}, not a dict")
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UnreadableFileError(f"{path}: its weights do not fit the model it describes ({first})") from None
