"""Prepared images on disk: fixed-size uint8 ``.npy`` shards, memory-mapped when read.

A split is the shards ``<split>-00000.npy``, ``<split>-00001.npy``, ... of shape
(n, T, T, 3), n = ``data.shard_size`` except in the last one. :class:`ShardedImages` reads them
as one (N, S, S, 3) array: a row or a batch of rows is copied out of the memory maps, so
nothing is loaded until it is used and memory is flat in the dataset's size. When the split is
stored larger than it is served (training images at ``data.train_store_size`` T > S, to leave
random crops room), the array view serves the centre S x S crop and :meth:`ShardedImages.stored`
the full stored rows.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_path
from ..digest import file_sha256, stamp_file, verify_file
from .demo import SPLITS
from .errors import DataError


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npy"


def rows_name(split: str) -> str:
    """The file listing a folder source's images row by row: ``relative path<TAB>class index``."""
    return f"{split}-files.tsv"


_HEADER_BYTES = 128     # what np.save writes for a (n, T, T, 3) uint8 header (padded to 64-byte alignment)


def _npy_header(count: int, side: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (count, side, side, 3)})
    header = buf.getvalue()
    if len(header) != _HEADER_BYTES:
        raise ValueError(f"unexpected .npy header length {len(header)} for {count} images of {side} px")
    return header


class ShardWriter:
    """Rows of one split streamed straight into shard files of ``shard_size`` rows: the file
    is written as the rows come (no shard-sized buffer in memory), hashed as it is written,
    and renamed into place when full. The bytes are those of ``np.save`` of the shard."""

    def __init__(self, folder: Path, split: str, side: int, shard_size: int, first_index: int = 0):
        self.folder, self.split, self.side, self.shard_size = folder, split, side, shard_size
        self.index, self.filled, self.file, self.hash = first_index, 0, None, None

    @property
    def full(self) -> bool:
        return self.filled == self.shard_size

    def _tmp(self) -> Path:
        return self.folder / f".{shard_name(self.split, self.index)}.tmp"

    def add(self, image: np.ndarray) -> None:
        if self.file is None:
            # Written for a full shard; a shorter last shard gets its header rewritten at flush.
            header = _npy_header(self.shard_size, self.side)
            self.file, self.hash = open(self._tmp(), "wb"), hashlib.sha256(header)
            self.file.write(header)
        data = np.ascontiguousarray(image, dtype=np.uint8).data
        self.file.write(data)
        self.hash.update(data)
        self.filled += 1

    def flush(self) -> dict:
        """Close the current shard (at least one row); returns {"file", "count", "sha256"}."""
        name, tmp = shard_name(self.split, self.index), self._tmp()
        if self.filled != self.shard_size:
            self.file.seek(0)
            self.file.write(_npy_header(self.filled, self.side))
        self.file.close()        # no fsync: a resumed run re-verifies every shard's sha256 anyway
        digest = self.hash.hexdigest() if self.filled == self.shard_size else file_sha256(tmp)
        os.replace(tmp, self.folder / name)
        record = {"file": name, "count": self.filled, "sha256": digest}
        self.index, self.filled, self.file, self.hash = self.index + 1, 0, None, None
        return record

    def abandon(self) -> None:
        """Drop the shard being written (an error or interruption before it was complete)."""
        if self.file is not None:
            self.file.close()
            self._tmp().unlink(missing_ok=True)
            self.file = None


