"""The papers' settings as params files (``presets/<name>.yaml``), and the one command that applies one.

    python -m pipeline.presets list
    python -m pipeline.presets apply <name> --source /path/to/dataset [--processes N] [--params params.yaml]
    python -m pipeline.presets apply <name> --tiny          # a scaled-down rehearsal on the demo images

``apply`` writes the preset, comments and all, over params.yaml with ``data.source`` (and
``distributed.processes``) set, after validating the result; then ``dvc repro`` runs it. ``--tiny``
writes the preset scaled down (:func:`tiny`: 32 px, narrow widths, a handful of demo images and
steps) with every choice that makes it the paper's setting kept: architecture, method, losses,
schedules' kinds. The tests run every preset that way, so a preset never rots.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .config import ConfigError, Params
from .configbase import build

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
SOURCE_PLACEHOLDER = "REPLACE_WITH_YOUR_COPY"

#: what --tiny scales every preset to (the side of the images and of every width)
TINY_SIZE = 32


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(names())} ({PRESETS_DIR})")
    return path


def title(name: str) -> str:
    """The first sentence of the preset's header comment (after ``# Preset:``)."""
    lines = []
    for line in preset_path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").split("Apply with")[0])
        if "Apply with" in line:
            break
    text = " ".join(lines).removeprefix("Preset:").strip()
    return re.split(r"\.(?:\s|$)", text, maxsplit=1)[0]


def applied_text(name: str, source: str, processes: int | None = None) -> str:
    """The preset's text with ``data.source`` (and ``distributed.processes``) filled in."""
    text = preset_path(name).read_text()
    if SOURCE_PLACEHOLDER not in text:
        raise ConfigError(f"{preset_path(name)}: has no data.source placeholder {SOURCE_PLACEHOLDER}")
    text = text.replace(SOURCE_PLACEHOLDER, _yaml_string(source), 1)
    if processes is not None:
        text, n = re.subn(r"(?m)^(  processes: )\d+", rf"\g<1>{processes}", text, count=1)
        if n != 1:
            raise ConfigError(f"{preset_path(name)}: no distributed.processes line to set")
    return text


def _yaml_string(s: str) -> str:
    import json

    return json.dumps(s)      # a JSON string is a YAML scalar, quoted and escaped


def raw(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(preset_path(name).read_text())


def tiny(preset: dict[str, Any]) -> dict[str, Any]:
    """A scaled-down copy of a preset's params (a dict as read from its file): TINY_SIZE px demo
    crops, every width and codebook small, a few steps per stage, no compile; everything that
    makes the setting what it is (architecture, its levels and attention, method, losses and
    their switches, EMA, phases, precision) kept."""
    p = copy.deepcopy(preset)
    size = p["data"]["image_size"]
    p["data"].update(source="demo", image_size=TINY_SIZE, demo_train_crops=24, demo_val_crops=8, workers=1,
                     train_store_size=TINY_SIZE + 4 if p["data"].get("train_store_size") else 0)
    m = p["model"]
    m["code_dim"] = min(m["code_dim"], 8)
    arch = m["arch"]
    o = m[arch]
    if arch == "ns_vqvae":
        o.update(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=min(o["downsample"], 4))
    elif arch == "ns_imagenet":
        o.update(channels=[8 << i for i in range(len(o["channels"]))], num_res_blocks=1, norm_groups=4)
    elif arch == "vqgan":
        # attention stays at the same level: side r of a `size` image is side r * 32 / size here
        o.update(ch=8, num_res_blocks=1, norm_groups=4, z_channels=0,
                 attn_resolutions=[r * TINY_SIZE // size for r in o.get("attn_resolutions", [])])
    else:
        raise ValueError(f"tiny(): no scaled-down widths for model.arch {arch!r}")
    q = p["quantizer"]
    q["codebook_size"] = min(q["codebook_size"], 16)
    q["replacement"].update(period=2, dense_until=0)
    if "transvq" in q:
        q["transvq"]["model_dim"] = 16
    for sf in ("sf_diveq", "sf_diveq_detach"):
        if sf in q:
            q[sf].update(skip_steps=2, avg_steps=1)
    loop = dict(batch_size=4, checkpoint_every=1000, log_every=1, compile=False)
    p["pretrain"].update(loop, steps=2)
    p["kmeans_init"].update(iters=2)
    tv = p["train_vq"]
    tv.update(loop, track_steps=3 if tv["track_steps"] else 0, freeze_steps=2 if tv["freeze_steps"] else 0,
              steps_per_epoch=2, disc_start=min(tv["disc_start"], 1), disc_channels=8)
    if tv["track_steps"] + tv["freeze_steps"] == 0:
        tv["track_steps"] = 3
    rg = p["refine_gan"]
    rg.update(loop, steps=min(rg["steps"], 2), disc_start=min(rg["disc_start"], 1), disc_channels=8, grid_images=4)
    tp = p["train_prior"]
    tp.update(loop, steps=min(tp["steps"], 2), layers=1, heads=1, width=16, warmup_steps=1, num_samples=2)
    p["evaluate"].update(batch_size=8, max_images=8, grid_images=4, gfid_samples=0)
    p["distributed"]["processes"] = 1
    return p


def validate(params: dict[str, Any], where: str) -> Params:
    try:
        return build(Params, params)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def apply(name: str, params_path: Path, source: str | None = None, processes: int | None = None,
          tiny_run: bool = False) -> Params:
    """Write preset ``name`` to ``params_path`` (validated first: nothing is written on an error)."""
    import yaml

    if tiny_run:
        scaled = tiny(raw(name))
        text = (f"# The preset {name}, scaled down by `python -m pipeline.presets apply {name} --tiny`: a rehearsal\n"
                f"# on the demo images, not the paper's setting (presets/{name}.yaml is).\n"
                + yaml.safe_dump(scaled, sort_keys=False))
    else:
        if not source:
            raise ConfigError("apply: --source is required (the folder with your copy of the dataset), "
                              "or --tiny for a rehearsal on the demo images")
        text = applied_text(name, source, processes)
    parsed = validate(yaml.safe_load(text), f"preset {name}")
    write(params_path, text)
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.presets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets and what each reproduces")
    ap = sub.add_parser("apply", help="write a preset over params.yaml")
    ap.add_argument("name")
    ap.add_argument("--source", help="your copy of the dataset (a folder); sets data.source")
    ap.add_argument("--processes", type=int, help="GPUs (processes) per machine; sets distributed.processes")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the file to write (default params.yaml)")
    ap.add_argument("--tiny", action="store_true", help="the preset scaled down to a rehearsal on the demo images")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for n in names():
                print(f"{n:28s} {title(n)}")
            return 0
        p = apply(args.name, args.params, args.source, args.processes, args.tiny)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.params}: preset {args.name} ({p.model.arch}, {p.quantizer.method}, K = {p.quantizer.codebook_size}, "
          f"{p.data.image_size} px, data.source {p.data.source}); run it with dvc repro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
