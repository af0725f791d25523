"""DVC stage `pretrain`: the encoder + decoder as a continuous autoencoder."""
from __future__ import annotations

from pipeline import distributed
from pipeline.models.io import save_autoencoder
from pipeline.pretraining import pretrain
from stages.common import StageResult, require, run_stage, write_history_csv


def work(p, paths, run) -> StageResult:
    require(paths.prepared / "manifest.json", "prepare")
    model, result = pretrain(p, paths.prepared, paths.checkpoint("pretrain"), on_log=lambda s, m: run.log_metrics(m, s))
    if not distributed.is_main():
        return None
    save_autoencoder(paths.pretrain_model, model, meta={"steps": result.steps, "final": result.final})
    write_history_csv(paths.pretrain_curve, result.history)
    return StageResult({"final_loss": result.final.get("loss"), "train_seconds": result.seconds,
                        "resumed_from_step": result.resumed_from},
                       artifacts=[paths.pretrain_curve])


if __name__ == "__main__":
    run_stage("pretrain", work, ranks=True)
