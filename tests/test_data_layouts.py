"""pipeline/data: folder layouts and classes, shards across files, parallel decode, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataParams
from pipeline.configbase import build
from pipeline.data import (DataError, ShardedImages, decode_pool, load_manifest, load_rows, load_split, prepare,
                           prepare_dataset)

S = 8
REPO = Path(__file__).parents[1]


def params(source, **overrides) -> DataParams:
    return build(DataParams, {"source": str(source), "image_size": S, "workers": 1, **overrides})


def photo(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


def all_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def imagenet_like(tmp_path) -> Path:
    """train/<class>/ folders, a flat val/ folder with one class folder, and stray files."""
    root = tmp_path / "inet"
    for c, name in enumerate(["n02", "n01", "n03"]):
        for i in range(4):
            photo(root / "train" / name / f"{i}.JPEG", 10 * c + i)
    photo(root / "val" / "v0.png", 1)
    photo(root / "val" / "v1.png", 2)
    photo(root / "val" / "n03" / "v2.png", 3)
    (root / "val" / "broken.png").write_bytes(b"not a png")
    photo(root / "extra" / "x.png", 4)                 # outside train/ and val/: not used
    (root / "LICENSE").write_text("terms")
    return root


def test_train_val_folders_are_the_splits_and_classes_are_kept(imagenet_like, tmp_path, capsys):
    manifest = prepare_dataset(params(imagenet_like), tmp_path / "out")
    assert manifest["layout"] == "train_val"
    assert manifest["classes"] == ["n01", "n02", "n03"]
    assert manifest["counts"] == {"train": 12, "val": 3}
    assert manifest["ignored"] == ["LICENSE", "extra/x.png"]
    assert [u["path"] for u in manifest["unreadable"]] == ["val/broken.png"]
    assert "val/broken.png" in capsys.readouterr().err
    train = load_rows(tmp_path / "out", "train")
    assert train[0] == ("train/n01/0.JPEG", 0) and train[-1] == ("train/n03/3.JPEG", 2)
    assert load_rows(tmp_path / "out", "val") == [("val/n03/v2.png", 2), ("val/v0.png", -1), ("val/v1.png", -1)]
    # Row i of a split is the file its rows file names.
    first = np.asarray(load_split(tmp_path / "out", "train")[0])
    assert tuple(first[4, 4]) == (10, 245, 5)          # n01 is class folder index 1 on disk: value 10 * 1 + 0


def test_flat_layout_of_class_folders_hashes_the_split(imagenet_like, tmp_path):
    manifest = prepare_dataset(params(imagenet_like / "train", val_fraction=0.3), tmp_path / "out")
    assert manifest["layout"] == "flat" and manifest["classes"] == ["n01", "n02", "n03"]
    rows = load_rows(tmp_path / "out", "train") + load_rows(tmp_path / "out", "val")
    assert sorted(rows) == sorted((f"{n}/{i}.JPEG", c) for c, n in enumerate(["n01", "n02", "n03"]) for i in range(4))


def test_layout_param_is_checked(imagenet_like, tmp_path):
    with pytest.raises(DataError, match=r"data\.layout: 'train_val' needs"):
        prepare_dataset(params(imagenet_like / "train", layout="train_val"), tmp_path / "out")
    forced = prepare_dataset(params(imagenet_like, layout="flat"), tmp_path / "flat")
    # Every image sits in a first-level folder, so those folders are the classes.
    assert forced["layout"] == "flat" and forced["classes"] == ["extra", "train", "val"]
    (imagenet_like / "val" / "v0.png").unlink()
    (imagenet_like / "val" / "v1.png").unlink()
    (imagenet_like / "val" / "n03" / "v2.png").unlink()
    with pytest.raises(DataError, match=r"no readable image for the val split"):
        prepare_dataset(params(imagenet_like), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many") / "src"
    for i in range(60):
        photo(root / f"c{i % 3}" / f"{i:03d}.png", i * 4, size=(10 + i % 7, 9 + i % 5))
    (root / "c0" / "bad.png").write_bytes(b"\x89PNG broken")
    return root


def test_shards_are_fixed_size_and_read_as_one_array(many, tmp_path):
    manifest = prepare_dataset(params(many, shard_size=8, train_store_size=12), tmp_path / "out")
    assert [s["count"] for s in manifest["shards"]["train"]][:-1] == [8] * (len(manifest["shards"]["train"]) - 1)
    train = load_split(tmp_path / "out", "train")
    assert isinstance(train, ShardedImages) and train.shape == (manifest["counts"]["train"], S, S, 3)
    full = np.concatenate([np.load(tmp_path / "out" / s["file"]) for s in manifest["shards"]["train"]])
    assert full.shape[1:] == (12, 12, 3) and np.array_equal(np.asarray(train.stored()), full)
    centre = full[:, 2:10, 2:10]
    assert np.array_equal(np.asarray(train), centre)
    idx = np.array([len(full) - 1, 0, 9, 8, 7, 9, -1])
    assert np.array_equal(train[idx], centre[idx])
    assert np.array_equal(train[5:21], centre[5:21]) and np.array_equal(train[3], centre[3])
    assert np.array_equal(train[::5], centre[::5])
    assert load_split(tmp_path / "out", "val").stored_side == S               # validation is never stored larger


def test_output_does_not_depend_on_the_number_of_workers(many, tmp_path):
    one = prepare_dataset(params(many, shard_size=8, workers=1), tmp_path / "one")
    two = prepare_dataset(params(many, shard_size=8, workers=2), tmp_path / "two")
    assert one == two and all_bytes(tmp_path / "one") == all_bytes(tmp_path / "two")
    assert one["unreadable_count"] == 1


def test_an_interrupted_prepare_resumes_from_its_complete_shards(many, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    prepare_dataset(params(many, shard_size=8), clean)
    out = tmp_path / "out"
    real_save, saved = prepare.ShardWriter.flush, []

    def flush_then_die(self):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(real_save(self))
        return saved[-1]

    monkeypatch.setattr(prepare.ShardWriter, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(params(many, shard_size=8), out)
    monkeypatch.undo()
    partial = tmp_path / ".out.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["progress.json", "train-00000.npy", "train-00001.npy",
                                                          "train-00002.npy"]
    # A completed shard that no longer verifies is redone, with everything after it.
    (partial / "train-00002.npy").write_bytes(b"garbage")
    decoded = []
    real_decode = decode_pool.decode_files
    monkeypatch.setattr(decode_pool, "decode_files", lambda root, rels, side: decoded.extend(rels) or
                        real_decode(root, rels, side))
    prepare_dataset(params(many, shard_size=8), out)
    assert all_bytes(out) == all_bytes(clean) and not partial.exists()
    train_rows = json.loads((clean / "manifest.json").read_text())["shards"]["train"]
    assert len(decoded) == 61 - 16 and sum(s["count"] for s in train_rows[:2]) == 16   # 2 shards kept


def test_a_killed_prepare_resumes_byte_identical(many, tmp_path):
    clean = tmp_path / "clean"
    prepare_dataset(params(many, shard_size=4), clean)
    code = ("import sys, time; from pipeline.data import decode_pool, prepare; from pipeline.config import DataParams; "
            "from pipeline.configbase import build; real = decode_pool.decode_files; "
            "decode_pool.decode_files = lambda *a: (time.sleep(0.05), real(*a))[1]; "
            f"prepare.prepare_dataset(build(DataParams, {{'source': {str(many)!r}, 'image_size': {S}, "
            f"'workers': 1, 'shard_size': 4}}), {str(tmp_path / 'out')!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    progress = tmp_path / ".out.partial" / "progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (progress.exists() and "train-00002" in progress.read_text()):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progress.exists() and not (tmp_path / "out").exists()
    prepare_dataset(params(many, shard_size=4), tmp_path / "out")
    assert all_bytes(tmp_path / "out") == all_bytes(clean)


def test_prepared_manifest_has_no_loading_params(many, tmp_path):
    a = prepare_dataset(params(many, augment="crop_flip", workers=1), tmp_path / "a")
    assert "augment" not in a["params"] and "workers" not in a["params"]
    assert load_manifest(tmp_path / "a")["stored_size"] == {"train": S, "val": S}


def test_prepare_reruns_on_exactly_the_params_its_output_depends_on():
    import dataclasses

    import yaml

    from pipeline.data import LOADING_KEYS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    fields = {f.name for f in dataclasses.fields(DataParams)}
    assert set(stages["prepare"]["params"]) == {f"data.{k}" for k in fields - set(LOADING_KEYS)}
    for stage in ("pretrain", "train_vq", "refine_gan"):         # the stages that draw training batches
        assert "data.augment" in stages[stage]["params"], stage
