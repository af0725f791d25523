"""One rank of the distributed tests (tests/test_distributed.py), started by torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node N tests/dist_worker.py SCENARIO OUT [ARGS]

Scenarios (each rank writes OUT/<scenario>-rank<r>.pt):
  methods  every method (and a 2-level residual nsvq) through train_vq on tiny random images:
           replacement rounds in phase 1, then the frozen-encoder phase; saves each method's
           final state_dict and loss history.
  kmeans   k-means of seeded points, each rank fitting its contiguous share.
  resume   one train_vq run; ARGS: checkpoint path and "stop" (end after 30 steps, as if
           killed) or "go" (run to the end, resuming when a checkpoint is there).
  die      train_vq with checkpoints; rank 1 kills itself with SIGKILL at step 25.
  gan      refine_gan of a trained vq model (decoder only, then decoder+encoder+codebook), the
           GAN term on from step 5: the models' and discriminators' weights.
  prior    train_prior's prior (dropout on) on random token rows, then sampling.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.config import QuantizerParams, TrainVQParams
from pipeline.configbase import build
from pipeline.kmeans import kmeans
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.quantizers.registry import METHODS, build_quantizer
from pipeline.quantizers.replacement import CodeReplacement
from pipeline.training.setup import RunOptions
from pipeline.vq_training import train_vq

CPU = torch.device("cpu")
STEPS = (60, 40)        # track, freeze: 100 steps in all
BATCH = 8               # global batch


def images(n: int = 64, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def one_run(method: str, levels: int = 1, checkpoint=None, stop_after=None, replacement_policy="importance",
            checkpoint_every: int = 200, on_log=None):
    torch.manual_seed(0)
    model = VQAutoencoder(hidden_channels=8, res_channels=4, num_res_blocks=1, downsample=2, code_dim=4)
    extra = {"sf_diveq": {"skip_steps": 10, "avg_steps": 4}, "sf_diveq_detach": {"skip_steps": 10, "avg_steps": 4}}
    qp = build(QuantizerParams, {"method": method, "codebook_size": 16, "levels": levels,
                                 "replacement": {"policy": replacement_policy, "period": 10, "dense_period": 5,
                                                 "dense_until": 30, "threshold": 2.0},
                                 **({method: extra[method]} if method in extra else {})})
    model.quantizer = build_quantizer(qp, 4)
    tp = build(TrainVQParams, {"track_steps": STEPS[0], "freeze_steps": STEPS[1], "batch_size": BATCH,
                               "lr": 2e-3, "log_every": 1, "checkpoint_every": checkpoint_every, "precision": "fp32"})
    run = RunOptions(checkpoint, "fp", device=CPU, progress=False, stop_after=stop_after)
    result = train_vq(model, images(), tp, CodeReplacement.from_params(qp.replacement), run, on_log)
    return model, result


def main() -> None:
    torch.set_num_threads(1)
    scenario, out = sys.argv[1], Path(sys.argv[2])
    distributed.init(CPU)
    rank = distributed.rank()
    saved = {}
    if scenario == "methods":
        runs = [(m, 1, "importance") for m in METHODS] + [("nsvq", 2, "importance"), ("vq", 1, "random")]
        for method, levels, policy in runs:
            model, result = one_run(method, levels, replacement_policy=policy)
            saved[f"{method}-L{levels}-{policy}"] = {"state": model.state_dict(), "history": result.history}
    elif scenario == "kmeans":
        x = torch.randn(600, 3, generator=torch.Generator().manual_seed(1))
        fit = kmeans(x[distributed.share(len(x))], 12, iters=8, seed=3)
        saved = {"centers": fit.centers, "inertia": fit.inertia, "history": fit.inertia_history}
    elif scenario == "resume":
        checkpoint, mode = Path(sys.argv[3]), sys.argv[4]
        model, result = one_run("nsvq", checkpoint=checkpoint, stop_after=30 if mode == "stop" else None,
                                checkpoint_every=10)
        saved = {"state": model.state_dict(), "history": result.history, "resumed_from": result.resumed_from}
    elif scenario == "die":
        def die_at_25(step: int, metrics) -> None:
            if rank == 1 and step == 25:
                os.kill(os.getpid(), signal.SIGKILL)
        one_run("nsvq", checkpoint=Path(sys.argv[3]), checkpoint_every=10, on_log=die_at_25)
    elif scenario == "gan":
        from pipeline.config import RefineGANParams
        from pipeline.gan.adversarial import build_discriminator
        from pipeline.gan.training import refine_gan

        for train in ("decoder", "decoder_encoder_codebook"):
            model, _ = one_run("nsvq")
            rp = build(RefineGANParams, {"steps": 12, "batch_size": BATCH, "disc_start": 5, "perceptual_weight": 0.0,
                                         "disc_layers": 1, "disc_channels": 4, "train": train, "log_every": 1,
                                         "precision": "fp32"})
            disc = build_discriminator(rp, seed=0)
            result = refine_gan(model, images(), rp, RunOptions(None, "fp", device=CPU, progress=False), disc=disc)
            saved[train] = {"state": model.state_dict(), "disc": dict(disc.named_parameters()),
                            "history": result.history}
    elif scenario == "prior":
        from pipeline.config import PriorParams
        from pipeline.prior.training import build_prior, sample_images, train_prior

        pp = build(PriorParams, {"steps": 20, "batch_size": BATCH, "layers": 1, "heads": 2, "width": 16,
                                 "warmup_steps": 2, "log_every": 1, "precision": "fp32"})
        seq = np.random.default_rng(1).integers(0, 16, (40, 4 * 4))
        prior = build_prior(pp, 16, seq.shape[1])
        result = train_prior(prior, seq, pp, RunOptions(None, "fp", device=CPU, progress=False))
        model, _ = one_run("vq")
        tokens, samples = sample_images(prior, model, 5, (4, 4), seed=0, batch_size=2)
        saved = {"state": prior.state_dict(), "history": result.history, "tokens": torch.from_numpy(tokens),
                 "samples": torch.from_numpy(samples)}
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(saved, out / f"{scenario}-rank{rank}.pt")
    distributed.close()


if __name__ == "__main__":
    main()
