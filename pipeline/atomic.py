"""Atomic outputs: a file or folder appears complete or not at all.

Every stage output (DVC-tracked files, checkpoints, prepared shards) is written to a
temporary sibling and renamed into place, so an interruption never leaves a half-written
file that a rerun (or DVC) would take for a result. Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temp file path beside ``path``; on success it is renamed over ``path``,
    on error deleted. The file gets the permissions a plain open() would give
    (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing whatever ``dst`` was; restore it on failure."""
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    # os.replace cannot overwrite a non-empty directory: move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it replaces ``path``, on error
    it is removed and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
