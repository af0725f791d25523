"""Files the project wrote are loaded without running code and checked before use: a crafted
pickle is refused by every loader with an error naming the file, a truncated model file is an
error naming it, a checkpoint corrupted in place is not resumed, a corrupted shard is an error."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.config import DataParams, ModelParams, QuantizerParams
from pipeline.configbase import build
from pipeline.data import DataError, load_split, prepare_dataset
from pipeline.digest import stamp_file
from pipeline.errors import UnreadableFileError
from pipeline.kmeans import load_codebook_init
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.io import load_autoencoder, save_autoencoder
from pipeline.prior.model import load_prior
from pipeline.quantizers import build_quantizer
from pipeline.torchio import safe_load
from pipeline.training.checkpoint import digest_path, load_checkpoint
from tests.test_training import _run


class _RunsACommand:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_file(tmp_path, name):
    marker = tmp_path / f"{name}.pwned"
    path = tmp_path / name
    torch.save({"model": {}, "state_dict": _RunsACommand(marker), "config": None, "codes": None}, path)
    return path, marker


LOADERS = {
    "safe_load": lambda p: safe_load(p, "model file"),
    "load_autoencoder": load_autoencoder,
    "load_prior": load_prior,
    "load_codebook_init": lambda p: load_codebook_init(p, 8, 4),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_malicious_pickle_naming_the_file(tmp_path, loader):
    path, marker = _malicious_file(tmp_path, "vq.pt")
    with pytest.raises(UnreadableFileError, match=rf"{path}: refused to load .*could run code"):
        LOADERS[loader](path)
    assert not marker.exists(), "the pickle's command ran"


def test_a_malicious_checkpoint_is_not_resumed_and_runs_nothing(tmp_path, capsys):
    path, marker = _malicious_file(tmp_path, "ck.pt")
    from pipeline.digest import file_sha256

    digest_path(path).write_text(file_sha256(path) + "\n")      # even with a matching digest
    step, history, pending = load_checkpoint(path, "fp", {}, torch.device("cpu"), "train_vq")
    assert (step, history, pending) == (0, [], {})
    assert f"{path}: refused to load" in capsys.readouterr().err
    assert not marker.exists()


def _tiny_model_file(path):
    mp = build(ModelParams, {"code_dim": 4, "ns_vqvae": {"hidden_channels": 8, "res_channels": 4,
                                                         "num_res_blocks": 1, "downsample": 2}}, "model")
    qp = build(QuantizerParams, {"method": "vq", "codebook_size": 8}, "quantizer")
    save_autoencoder(path, VQAutoencoder.from_params(mp, build_quantizer(qp, 4)), qp)


def test_a_truncated_or_missing_model_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "vq.pt"
    _tiny_model_file(path)
    load_autoencoder(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableFileError, match=rf"{path}: unreadable model file"):
        load_autoencoder(path)
    with pytest.raises(UnreadableFileError, match=rf"{tmp_path / 'none.pt'}: model file not found"):
        load_autoencoder(tmp_path / "none.pt")


def test_a_model_file_with_foreign_weights_is_an_error_naming_it(tmp_path):
    path = tmp_path / "vq.pt"
    _tiny_model_file(path)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = {"nope": torch.zeros(1)}
    torch.save(blob, path)
    with pytest.raises(UnreadableFileError, match=rf"{path}: its weights do not fit"):
        load_autoencoder(path)


def _flip_bytes_in_place(path, at=0.6):
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
    mtime = path.stat().st_mtime_ns
    path.write_bytes(bytes(data))
    return mtime


def test_a_checkpoint_corrupted_in_place_is_reported_and_the_run_starts_over(tmp_path, capsys):
    _, ref = _run(tmp_path / "ref")
    _run(tmp_path / "b", stop_after=5)
    ck = tmp_path / "b" / "ck.pt"
    size = ck.stat().st_size
    _flip_bytes_in_place(ck)
    assert ck.stat().st_size == size
    capsys.readouterr()
    _, res = _run(tmp_path / "b")
    assert f"checkpoint {ck} is corrupt" in capsys.readouterr().err
    assert res.resumed_from == 0 and res.history == ref.history


def test_a_corrupted_shard_is_an_error_naming_it(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(build(DataParams, {"demo_train_crops": 22, "demo_val_crops": 11, "image_size": 8}), out)
    assert load_split(out, "train").shape == (22, 8, 8, 3)       # verified from the stamp prepare wrote
    _flip_bytes_in_place(out / "train-00000.npy", at=0.9)
    with pytest.raises(DataError, match=rf"{out / 'train-00000.npy'}: corrupted"):
        load_split(out, "train")
    # Without the stamps (a fresh checkout) the shard is hashed and still refused.
    stamp_file(out).unlink()
    with pytest.raises(DataError, match="corrupted"):
        load_split(out, "train")
    assert np.asarray(load_split(out, "val")).shape == (11, 8, 8, 3)
