"""DVC stage `prepare`: decode, validate and split the images into the prepared data folder."""
from __future__ import annotations

from pipeline.data import prepare_dataset
from stages.common import StageResult, run_stage


def work(p, paths, run) -> StageResult:
    manifest = prepare_dataset(p.data, paths.prepared)
    return StageResult({"train_images": manifest["counts"]["train"], "val_images": manifest["counts"]["val"],
                        "unreadable_files": manifest.get("unreadable_count", 0), "classes": len(manifest["classes"]),
                        "shards": sum(len(v) for v in manifest["shards"].values())},
                       artifacts=[paths.prepared / "manifest.json"])


if __name__ == "__main__":
    run_stage("prepare", work)
