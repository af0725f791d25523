"""The image convention: uint8 NHWC <-> float NCHW in [-1, 1]."""
from __future__ import annotations

import torch

from pipeline.images import images_to_input, output_to_images


def test_round_trip_is_exact():
    images = torch.randint(0, 256, (3, 5, 4, 3), dtype=torch.uint8)
    x = images_to_input(images)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 5, 4)
    assert x.min() >= -1 and x.max() <= 1
    assert x[0, :, 1, 2].tolist() == (images[0, 1, 2].float() / 127.5 - 1).tolist()
    assert torch.equal(output_to_images(x), images)


def test_output_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.004, 1.0, 7.0]).view(1, 3, 1, 2)
    out = output_to_images(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 2, 3)
    assert out.permute(0, 3, 1, 2).reshape(-1).tolist() == [0, 0, 128, 128, 255, 255]
