"""The image data: the bundled demo photographs or a user folder, prepared into uint8 shards.

- ``decode.py``: one file -> 8-bit RGB, upright, short side resized, centre-cropped;
- ``demo.py``: the demo set (seeded crops of photographs shipped in PyPI packages);
- ``folders.py``: a user folder's listing, layout (flat / train_val), classes, and checks;
- ``prepare.py``: ``prepare_dataset``, parallel decode streamed into shards, resumable;
- ``shards.py``: the shard files, ``load_split`` / ``load_manifest`` / ``load_rows``.

pipeline/images.py converts the uint8 NHWC images to and from the models' float NCHW tensors;
pipeline/training/batches.py draws training batches (random crop + flip) from the shards.
numpy and Pillow only: the check stage and prepare's workers import no torch.
"""
from .decode import IMAGE_EXTENSIONS, load_rgb
from .demo import DEMO_PHOTOS, SPLITS, VAL_STRIP, demo_crop_boxes, demo_photo_paths, split_region
from .errors import DataError
from .folders import check_source, plan_folder, source_fingerprint
from .prepare import LOADING_KEYS, prepare_dataset, stored_sizes, worker_count
from .shards import ShardedImages, load_manifest, load_rows, load_split

__all__ = [
    "DataError", "DEMO_PHOTOS", "VAL_STRIP", "SPLITS", "IMAGE_EXTENSIONS", "LOADING_KEYS",
    "demo_photo_paths", "split_region", "demo_crop_boxes", "load_rgb", "plan_folder", "worker_count",
    "prepare_dataset", "stored_sizes", "load_split", "load_manifest", "load_rows", "ShardedImages",
    "check_source", "source_fingerprint",
]
