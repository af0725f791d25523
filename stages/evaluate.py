"""DVC stage `evaluate`: validation metrics of the tokenizer and generation metrics of the
prior into the metrics file, and the report's figures."""
from __future__ import annotations

from pipeline import distributed
from pipeline.evaluation.report import run_evaluate
from stages.common import StageResult, require, run_stage, write_atomic, write_json

TRAINING_STAGES = ("pretrain", "train_vq", "refine_gan", "train_prior")


def work(p, paths, run) -> StageResult:
    out = run_evaluate(p, paths.prepared, require(paths.tokenizer, "refine_gan"),
                       require(paths.samples / "samples.npy", "train_prior"),
                       require(paths.train_prior_report, "train_prior"),
                       {s: getattr(paths, f"{s}_curve") for s in TRAINING_STAGES})
    if not distributed.is_main():
        return None
    write_json(paths.metrics, out.metrics)
    figures = {paths.reconstructions: out.reconstructions_png, paths.usage_plot: out.usage_png,
               paths.usage_csv: out.usage_csv, paths.samples_plot: out.samples_png,
               paths.loss_curves: out.loss_curves_png}
    for path, data in figures.items():
        write_atomic(path, data)
    return StageResult(out.metrics, artifacts=[paths.metrics, paths.reconstructions, paths.usage_plot,
                                               paths.loss_curves, paths.samples_plot])


if __name__ == "__main__":
    # The parent run gets the headline metrics and every param, for side-by-side comparison.
    run_stage("evaluate", work, headline=True, ranks=True)
