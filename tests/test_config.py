"""params.yaml validation: unknown keys, wrong types and out-of-range values name the key."""
from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params
from pipeline.configbase import build, to_dict
from tests.conftest import REPO


def _load(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_repo_params_load_and_round_trip():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert build(Params, copy.deepcopy(to_dict(p))) == p


@pytest.mark.parametrize("mutate, key, value", [
    (lambda r: r["train_vq"].__setitem__("lr", -0.1), "train_vq.lr", "-0.1"),
    (lambda r: r["quantizer"].__setitem__("codebook_size", 1), "quantizer.codebook_size", "1"),
    (lambda r: r["pretrain"].__setitem__("steps", "many"), "pretrain.steps", "'many'"),
    (lambda r: r["pretrain"].__setitem__("stpes", 3), "pretrain.stpes", None),
    (lambda r: r.__setitem__("trian_vq", {}), "trian_vq", None),
    (lambda r: r["quantizer"]["nsvq"].__setitem__("tau0", 0), "quantizer.nsvq.tau0", "0"),
    (lambda r: r["quantizer"]["replacement"].__setitem__("policy", "sometimes"),
     "quantizer.replacement.policy", "'sometimes'"),
    (lambda r: r["quantizer"].__setitem__("method", "magic"), "quantizer.method", "'magic'"),
    (lambda r: r["model"]["ns_vqvae"].__setitem__("downsample", 3), "model.ns_vqvae.downsample", "3"),
    (lambda r: r["data"].__setitem__("image_size", 34), "data.image_size", "34"),
    (lambda r: r["train_vq"].__setitem__("init", "yes"), "train_vq.init", "'yes'"),
    (lambda r: r["evaluate"].__setitem__("batch_size", 2.5), "evaluate.batch_size", "2.5"),
    (lambda r: r["refine_gan"].__setitem__("gan_loss", "wasserstein"), "refine_gan.gan_loss", "'wasserstein'"),
    (lambda r: r["refine_gan"].__setitem__("train", "encoder"), "refine_gan.train", "'encoder'"),
    (lambda r: r["refine_gan"].__setitem__("steps", -1), "refine_gan.steps", "-1"),
    (lambda r: r["refine_gan"].__setitem__("disc_layers", 4), "refine_gan.disc_layers", "4"),
    (lambda r: r["train_prior"].__setitem__("width", 130), "train_prior.width", "130"),
    (lambda r: r["train_prior"].__setitem__("dropout", 1.0), "train_prior.dropout", "1.0"),
    (lambda r: r["train_prior"].__setitem__("num_samples", 1), "train_prior.num_samples", "1"),
    (lambda r: r["train_prior"].__setitem__("top_k", 513), "train_prior.top_k", "513"),
    (lambda r: r["evaluate"].__setitem__("gfid_samples", 1000), "evaluate.gfid_samples", "1000"),
])
def test_bad_values_name_key_and_value(tmp_path, mutate, key, value):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, mutate)
    msg = str(e.value)
    assert key in msg, msg
    assert "params.yaml" in msg
    if value is not None:
        assert value in msg, msg


def test_int_accepted_where_float_expected(tmp_path):
    p = _load(tmp_path, lambda r: r["train_vq"].__setitem__("lr", 1))
    assert p.train_vq.lr == 1.0 and isinstance(p.train_vq.lr, float)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_skipping_the_prior_lifts_the_gfid_sample_check(tmp_path):
    def mutate(r):
        r["train_prior"]["steps"] = 0
        r["evaluate"]["gfid_samples"] = 1000
    p = _load(tmp_path, mutate)
    assert p.train_prior.steps == 0 and p.evaluate.gfid_samples == 1000


def test_params_yaml_lists_every_param():
    """params.yaml is where a user reads the params: every field of the schema is in it (a section
    written ``{}`` stands for its defaults, as the search kernels' do)."""
    import dataclasses
    import typing

    from pipeline.config import Params

    def missing(cls, tree: dict, prefix: str) -> list[str]:
        if tree == {}:
            return []
        out, hints = [], typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in tree:
                out.append(prefix + f.name)
            elif dataclasses.is_dataclass(hints[f.name]):
                out += missing(hints[f.name], tree[f.name] or {}, f"{prefix}{f.name}.")
        return out

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert missing(Params, raw, "") == []
    del raw["train_vq"]["ema_decay"], raw["quantizer"]["nsvq"]["lam"]
    assert missing(Params, raw, "") == ["quantizer.nsvq.lam", "train_vq.ema_decay"]
