"""The bundled demo set: seeded random square crops from photographs that ship inside
scikit-image, scikit-learn and matplotlib (found on disk; nothing is downloaded).

The rightmost :data:`VAL_STRIP` of each photo is reserved for validation crops and the rest
for training crops, so the splits never share a pixel.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

from .decode import resize, to_rgb
from .errors import DataError

if TYPE_CHECKING:
    from ..config import DataParams

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


def demo_counts(params: DataParams) -> dict[str, list[int]]:
    """Crops per photo, per split."""
    n = len(DEMO_PHOTOS)
    return {"train": _spread(params.demo_train_crops, n), "val": _spread(params.demo_val_crops, n)}


def demo_images(params: DataParams, split: str, side: int) -> Iterator[np.ndarray]:
    """``split``'s demo crops in order (photo by photo), each resized to ``side``."""
    counts = demo_counts(params)[split]
    for i, path in enumerate(demo_photo_paths()):
        with Image.open(path) as im:
            photo = to_rgb(im)
        for box in demo_crop_boxes(*photo.size, split, counts[i], params, i):
            # Crop before resizing: resize(box=...) lets the filter read pixels outside
            # the box, which would leak the other split's pixels across the strip edge.
            yield resize(photo.crop(box), side)


def demo_info(params: DataParams) -> dict:
    """The manifest's account of the demo crops."""
    counts = demo_counts(params)
    photos = {p.stem: {split: counts[split][i] for split in SPLITS} for i, p in enumerate(demo_photo_paths())}
    return {"photos": photos, "val_strip": VAL_STRIP}
