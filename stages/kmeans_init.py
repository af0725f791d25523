"""DVC stage `kmeans_init`: k-means codes from the pretrained encoder's latents."""
from __future__ import annotations

from pipeline import distributed
from pipeline.kmeans import kmeans_init, save_codebook_init
from stages.common import StageResult, require, run_stage, write_report


def work(p, paths, run) -> StageResult:
    fit, num_latents = kmeans_init(p, paths.prepared, require(paths.pretrain_model, "pretrain"),
                                   log=lambda it, inertia: run.log_metrics({"inertia": inertia}, it))
    if not distributed.is_main():
        return None
    save_codebook_init(paths.codebook_init, fit)
    summary = {"inertia": fit.inertia, "empty_fraction": fit.empty_fraction, "num_latents": num_latents,
               "codebook_size": p.quantizer.codebook_size}
    write_report(paths.kmeans_report, summary)
    return StageResult(summary)


if __name__ == "__main__":
    run_stage("kmeans_init", work, ranks=True)
