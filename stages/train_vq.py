"""DVC stage `train_vq`: drift-aware VQ training (track, then encoder frozen)."""
from __future__ import annotations

from pipeline import distributed
from pipeline.config import method_params
from pipeline.models.io import save_autoencoder
from pipeline.vq_training import run_train_vq
from stages.common import StageResult, require, run_stage, write_history_csv, write_report


def work(p, paths, run) -> StageResult:
    init = require(paths.codebook_init, "kmeans_init") if p.train_vq.init == "kmeans" else None
    trained = run_train_vq(p, paths.prepared, require(paths.pretrain_model, "pretrain"), init,
                           paths.checkpoint("train_vq"), on_log=lambda s, m: run.log_metrics(m, s))
    if not distributed.is_main():
        return None
    result = trained.result
    # progress: where the quantizer's schedules (NS-VQ's tau, Gumbel's temperature) stopped;
    # refine_gan continues from there when it trains the codebook.
    # With train_vq.ema_decay the model file holds the EMA of the weights: what refine_gan,
    # train_prior and evaluate read.
    weights = "live" if result.ema_state_dict is None else f"ema {p.train_vq.ema_decay}"
    save_autoencoder(paths.vq_model, trained.model, method_params(p.quantizer),
                     meta={"steps": result.steps, "final": result.final, "progress": trained.progress,
                           "weights": weights}, state_dict=result.ema_state_dict)
    write_history_csv(paths.train_vq_curve, result.history)
    summary = {"train_seconds": result.seconds, "steps": result.steps,
               **{f"final_{k}": v for k, v in result.final.items()}}
    write_report(paths.train_vq_report, summary)
    return StageResult(summary, artifacts=[paths.train_vq_curve])


if __name__ == "__main__":
    run_stage("train_vq", work, ranks=True)
