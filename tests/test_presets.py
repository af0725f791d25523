"""The papers' presets (presets/*.yaml): each is a complete, valid params set whose every value
carries its source, ``apply`` writes it with the user's data.source, and each runs every stage for
a few steps scaled down (``--tiny``), so a preset never rots."""
from __future__ import annotations

import importlib
import re
import shutil

import pytest
import yaml

from pipeline import presets
from pipeline.config import ConfigError, load_params
from stages.common import SilentRun, stage_param_keys, stage_paths
from tests.conftest import REPO

NAMES = presets.names()
STAGES = ["prepare", "pretrain", "kmeans_init", "train_vq", "refine_gan", "train_prior", "evaluate"]


def test_the_four_papers_settings_are_presets():
    assert NAMES == ["diveq_vqgan_celebahq256", "ns_vq_celebahq256", "ns_vq_imagenet_supp12",
                     "nsvq_imagenet128_k65536"]


@pytest.mark.parametrize("name", NAMES)
def test_a_preset_is_complete_and_every_value_cites_a_source(name):
    text = presets.preset_path(name).read_text()
    raw = yaml.safe_load(text)
    ours = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(ours)                       # every section
    for section, values in raw.items():
        shared = {k for k in ours[section] if k not in {"ns_vqvae", "ns_imagenet", "vqgan"} and
                  not (section == "quantizer" and isinstance(ours[section][k], dict) and k not in ("search", "replacement"))}
        assert shared <= set(values), (section, shared - set(values))
    p = presets.validate({**raw, "data": {**raw["data"], "source": "/data"}}, name)
    assert hasattr(p.model, p.model.arch)
    # every value line is tagged, or continues a tagged comment block
    sources = re.compile(r"\[(NS-VQ S12|NS-VQ ref|NS-VQ|NSVQ|SimVQ|DiVeQ|taming|UNKNOWN|pipeline)\]")
    untagged, block_tagged = [], False
    for line in text.splitlines():
        if re.match(r"^\S.*:\s*(#.*)?$", line):                 # a section header
            block_tagged = bool(sources.search(line))
            continue
        if re.match(r"^\s+#", line) and sources.search(line):      # a comment line over the values below
            block_tagged = True
        elif re.match(r"^\s+[a-z_A-Z0-9]+:", line):
            if sources.search(line):
                block_tagged = True
            elif not block_tagged and "#" not in line:
                untagged.append(line)
    assert not untagged, untagged
    # DVC reads the selected architecture's and method's sections: they must resolve
    for stage in STAGES:
        stage_param_keys(stage, raw)


def test_apply_writes_the_preset_with_the_users_source(tmp_path):
    target = tmp_path / "params.yaml"
    assert presets.main(["apply", "nsvq_imagenet128_k65536", "--source", "/data/ImageNet 2012", "--processes", "4",
                         "--params", str(target)]) == 0
    p = load_params(target)
    assert p.data.source == "/data/ImageNet 2012" and p.distributed.processes == 4
    assert p.quantizer.codebook_size == 65536 and p.model.arch == "vqgan"
    assert "[SimVQ]" in target.read_text()                    # the comments come along


def test_apply_without_a_source_or_with_an_unknown_name_writes_nothing(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    assert presets.main(["apply", "ns_vq_celebahq256", "--params", str(target)]) == 2
    assert presets.main(["apply", "vqgan_9000", "--source", "/d", "--params", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--source is required" in err and "unknown preset 'vqgan_9000'" in err
    assert not target.exists()
    with pytest.raises(ConfigError):
        presets.preset_path("nope")


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_runs_a_few_steps_of_the_scaled_down_preset(tmp_path, monkeypatch, name):
    presets.apply(name, tmp_path / "params.yaml", tiny_run=True)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    p = load_params(tmp_path / "params.yaml")
    full = presets.validate({**presets.raw(name), "data": {"source": "/data"}}, name)
    assert (p.model.arch, p.quantizer.method, p.train_vq.rec_loss, p.train_vq.adversarial, p.train_vq.ema_decay > 0) == (
        full.model.arch, full.quantizer.method, full.train_vq.rec_loss, full.train_vq.adversarial,
        full.train_vq.ema_decay > 0)
    paths = stage_paths()
    results = {s: importlib.import_module(f"stages.{s}").work(p, paths, SilentRun()) for s in STAGES}
    assert results["train_vq"].summary["steps"] == p.train_vq.track_steps + p.train_vq.freeze_steps
    metrics = results["evaluate"].summary
    assert metrics["rfid"] == metrics["rfid"] and 0 < metrics["train_codebook_usage"] <= 1   # a number, not NaN
