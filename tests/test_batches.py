"""pipeline/training/batches.py: random crop + flip, and the two paths serving equal batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import DataParams
from pipeline.configbase import build
from pipeline.data import load_split, prepare_dataset
from pipeline.training.batches import BatchSource, batch_generator, crop_flip, draw

CPU = torch.device("cpu")


def test_crop_flip_by_hand():
    # One 3x3 image, pixel value 10*row + col in every channel.
    img = torch.tensor([[10 * r + c for c in range(3)] for r in range(3)], dtype=torch.uint8)
    raw = img[None, :, :, None].expand(2, 3, 3, 3).contiguous()
    out = crop_flip(raw, 2, torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert out[0, :, :, 0].tolist() == [[10, 11], [20, 21]]        # rows 1-2, cols 0-1
    assert out[1, :, :, 0].tolist() == [[2, 1], [12, 11]]          # rows 0-1, cols 1-2, mirrored


def test_draws_keep_the_single_process_indices():
    # The indices are the pre-augmentation stream: torch.randint from seed * 1_000_003 + step.
    g = torch.Generator().manual_seed(3 * 1_000_003 + 7)
    assert torch.equal(draw(50, 8, 3, 7, 4)[0], torch.randint(0, 50, (8,), generator=g))
    assert batch_generator(3, 7).initial_seed() == 3 * 1_000_003 + 7


def test_ranks_share_the_global_batch():
    # 2 processes x 4 rows are the 8 rows one process draws, split in rank order, augment draws too.
    whole = draw(50, 8, 3, 7, 4)
    halves = [draw(50, 8, 3, 7, 4, rank=r, world=2) for r in (0, 1)]
    for full, a, b in zip(whole, *halves):
        assert torch.equal(torch.cat([a, b]), full)
    with pytest.raises(ValueError, match="batch_size: the global batch of 6 does not split into 4"):
        BatchSource(np.zeros((5, 8, 8, 3), np.uint8), 6, seed=0, device=CPU, rank=0, world=4)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A demo set whose training images are stored at 12 px and served at 8."""
    out = tmp_path_factory.mktemp("b") / "prepared"
    prepare_dataset(build(DataParams, {"image_size": 8, "train_store_size": 12, "shard_size": 7,
                                       "demo_train_crops": 30, "demo_val_crops": 4}), out, progress=False)
    return load_split(out, "train")


def test_augment_none_serves_the_centre_crop(stored):
    src = BatchSource(stored, 6, seed=1, device=CPU, augment="none")
    idx = src.indices(4)
    want = torch.from_numpy(stored[idx.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(src.batch(4), want)


def test_crops_cover_the_room_and_flips_are_half(stored):
    src = BatchSource(stored, 64, seed=0, device=CPU, augment="crop_flip")
    offsets, flips = [], []
    for step in range(20):
        _, oy, ox, flip = draw(len(stored), 64, 0, step, src.room)
        offsets += oy.tolist() + ox.tolist()
        flips += flip.tolist()
    assert src.room == 4 and set(offsets) == {0, 1, 2, 3, 4}
    assert abs(np.mean(flips) - 0.5) < 0.05
    full = stored.stored()
    _, oy, ox, flip = draw(len(stored), 64, 0, 3, 4)
    idx = src.indices(3).numpy()
    b = src.batch(3)
    for i in range(3):
        window = full[int(idx[i])][oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        window = window[:, ::-1] if flip[i] else window
        got = ((b[i].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert np.array_equal(got, window)


def test_the_loader_path_serves_the_device_paths_batches(stored, augment="crop_flip"):
    device = BatchSource(stored, 8, seed=2, device=CPU, augment=augment)
    loader = BatchSource(stored, 8, seed=2, device=CPU, augment=augment, workers=1, max_device_bytes=0)
    assert isinstance(device.data, torch.Tensor) and not isinstance(loader.data, torch.Tensor)
    try:
        # Consecutive steps, then a jump (a resume restarts the loader there), then going on.
        for step in [0, 1, 2, 9, 10, 3]:
            assert torch.equal(device.batch(step), loader.batch(step)), step
    finally:
        loader.close()
