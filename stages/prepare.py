"""DVC stage `prepare`: decode, validate and split the images into data/prepared/."""
from __future__ import annotations

from prefect import flow

from pipeline.configbase import to_dict
from pipeline.tracking import stage_run
from stages.common import PREPARED, load_params, main, stage_task


@stage_task
def prepare_images(data_params) -> dict:
    from pipeline.data import prepare_dataset

    return prepare_dataset(data_params, PREPARED)


@flow(name="prepare")
def prepare_flow() -> None:
    p = load_params()
    with stage_run("prepare") as run:
        run.log_params(to_dict(p.data), "data")
        manifest = prepare_images(p.data)
        run.log_metrics({"train_images": manifest["counts"]["train"], "val_images": manifest["counts"]["val"],
                         "unreadable_files": manifest.get("unreadable_count", 0)})
        run.log_artifact(PREPARED / "manifest.json")


if __name__ == "__main__":
    main(prepare_flow)
