"""The shared training loop: logging, atomic checkpoints, resume after an interruption."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.autoencoder import VQAutoencoder
from pipeline.pretraining import pretrain_autoencoder
from pipeline.config import PretrainParams
from pipeline.configbase import build
from pipeline.torchio import atomic_save
from pipeline.training.batches import BatchSource
from pipeline.training.loop import Trainer
from pipeline.training.setup import RunOptions


def _images(n=24, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _model():
    torch.manual_seed(0)
    return VQAutoencoder(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=2, code_dim=4)


def _run(tmp_path, stop_after=None, fp="a"):
    pp = build(PretrainParams, {"steps": 12, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 4, "log_every": 3})
    run = RunOptions(tmp_path / "ck.pt", fp, "cpu", progress=False, stop_after=stop_after)
    model = _model()
    return model, pretrain_autoencoder(model, _images(), pp, run)


def test_resume_equals_uninterrupted(tmp_path):
    ref_model, ref = _run(tmp_path / "a")
    assert [h["step"] for h in ref.history] == [3, 6, 9, 12]
    assert not (tmp_path / "a" / "ck.pt").exists()          # a finished run cleans up

    _, part = _run(tmp_path / "b", stop_after=5)
    assert part.steps == 5 and (tmp_path / "b" / "ck.pt").exists()
    model, res = _run(tmp_path / "b")
    assert res.resumed_from == 5
    assert res.history == ref.history
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_from_other_params_is_not_resumed(tmp_path):
    _run(tmp_path, stop_after=5, fp="old")
    _, res = _run(tmp_path, fp="new")
    assert res.resumed_from == 0 and res.steps == 12


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "x.pt"
    atomic_save({"ok": 1}, target)
    with pytest.raises(RuntimeError):
        atomic_save({"bad": Boom()}, target)
    assert torch.load(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_batch_source_is_a_function_of_seed_and_step():
    imgs = _images(50)
    a = BatchSource(imgs, 8, seed=3, device=torch.device("cpu"))
    b = BatchSource(imgs, 8, seed=3, device=torch.device("cpu"))
    assert torch.equal(a.batch(7), b.batch(7))
    assert not torch.equal(a.batch(7), a.batch(8))
    host = BatchSource(imgs, 8, seed=3, device=torch.device("cpu"), max_device_bytes=0)  # memmap path
    assert not isinstance(host.data, torch.Tensor) and torch.equal(host.batch(7), a.batch(7))
    x = a.batch(0)
    assert x.shape == (8, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    rows = np.arange(50 * 6).reshape(50, 6)                   # token sequences: the same draws, long rows
    t = BatchSource(rows, 8, seed=3, device=torch.device("cpu"), images=False)
    assert t.batch(7).dtype == torch.long and torch.equal(t.batch(7), torch.as_tensor(rows)[a.indices(7)])


def test_metrics_accumulate_per_key(tmp_path):
    trainer = Trainer("t", total_steps=4, checkpoint_path=None, log_every=4, device="cpu", progress=False)
    seen = []

    def step_fn(step):
        m = {"a": torch.tensor(float(step))}
        if step % 2:
            m["b"] = torch.tensor(10.0)
        return m

    res = trainer.fit(step_fn, {}, on_log=lambda s, m: seen.append((s, m)))
    assert seen == [(4, {"a": 1.5, "b": 10.0})]
    assert res.final == {"a": 1.5, "b": 10.0}
