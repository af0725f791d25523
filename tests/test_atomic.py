"""Atomic outputs: complete or absent, never half-written."""
from __future__ import annotations

import os

import pytest

from pipeline.atomic import atomic_dir, atomic_path


def test_atomic_dir_replaces_a_folder_and_keeps_it_on_error(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]       # no temp folders left
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]


def test_atomic_path_gives_normal_permissions_and_cleans_up(tmp_path):
    target = tmp_path / "f.json"
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~mask
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            raise ValueError("boom")
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_save_writes_the_same_bytes_for_the_same_object(tmp_path):
    """A model file's bytes depend on its content only (DVC hashes them: a rerun that writes the
    same weights must not make the stages downstream stale)."""
    import torch

    from pipeline.torchio import atomic_save

    obj = {"codes": torch.arange(12.0).reshape(3, 4), "inertia": 1.5}
    first, second = tmp_path / "a.pt", tmp_path / "sub" / "b.pt"
    atomic_save(obj, first)
    atomic_save(obj, second)
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.load(first)["codes"], obj["codes"])