class ShardedImages:
    """One split's shards as a read-only (N, side, side, 3) uint8 array (see the module
    docstring). Supports ``len``, ``shape``, an int, a slice or an index array, and
    ``np.asarray`` (which reads everything). Pickles as its paths (DataLoader workers reopen
    the memory maps instead of copying the data)."""

    def __init__(self, paths: list[str | Path], counts: list[int], stored_side: int, side: int | None = None):
        self.paths = [str(p) for p in paths]
        self.counts = [int(c) for c in counts]
        self.offsets = np.cumsum([0] + self.counts)
        self.stored_side = stored_side
        self.side = stored_side if side is None else side
        if not 0 < self.side <= stored_side:
            raise ValueError(f"cannot serve {self.side} px crops of {stored_side} px images")
        self._maps: list[np.ndarray] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def stored(self) -> ShardedImages:
        """The same rows at their stored size (no centre crop)."""
        return ShardedImages(self.paths, self.counts, self.stored_side)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.offsets[-1]), self.side, self.side, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(p, mmap_mode="r", allow_pickle=False) for p in self.paths]
        return self._maps

    def _crop(self, rows: np.ndarray) -> np.ndarray:
        if self.side == self.stored_side:
            return rows
        o = (self.stored_side - self.side) // 2
        return np.ascontiguousarray(rows[:, o:o + self.side, o:o + self.side])

    def read(self, index: Iterable[int]) -> np.ndarray:
        """The stored rows ``index`` (in that order) as a new (k, T, T, 3) array, uncropped."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row index out of range for {n} images")
        index = np.where(index < 0, index + n, index)
        out = np.empty((index.size, self.stored_side, self.stored_side, 3), dtype=np.uint8)
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        maps = self.maps()
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            local = index[where] - self.offsets[s]
            order = np.argsort(local, kind="stable")      # ascending reads within a shard
            out[where[order]] = maps[s][local[order]]
        return out

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for s, m in enumerate(self.maps()):
            lo, hi = max(start, self.offsets[s]), min(stop, self.offsets[s + 1])
            if lo < hi:
                parts.append(m[lo - self.offsets[s]:hi - self.offsets[s]])
        if not parts:
            return np.empty((0, self.stored_side, self.stored_side, 3), dtype=np.uint8)
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._crop(self.read([key]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._crop(self._read_range(start, max(start, stop)))
            return self._crop(self.read(range(start, stop, step)))
        return self._crop(self.read(key))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)


# --------------------------------------------------------------------------- reading back

def load_manifest(prepared_dir: str | Path) -> dict:
    """The manifest.json written by prepare."""
    path = Path(prepared_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found; run the prepare stage first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or not {"image_size", "counts", "shards", "sha256"} <= manifest.keys():
        raise DataError(f"{path}: not a dataset manifest of this version (needs image_size, counts, shards "
                        "and sha256); rerun the prepare stage")
    return manifest


def _verified(prepared_dir: Path, manifest: dict, name: str) -> Path:
    path = prepared_dir / name
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage first")
    digest = manifest["sha256"].get(name)
    if not digest:
        raise DataError(f"{path}: the manifest records no sha256 for it; rerun the prepare stage")
    if not verify_file(path, digest, stamp_file(prepared_dir)):
        raise DataError(f"{path}: corrupted (its sha256 is not the one the manifest records); "
                        "rerun the prepare stage (dvc repro -f prepare) or restore it (dvc checkout)")
    return path


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split: {split!r} is not one of {', '.join(SPLITS)}")


def load_split(prepared_dir: str | Path, split: str) -> ShardedImages:
    """One split as a read-only :class:`ShardedImages` of (N, S, S, 3), S = ``image_size``,
    checked against the manifest: each shard's shape, and its sha256 (pipeline/digest.py:
    hashed once per change on disk)."""
    _check_split(split)
    prepared_dir = Path(prepared_dir)
    manifest = load_manifest(prepared_dir)
    stored = manifest["stored_size"][split]
    paths, counts = [], []
    for shard in manifest["shards"][split]:
        path = _verified(prepared_dir, manifest, shard["file"])
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy file ({e})") from None
        expected = (shard["count"], stored, stored, 3)
        if array.dtype != np.uint8 or array.shape != expected:
            raise DataError(f"{path}: holds {array.dtype} {array.shape}, but the manifest says "
                            f"uint8 {expected}; rerun the prepare stage")
        paths.append(path)
        counts.append(shard["count"])
    if sum(counts) != manifest["counts"][split]:
        raise DataError(f"{prepared_dir / 'manifest.json'}: its {split} shards hold {sum(counts)} images, "
                        f"its counts say {manifest['counts'][split]}; rerun the prepare stage")
    return ShardedImages(paths, counts, stored, manifest["image_size"])


def load_rows(prepared_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """A folder source's (relative path, class index or -1) of each row of ``split``, in row
    order (the classes' names are the manifest's ``classes``)."""
    _check_split(split)
    prepared_dir = Path(prepared_dir)
    manifest = load_manifest(prepared_dir)
    if manifest["source"] == "demo":
        raise DataError(f"{prepared_dir}: the demo set has crops, not files (see the manifest's photos)")
    path = _verified(prepared_dir, manifest, rows_name(split))
    rows = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        rel, label = line.rsplit("\t", 1)
        rows.append((rel, int(label)))
    return rows


def write_rows(path: Path, rows: list[tuple[str, int]]) -> str:
    """Write a rows file (see :func:`load_rows`); returns its sha256."""
    body = "".join(f"{rel}\t{label}\n" for rel, label in rows).encode("utf-8", "surrogateescape")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(body)
    return hashlib.sha256(body).hexdigest()
