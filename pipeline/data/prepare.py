"""``prepare_dataset``: the demo photographs or a user folder, decoded in parallel worker
processes and streamed into fixed-size uint8 shards (shards.py), so memory stays flat in the
dataset's size.

The output folder holds ``<split>-NNNNN.npy`` shards, for folder sources ``<split>-files.tsv``
(each row's file and class), and ``manifest.json`` (the source, the params, counts, the
layout and classes, every shard's count and sha256, and the files found, ignored and
unreadable with reasons). Validation images are stored at ``image_size`` (short side resized,
centre crop); training images at ``train_store_size`` (the same, larger), so training can take
random crops.

The output is a pure function of the params (``data.workers`` and ``data.augment`` aside)
and the source files: the same inputs give byte-identical files, whatever the number of
workers (results are consumed in file order). The shards are built in ``.<out>.partial``
beside the output and the folder is moved into place at the end; an interrupted run (killed
at any point) leaves that folder with the shards it completed, and a rerun with the same plan
keeps those whose sha256 still verifies and decodes only the rest. Bad input (an error naming
the folder or param) removes it: nothing half-written is left.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path, replace_dir
from ..digest import file_sha256, remember_verified, stamp_file
from ..errors import warn
from ..progress import Progress
from .decode_pool import DecodePool, decoded_in_process
from .demo import SPLITS, demo_images, demo_info
from .errors import DataError
from .folders import FolderPlan, plan_folder, source_fingerprint
from .shards import ShardWriter, rows_name, write_rows

if TYPE_CHECKING:
    from ..config import DataParams

# Bumped when the layout of the output changes: a partial folder of another format is not resumed.
FORMAT = 2
# Params that change how the prepared set is read, not what it holds: not part of the output.
LOADING_KEYS = ("workers", "augment")
# Unreadable files listed individually on stderr; the manifest always lists all of them.
_MAX_WARNING_LINES = 20


def output_params(params: DataParams) -> dict:
    """The data params the prepared set is a function of."""
    return {k: v for k, v in dataclasses.asdict(params).items() if k not in LOADING_KEYS}


def worker_count(workers: int) -> int:
    """``data.workers`` as a process count (decode workers, loader workers); 0: the cores this
    process may run on, shared among the training processes of this machine when torchrun started
    several (it sets LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return workers or max(1, len(os.sched_getaffinity(0)) // local)


def stored_sizes(params: DataParams) -> dict[str, int]:
    return {"train": params.train_store_size or params.image_size, "val": params.image_size}


def _warn_unreadable(root: str, unreadable: list[dict[str, str]]) -> None:
    lines = [f"skipped {len(unreadable)} unreadable image file(s) in {root!r}:"]
    lines += [f"  {u['path']}: {u['reason']}" for u in unreadable[:_MAX_WARNING_LINES]]
    if len(unreadable) > _MAX_WARNING_LINES:
        lines.append(f"  ... and {len(unreadable) - _MAX_WARNING_LINES} more (see manifest.json)")
    warn("\n".join(lines))


class _Progress:
    """The resumable state in ``partial/progress.json``: per split, the shards completed (each
    with its sha256, the plan position after its last image and the unreadable files it
    passed), and whether the split is complete."""

    def __init__(self, partial: Path, plan_id: str):
        self.path, self.plan_id = partial / "progress.json", plan_id
        self.splits: dict[str, dict] = {s: {"shards": [], "complete": False} for s in SPLITS}

    @classmethod
    def resume(cls, partial: Path, plan_id: str) -> _Progress:
        """What a previous run of the same plan left that still verifies; the rest is removed."""
        state = cls(partial, plan_id)
        try:
            saved = json.loads(state.path.read_text())
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict) or saved.get("plan") != plan_id:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            return state
        keep = {"progress.json"}
        for split in SPLITS:
            entry = saved["splits"][split]
            for shard in entry["shards"]:
                path = partial / shard["file"]
                if not path.is_file() or file_sha256(path) != shard["sha256"]:
                    entry["complete"] = False
                    break
                state.splits[split]["shards"].append(shard)
                keep.add(shard["file"])
            state.splits[split]["complete"] = entry["complete"]
        for path in partial.iterdir():
            if path.name not in keep:
                path.unlink()
        return state

    def done(self, split: str) -> int:
        shards = self.splits[split]["shards"]
        return shards[-1]["end"] if shards else 0

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(json.dumps({"plan": self.plan_id, "splits": self.splits}, indent=1))


def _plan(params: DataParams) -> tuple[FolderPlan | None, dict[str, int], str]:
    """The folder plan (None for the demo), the images per split, and the plan's id."""
    if params.source == "demo":
        plan, counts = None, {"train": params.demo_train_crops, "val": params.demo_val_crops}
        listing = source_fingerprint("demo")["listing_sha256"]
    else:
        plan = plan_folder(params.source, params.layout, params.val_fraction)
        counts = {split: len(plan.items[split]) for split in SPLITS}
        listing = plan.listing_sha256
    plan_id = hashlib.sha256(json.dumps({"format": FORMAT, "params": output_params(params), "listing": listing},
                                        sort_keys=True).encode()).hexdigest()
    return plan, counts, plan_id


def _write_split(split: str, params: DataParams, plan: FolderPlan | None, count: int, side: int, state: _Progress,
                 pool: DecodePool | None, unreadable: list[dict[str, str]], bar: Progress) -> None:
    """Decode what is left of ``split`` into shards, recording each completed one in ``state``
    (with the plan position after it and the unreadable files it passed)."""
    entry = state.splits[split]
    start = state.done(split)
    writer = ShardWriter(state.path.parent, split, side, params.shard_size, len(entry["shards"]))
    if plan is None:
        images = itertools.islice(demo_images(params, split, side), start, None)
    else:
        rels = [rel for rel, _ in plan.items[split]][start:]
        images = (pool.decoded if pool is not None else decoded_in_process)(params.source, rels, side)
    since: list[dict[str, str]] = []          # unreadable files since the last shard
    try:
        for position, image in enumerate(images, start + 1):
            if isinstance(image, str):
                since.append({"path": plan.items[split][position - 1][0], "reason": image})
                unreadable.append(since[-1])
            else:
                writer.add(image)
            if writer.full:
                entry["shards"].append({**writer.flush(), "end": position, "unreadable": since})
                since = []
                state.save()
            if position % 64 == 0:
                bar.update(sum(state.done(s) for s in SPLITS) + writer.filled + len(since),
                           {"unreadable": len(unreadable)})
        if writer.filled:
            entry["shards"].append({**writer.flush(), "end": count, "unreadable": since})
        elif since and entry["shards"]:   # unreadable files after the last full shard
            entry["shards"][-1].update(end=count, unreadable=entry["shards"][-1]["unreadable"] + since)
    except BaseException:
        writer.abandon()
        raise
    entry["complete"] = True
    state.save()
    bar.update(sum(state.done(s) for s in SPLITS), {"unreadable": len(unreadable)})


def prepare_dataset(params: DataParams, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Build ``out_dir`` (see the module docstring); return the manifest."""
    out_dir = Path(out_dir)
    plan, counts, plan_id = _plan(params)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    state = _Progress.resume(partial, plan_id)
    sides = stored_sizes(params)
    workers = worker_count(params.workers) if plan is not None else 1
    bar = Progress("prepare", sum(counts.values()), sum(state.done(s) for s in SPLITS), progress, unit="file")
    unreadable: list[dict[str, str]] = [u for s in SPLITS for sh in state.splits[s]["shards"] for u in sh["unreadable"]]
    pool = DecodePool(workers, max(sides.values())) if workers > 1 else None
    try:
        for split in SPLITS:
            if not state.splits[split]["complete"]:
                _write_split(split, params, plan, counts[split], sides[split], state, pool, unreadable, bar)
        bar.close()
        if unreadable:
            _warn_unreadable(params.source, unreadable)
        empty = [s for s in SPLITS if not state.splits[s]["shards"]]
        if empty:
            raise DataError(f"data.source: {params.source!r} has no readable image for the {' and '.join(empty)} "
                            f"split ({', '.join(f'{counts[s]} image file(s)' for s in empty)}, all unreadable)")
        manifest = _finish(params, plan, state, partial, sides, unreadable)
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    replace_dir(partial, out_dir)
    # Just hashed: the stages that read these files need not hash them again.
    for name, digest in manifest["sha256"].items():
        remember_verified(out_dir / name, digest, stamp_file(out_dir))
    return manifest


def _finish(params: DataParams, plan: FolderPlan | None, state: _Progress, partial: Path,
            sides: dict[str, int], unreadable: list[dict[str, str]]) -> dict:
    """Write the rows files and the manifest into ``partial``; return the manifest."""
    shards = {s: [{"file": sh["file"], "count": sh["count"]} for sh in state.splits[s]["shards"]] for s in SPLITS}
    sha256 = {sh["file"]: sh["sha256"] for s in SPLITS for sh in state.splits[s]["shards"]}
    manifest = {
        "format": FORMAT,
        "source": params.source,
        "image_size": params.image_size,
        "stored_size": sides,
        "params": output_params(params),
        "counts": {s: sum(sh["count"] for sh in shards[s]) for s in SPLITS},
        "shards": shards,
    }
    if plan is None:
        manifest.update(demo_info(params), classes=[])
    else:
        bad = {u["path"] for u in unreadable}
        for split in SPLITS:
            rows = [(rel, label) for rel, label in plan.items[split] if rel not in bad]
            sha256[rows_name(split)] = write_rows(partial / rows_name(split), rows)
        manifest.update({
            "layout": plan.layout,
            "classes": plan.classes,
            "files_found": plan.files_found,
            "image_files": plan.image_files,
            "ignored_files": len(plan.ignored),
            "ignored": plan.ignored,          # not an image extension (IMAGE_EXTENSIONS), or outside train/ val/
            "used_files": sum(manifest["counts"].values()),
            "unreadable": unreadable,
            "unreadable_count": len(unreadable),
            "files": {s: rows_name(s) for s in SPLITS},
        })
    manifest["sha256"] = sha256
    (partial / "progress.json").unlink()
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
