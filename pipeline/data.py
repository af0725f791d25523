"""Prepare the image dataset: the bundled demo photographs or a user folder, as uint8 arrays.

``prepare_dataset(params, out_dir)`` writes three files:

* ``train.npy`` and ``val.npy``: uint8 arrays of shape (N, S, S, 3), RGB, S = ``image_size``;
* ``manifest.json``: the source, the params, counts per split, the sha256 of each ``.npy``
  and how the images were obtained (demo: crops per photo; folder: files found, used,
  ignored and unreadable with reasons, and which file is which row).

The output is a pure function of the params (and the source files): the same inputs give
byte-identical files, so DVC does not rerun downstream stages. The directory is built in
a temporary sibling and renamed into place, so a failed run leaves nothing half-written.

Sources:

* ``"demo"``: seeded random square crops from photographs that ship inside scikit-image,
  scikit-learn and matplotlib (:data:`DEMO_PHOTOS`, found on disk; nothing is downloaded).
  The rightmost :data:`VAL_STRIP` of each photo is reserved for validation crops and the
  rest for training crops, so the splits never share a pixel.
* a folder: every image below it (recursively), converted to 8-bit RGB, its shorter side
  resized to S and centre-cropped. A file goes to val when the hash of its relative path
  falls below ``val_fraction``, so adding files never moves existing ones.

``load_split`` / ``load_manifest`` read the result back (pipeline/images.py converts these
uint8 NHWC arrays to and from the models' float NCHW tensors).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_dir
from .digest import file_sha256, remember_verified, stamp_file, verify_file
from .errors import UserError, warn

if TYPE_CHECKING:
    from .config import DataParams

__all__ = [
    "DataError", "DEMO_PHOTOS", "VAL_STRIP", "SPLITS", "IMAGE_EXTENSIONS",
    "demo_photo_paths", "split_region", "demo_crop_boxes", "load_rgb",
    "prepare_dataset", "load_split", "load_manifest", "check_source", "source_fingerprint",
]

SPLITS = ("train", "val")

# (package, path inside the installed package): real photographs, no synthetic images.
DEMO_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)

# Share of each demo photo's width, on the right, that only validation crops may use.
VAL_STRIP = 0.2

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

# Pillow's decoders report bad files with many exception types, not just OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  Image.DecompressionBombError)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Unreadable files listed individually on stderr; the manifest always lists all of them.
_MAX_WARNING_LINES = 20


class DataError(UserError):
    """A problem with the data: the message names the file or folder and the param."""


# --------------------------------------------------------------------------- demo photos

def demo_photo_paths() -> list[Path]:
    """The demo photographs on disk, found without importing their packages."""
    paths = []
    for package, relpath in DEMO_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"data.source: 'demo' needs the package {package!r} "
                            f"(for {relpath}), which is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / relpath
        if not path.is_file():
            raise DataError(f"data.source: demo photo {package}/{relpath} is missing ({path})")
        paths.append(path)
    return paths


def split_region(width: int, height: int, split: str) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of a demo photo that ``split``'s crops may use."""
    x = round(width * (1 - VAL_STRIP))
    return (x, 0, width, height) if split == "val" else (0, 0, x, height)


def demo_crop_boxes(width: int, height: int, split: str, n: int, params: DataParams,
                    photo_index: int) -> list[tuple[int, int, int, int]]:
    """``n`` seeded square crop boxes inside ``split``'s region of a ``width`` x ``height`` photo.

    The side is U(demo_min_scale, demo_max_scale) x the photo's short side, clipped to the
    region. Each (seed, photo, split) has its own generator, so changing one count does
    not move the crops of another photo or split.
    """
    x0, y0, x1, y1 = split_region(width, height, split)
    rng = np.random.default_rng([params.seed, photo_index, SPLITS.index(split)])
    scales = rng.uniform(params.demo_min_scale, params.demo_max_scale, n)
    sides = np.clip(np.rint(scales * min(width, height)), 1, min(x1 - x0, y1 - y0)).astype(np.int64)
    lefts = x0 + rng.integers(0, x1 - x0 - sides + 1)
    tops = y0 + rng.integers(0, y1 - y0 - sides + 1)
    return [(int(x), int(y), int(x + s), int(y + s)) for x, y, s in zip(lefts, tops, sides)]


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal counts that sum exactly."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _prepare_demo(params: DataParams) -> tuple[dict[str, np.ndarray], dict]:
    paths = demo_photo_paths()
    per_split = {"train": _spread(params.demo_train_crops, len(paths)),
                 "val": _spread(params.demo_val_crops, len(paths))}
    arrays = {split: _empty(sum(counts), params.image_size) for split, counts in per_split.items()}
    filled = dict.fromkeys(SPLITS, 0)
    photos = {}
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            photo = _to_rgb(im)
        for split in SPLITS:
            n = per_split[split][i]
            for box in demo_crop_boxes(*photo.size, split, n, params, i):
                # Crop before resizing: resize(box=...) lets the filter read pixels outside
                # the box, which would leak the other split's pixels across the strip edge.
                arrays[split][filled[split]] = _resize(photo.crop(box), params.image_size)
                filled[split] += 1
        photos[path.stem] = {split: per_split[split][i] for split in SPLITS}
    return arrays, {"photos": photos, "val_strip": VAL_STRIP}


