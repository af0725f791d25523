"""A user's folder of images: the listing, the layout (which file is train, which is val),
the class folders, and the checks ``data.source`` must pass.

Layouts (``data.layout``):

* ``flat``: every image below the folder, at any depth; a file goes to val when the hash of
  its relative path falls below ``val_fraction``, so adding files never moves existing ones.
* ``train_val``: the folder's ``train/`` and ``val/`` sub-folders are the splits, as given
  (ImageNet, CelebA-HQ's split lists); files outside them are not used.
* ``auto``: ``train_val`` when both sub-folders exist, else ``flat``.

Classes: when every training image sits in a first-level sub-folder of its split's folder and
there are at least two of them (ImageNet's ``train/n01440764/...``), the sub-folder names,
sorted, are the classes and each image keeps its class index (-1 for a val image outside
them, e.g. ImageNet's flat val folder). Otherwise there are no classes and every index is -1.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import IMAGE_EXTENSIONS
from .demo import DEMO_PHOTOS, SPLITS, demo_photo_paths
from .errors import DataError

def _files(root: Path) -> list[tuple[str, int, int]]:
    """Every file below ``root`` as (posix relative path, size, mtime in ns), sorted by path;
    one scandir pass (no second stat per file), small tuples (a stat_result costs ~0.8 KB: 1 GB
    for ImageNet's listing)."""
    out, stack = [], [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat()
                    out.append((prefix + entry.name, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda item: item[0])
    return out


def listing_sha256(listing: list[tuple[str, int, int]]) -> str:
    """The sha256 of (relative path, size, mtime in ns) lines."""
    h = hashlib.sha256()
    for rel, size, mtime in listing:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def is_image(rel: str) -> bool:
    return Path(rel).suffix.lower() in IMAGE_EXTENSIONS


def val_hash(relpath: str) -> float:
    """A stable number in [0, 1) from a relative path; below val_fraction means val."""
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(relpaths: list[str], val_fraction: float, root: str) -> dict[str, list[str]]:
    """``relpaths`` per split by :func:`val_hash`; at least one in each split."""
    if len(relpaths) < 2:
        raise DataError(f"data.source: {root!r} has {len(relpaths)} image file(s); "
                        "at least 2 are needed (one for train, one for val)")
    scores = [val_hash(p) for p in relpaths]
    is_val = [s < val_fraction for s in scores]
    # Too few files for the hash to hit both splits: move the file nearest the threshold.
    if not any(is_val):
        is_val[int(np.argmin(scores))] = True
    elif all(is_val):
        is_val[int(np.argmax(scores))] = False
    return {"train": [p for p, v in zip(relpaths, is_val) if not v],
            "val": [p for p, v in zip(relpaths, is_val) if v]}


@dataclass
class FolderPlan:
    """What prepare will decode from a folder, decided before any image is opened."""
    layout: str                                    # "flat" or "train_val"
    classes: list[str]                             # [] without class folders
    items: dict[str, list[tuple[str, int]]]        # split -> [(relative path, class index or -1)]
    files_found: int
    image_files: int                               # image files in the splits
    ignored: list[str]                             # files not used: not an image, or outside train/ val/
    listing_sha256: str                            # of every file's path, size and mtime


def _class_of(rel_in_split: str) -> str | None:
    parts = rel_in_split.split("/")
    return parts[0] if len(parts) > 1 else None


def plan_folder(source: str, layout: str, val_fraction: float) -> FolderPlan:
    """The split and class of every image below ``source`` (see the module docstring)."""
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"data.source: {source!r} is neither 'demo' nor an existing folder")
    if layout not in ("auto", "flat", "train_val"):     # params.yaml is validated by config.DataParams
        raise ValueError(f"unknown layout {layout!r}")
    listing = _files(root)
    has_split_dirs = all((root / s).is_dir() for s in SPLITS)
    if layout == "train_val" and not has_split_dirs:
        raise DataError(f"data.layout: 'train_val' needs the folders {source}/train and {source}/val")
    layout = "train_val" if layout == "train_val" or (layout == "auto" and has_split_dirs) else "flat"
    ignored = [rel for rel, _, _ in listing if not is_image(rel)]
    images = [rel for rel, _, _ in listing if is_image(rel)]
    if layout == "flat":
        within = {split: [(rel, rel) for rel in part]
                  for split, part in hash_split(images, val_fraction, source).items()} if images else {}
    else:
        within = {split: [(rel, rel[len(split) + 1:]) for rel in images if rel.startswith(split + "/")]
                  for split in SPLITS}
        used = {rel for part in within.values() for rel, _ in part}
        ignored += [rel for rel in images if rel not in used]
        ignored.sort()
    if not images or not any(within.values()):
        raise DataError(f"data.source: {source!r} contains no image file "
                        f"({len(listing)} file(s); image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    for split in SPLITS:
        if not within[split]:
            raise DataError(f"data.source: {source}/{split} holds no image file")
    train_classes = [_class_of(inner) for _, inner in within["train"]]
    classes = sorted(set(train_classes)) if None not in train_classes else []
    if len(classes) < 2:
        classes = []
    index = {c: i for i, c in enumerate(classes)}
    items = {split: [(rel, index.get(_class_of(inner), -1)) for rel, inner in part]
             for split, part in within.items()}
    return FolderPlan(layout, classes, items, len(listing), sum(len(v) for v in items.values()), ignored,
                      listing_sha256(listing))


def check_source(source: str, repo: Path, outputs: list[str]) -> None:
    """``data.source`` must be 'demo' or a readable folder that is neither the repository (or a
    folder above it) nor inside or around one of the pipeline's outputs (``outputs``, relative
    to ``repo``) or the repository's git-tracked files: a source there would train on the
    pipeline's own files."""
    if source == "demo":
        return
    if not source.strip():
        raise DataError("data.source: '' is not a folder; give 'demo' or the path of a folder of images")
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.source: {source!r} is neither 'demo' nor an existing folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data.source: {source!r} is not readable")
    repo = repo.resolve()
    if root == repo or root in repo.parents:
        raise DataError(f"data.source: {source!r} contains the repository itself ({repo}); "
                        "give a folder of images outside it")
    for out in outputs:
        out_path = (repo / out).resolve()
        if root == out_path or out_path in root.parents or root in out_path.parents:
            raise DataError(f"data.source: {source!r} overlaps the pipeline output {out}; "
                            "give a folder of images outside the outputs")
    if root.is_relative_to(repo):
        tracked = subprocess.run(["git", "ls-files", "--", str(root)], cwd=repo, capture_output=True, text=True)
        if tracked.returncode == 0 and tracked.stdout.strip():
            raise DataError(f"data.source: {source!r} holds files git tracks "
                            f"({tracked.stdout.split()[0]}, ...); give a folder of images outside the sources")


def source_fingerprint(source: str) -> dict:
    """What must change for ``prepare`` to rerun: for a folder, the sha256 of its listing (every
    file's relative path, size and mtime in ns) and the file count; for 'demo', the photos'
    paths and sizes. A content change that keeps a file's size and mtime (``touch -r``) is
    not seen; anything that rewrites a file is."""
    if source == "demo":
        listing = [(f"{pkg}/{rel}", path.stat().st_size, 0) for (pkg, rel), path in zip(DEMO_PHOTOS, demo_photo_paths())]
    else:
        listing = _files(Path(source).expanduser())
    return {"source": source, "files": len(listing), "listing_sha256": listing_sha256(listing)}