# --------------------------------------------------------------------------- image decoding

def _scale_16bit(a: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly: a full-range 16-bit value maps to full-range 8-bit.
    return np.rint(a / 257.0).astype(np.uint8)


def _scale_wide(im: Image.Image) -> Image.Image:
    """An "I" (int32) or "F" (float32) image as "L".

    Integers within [0, 65535] are 16-bit data in a 32-bit container (what Pillow gives
    for several 16-bit formats) and are scaled like 16-bit; floats within [0, 1] are
    normalized intensities and are multiplied by 255. Anything else (negative values,
    HDR floats, ...) is stretched linearly from its min..max to 0..255. NaN becomes the
    minimum.
    """
    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise ValueError(f"mode {im.mode} image has no finite pixel values")
    lo, hi = float(finite.min()), float(finite.max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return Image.fromarray(_scale_16bit(a))
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return Image.fromarray(np.rint(a * 255).astype(np.uint8))
    scaled = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image (current frame) as upright 8-bit RGB; transparency over white.

    Pillow's own ``convert`` clips 16-bit grayscale to 255, so high-bit-depth modes are
    scaled here. Pillow has no 16-bit colour mode: it decodes 16-bit RGB(A) PNG/TIFF to
    8 bits itself by keeping the high byte (floor(v / 256), within one level of v / 257).
    """
    im = ImageOps.exif_transpose(im)
    if im.mode in _16BIT_MODES:
        im = Image.fromarray(_scale_16bit(np.asarray(im)))
    elif im.mode in ("I", "F"):
        im = _scale_wide(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im.convert("RGB")


def _resize(im: Image.Image, size: int, box: tuple[float, float, float, float] | None = None
            ) -> np.ndarray:
    """``im`` (or its ``box``) resized to size x size with an antialiasing filter, as uint8 HWC."""
    # reducing_gap: shrink by an integer factor first when far above the target (much
    # faster on big images, visually identical to a full Lanczos pass).
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box,
                                reducing_gap=3.0))


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8: first frame, upright, RGB, short side
    resized to ``size`` and centre-cropped. Raises one of Pillow's decode errors."""
    with Image.open(path) as im:
        # JPEG only: decode at a reduced DCT scale that still covers size x size.
        im.draft(None, (size, size))
        im = _to_rgb(im)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return _resize(im, size, box)


# --------------------------------------------------------------------------- user folder

def _val_hash(relpath: str) -> float:
    """A stable number in [0, 1) from a relative path; below val_fraction means val."""
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _split_files(relpaths: list[str], val_fraction: float, root: str) -> dict[str, list[int]]:
    """Row indices of ``relpaths`` per split; at least one in each split."""
    if len(relpaths) < 2:
        raise DataError(f"data.source: {root!r} has {len(relpaths)} usable image; "
                        "at least 2 are needed (one for train, one for val)")
    scores = [_val_hash(p) for p in relpaths]
    is_val = [s < val_fraction for s in scores]
    # Too few files for the hash to hit both splits: move the file nearest the threshold.
    if not any(is_val):
        is_val[int(np.argmin(scores))] = True
    elif all(is_val):
        is_val[int(np.argmax(scores))] = False
    return {"train": [i for i, v in enumerate(is_val) if not v],
            "val": [i for i, v in enumerate(is_val) if v]}


def _files(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every file below ``root`` as (posix relative path, stat), sorted by path; one scandir
    pass (no second stat per file)."""
    out, stack = [], [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    out.append((Path(entry.path).relative_to(root).as_posix(), entry.stat()))
    out.sort(key=lambda item: item[0])
    return out


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    """Image files below ``root`` sorted by relative path, and the other files' relative paths."""
    files = [rel for rel, _ in _files(root)]
    images = [root / rel for rel in files if Path(rel).suffix.lower() in IMAGE_EXTENSIONS]
    return images, [rel for rel in files if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS]


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
    h = hashlib.sha256()
    if source == "demo":
        listing = [(f"{pkg}/{rel}", path.stat().st_size, 0) for (pkg, rel), path in zip(DEMO_PHOTOS, demo_photo_paths())]
    else:
        listing = [(rel, st.st_size, st.st_mtime_ns) for rel, st in _files(Path(source).expanduser())]
    for rel, size, mtime in listing:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return {"source": source, "files": len(listing), "listing_sha256": h.hexdigest()}


def _warn_unreadable(root: str, unreadable: list[dict[str, str]]) -> None:
    lines = [f"skipped {len(unreadable)} unreadable image file(s) in {root!r}:"]
    lines += [f"  {u['path']}: {u['reason']}" for u in unreadable[:_MAX_WARNING_LINES]]
    if len(unreadable) > _MAX_WARNING_LINES:
        lines.append(f"  ... and {len(unreadable) - _MAX_WARNING_LINES} more (see manifest.json)")
    warn("\n".join(lines))


def _prepare_folder(params: DataParams) -> tuple[dict[str, np.ndarray], dict]:
    root = Path(params.source)
    if not root.is_dir():
        raise DataError(f"data.source: {params.source!r} is neither 'demo' nor an existing folder")
    images, ignored_files = _walk(root)
    ignored = len(ignored_files)
    # Decode one file at a time into a preallocated array: no full-size image is kept.
    decoded = _empty(len(images), params.image_size)
    used: list[str] = []
    unreadable: list[dict[str, str]] = []
    for path in images:
        rel = path.relative_to(root).as_posix()
        try:
            decoded[len(used)] = load_rgb(path, params.image_size)
        except _DECODE_ERRORS as e:
            # Keep absolute machine paths out of the manifest: it must be reproducible.
            reason = f"{type(e).__name__}: {e}".replace(str(path), rel)
            unreadable.append({"path": rel, "reason": reason})
            continue
        used.append(rel)
    if unreadable:
        _warn_unreadable(params.source, unreadable)
    if not used:
        raise DataError(f"data.source: {params.source!r} contains no readable image "
                        f"({len(images)} image file(s), {ignored} other file(s))")
    rows = _split_files(used, params.val_fraction, params.source)
    arrays = {split: decoded[idx] for split, idx in rows.items()}
    info = {
        "files_found": len(images) + ignored,
        "image_files": len(images),
        "ignored_files": ignored,
        "ignored": ignored_files,          # not an image extension (IMAGE_EXTENSIONS), by name
        "used_files": len(used),
        "unreadable": unreadable,
        "unreadable_count": len(unreadable),
        "files": {split: [used[i] for i in idx] for split, idx in rows.items()},
    }
    return arrays, info


# --------------------------------------------------------------------------- writing

def _empty(n: int, size: int) -> np.ndarray:
    return np.empty((n, size, size, 3), dtype=np.uint8)


def prepare_dataset(params: DataParams, out_dir: str | Path) -> dict:
    """Build ``out_dir/{train,val}.npy`` and ``out_dir/manifest.json``; return the manifest.

    Everything is decoded before anything is written, then written into a temporary
    sibling of ``out_dir`` that replaces it at the end: on error ``out_dir`` is untouched.
    """
    if params.source == "demo":
        arrays, info = _prepare_demo(params)
    else:
        arrays, info = _prepare_folder(params)
    with atomic_dir(out_dir) as tmp:
        for split, array in arrays.items():
            np.save(tmp / f"{split}.npy", np.ascontiguousarray(array), allow_pickle=False)
        manifest = {
            "source": params.source,
            "image_size": params.image_size,
            "params": dataclasses.asdict(params),
            "counts": {split: len(array) for split, array in arrays.items()},
            "sha256": {f"{split}.npy": file_sha256(tmp / f"{split}.npy") for split in arrays},
            **info,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    # Just hashed: the stages that read these shards need not hash them again.
    for name, digest in manifest["sha256"].items():
        remember_verified(Path(out_dir) / name, digest, stamp_file(out_dir))
    return manifest


# --------------------------------------------------------------------------- reading

def load_manifest(prepared_dir: str | Path) -> dict:
    """The manifest.json written by :func:`prepare_dataset`."""
    path = Path(prepared_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found; run the prepare stage first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or not {"image_size", "counts"} <= manifest.keys():
        raise DataError(f"{path}: not a dataset manifest (needs image_size and counts)")
    return manifest


def load_split(prepared_dir: str | Path, split: str) -> np.ndarray:
    """One split as a read-only memory-mapped uint8 array (N, S, S, 3), checked against
    the manifest: its shape, and its sha256 (pipeline/digest.py: hashed once per change on disk)."""
    if split not in SPLITS:
        raise DataError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    manifest = load_manifest(prepared_dir)
    path = Path(prepared_dir) / f"{split}.npy"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the prepare stage first") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    size = manifest["image_size"]
    expected = (manifest["counts"].get(split), size, size, 3)
    if array.dtype != np.uint8 or array.shape != expected:
        raise DataError(f"{path}: holds {array.dtype} {array.shape}, but the manifest says "
                        f"uint8 {expected}; rerun the prepare stage")
    digest = manifest.get("sha256", {}).get(path.name)
    if not digest:
        raise DataError(f"{path}: the manifest records no sha256 for it; rerun the prepare stage")
    if not verify_file(path, digest, stamp_file(prepared_dir)):
        raise DataError(f"{path}: corrupted (its sha256 is not the one the manifest records); "
                        "rerun the prepare stage (dvc repro -f prepare) or restore it (dvc checkout)")
    return array


# --------------------------------------------------------------------------- tensors
