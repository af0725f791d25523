"""train_vq: drift-aware VQ training in two phases (the NSVQ schedule before refinement).

Phase 1, "track" (``track_steps``): encoder, decoder and codebook all train. The encoder's
latents drift; the quantizer's own loss (for ``nsvq`` the dense non-stationary loss that
moves every code) plus dead-code replacement keep the codebook on the moving distribution.
Phase 2, "freeze" (``freeze_steps``): the encoder is frozen so the latent geometry stops
moving; the codebook settles onto it and the decoder adapts. No replacement here (the
NSVQ paper replaces codes only while the encoder drifts).

Loss per step: rec(x_hat, x) (MSE by default) + quantizer loss, plus, when train_vq's
AdversarialParams switch them on, LPIPS and the patch-GAN term from ``disc_start`` (the
VQGAN recipe; pipeline/gan/adversarial.py). The discriminator idles before ``disc_start``. The
tau schedule of NS-VQ is driven by ``quantizer.set_progress(step, epoch)`` with epoch =
step / steps_per_epoch. With ``ema_decay`` > 0 an EMA of the weights (training/weight_ema.py)
follows every step; the stage writes it as the model file. Every token assigned in an epoch
is counted, and the epoch's codebook usage, perplexity and dead codes are logged at its last
step (``epoch_usage`` ...: evaluation/usage.py), the training-set figure the papers report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from .config import method_params
from .configbase import to_dict
from .data import load_manifest, load_split
from .evaluation.usage import EpochUsage
from .gan.adversarial import AdversarialLoss
from .kmeans import load_codebook_init
from .models.autoencoder import VQAutoencoder
from .models.io import load_autoencoder
from .quantizers.registry import build_quantizer
from .quantizers.replacement import CodeReplacement
from .training.checkpoint import fingerprint
from .training.device import compile_autoencoder
from .training.loop import TrainResult
from .training.optim import make_adam, optimizer_step
from .training.setup import RunOptions, Training, setup_training
from .training.weight_ema import WeightEMA


def steps_per_epoch(tp, num_train: int) -> int:
    return tp.steps_per_epoch or max(1, math.ceil(num_train / tp.batch_size))


def set_encoder_frozen(model: VQAutoencoder, frozen: bool) -> None:
    model.encoder.requires_grad_(not frozen)
    model.encoder.train(not frozen)


def make_vq_step(model: VQAutoencoder, t: Training, tp, replacement: CodeReplacement, per_epoch: int,
                 adv: AdversarialLoss, ema: WeightEMA | None = None, usage: EpochUsage | None = None):
    """The train_vq step: ``step_fn(step) -> metrics`` (0-dim device tensors, no host sync
    except at an epoch's last step, where ``usage`` reports the epoch's codebook usage)."""
    quantizer = model.quantizer

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        frozen = step >= tp.track_steps
        if frozen == model.encoder.training:   # phase boundary (also right after a resume)
            set_encoder_frozen(model, frozen)
        quantizer.set_progress(step, step / per_epoch, tp.track_steps + tp.freeze_steps)
        x = t.batches.batch(step)
        with t.trainer.autocast():
            # One forward through t.net (DDP under torchrun); in phase 2 the encoder's weights
            # need no gradient, so its part builds no graph. The quantizer runs in fp32 itself.
            x_hat, out = t.net(x)
        x_hat = x_hat.float()
        nll, terms = adv.nll(x_hat, x)
        loss = nll + out.loss
        gan_term, gan_metrics = adv.generator_gan_term(nll, x_hat, step)
        if gan_term is not None:
            loss = loss + gan_term
        optimizer_step(loss, t.optimizer, tp.grad_clip)
        metrics = {"loss": loss, "rec_loss": terms["rec_loss"], "vq_loss": out.loss, **out.stats}
        if usage is not None:
            usage.add(out.indices)
            if (step + 1) % per_epoch == 0:
                metrics.update(usage.take())
        if adv.perceptual is not None or adv.disc is not None:   # the default run logs what it always did
            metrics.update({k: v for k, v in terms.items() if k != "rec_loss"}, **gan_metrics)
        metrics.update(adv.discriminator_update(x, x_hat, step))     # {} without a discriminator
        replaced = replacement(quantizer, step + 1)
        if replaced is not None:
            metrics["codes_replaced"] = replaced.float()
        if ema is not None:
            ema.update()
        return metrics

    return step_fn


def prepare_vq_training(model: VQAutoencoder, train_images: np.ndarray, tp, replacement: CodeReplacement,
                        run: RunOptions = RunOptions()):
    """The set-up and the step of two-phase VQ training; returns (step_fn, Training, state):
    ``state`` the stateful objects a checkpoint holds (model, discriminator, weight EMA)."""
    # One optimizer over everything; frozen encoder params simply get no gradient in phase 2.
    # find_unused: phase 2 trains no encoder weight, SF-DiVeQ's warm-up no code.
    t = setup_training("train_vq", tp, model, train_images, total_steps=tp.track_steps + tp.freeze_steps, run=run,
                       optimizer=lambda params, lp: make_adam(params, lp, betas=tuple(tp.betas)), find_unused=True)
    # taming-transformers idles its discriminator until disc_start (disc_factor 0 before it).
    adv = AdversarialLoss(tp, t, model.decoder.last_layer, disc_from=tp.disc_start)
    compile_autoencoder(model, tp.compile)
    model.train()
    ema = WeightEMA(model, tp.ema_decay) if tp.ema_decay > 0 else None
    if replacement.until_step < 0:
        replacement.until_step = tp.track_steps
    levels = getattr(model.quantizer, "num_levels", 1)
    usage = EpochUsage(model.quantizer.codebook_size, levels, t.trainer.device)
    state = {"model": model, **adv.state(), "epoch_usage": usage, **({"weight_ema": ema} if ema is not None else {})}
    per_epoch = steps_per_epoch(tp, len(train_images))
    return make_vq_step(model, t, tp, replacement, per_epoch, adv, ema, usage), t, state


def train_vq(model: VQAutoencoder, train_images: np.ndarray, tp, replacement: CodeReplacement,
             run: RunOptions = RunOptions(), on_log=None) -> TrainResult:
    """Two-phase VQ training of ``model`` (encoder/decoder from pretrain, quantizer attached).
    With ``tp.ema_decay`` > 0 the result's ``ema_state_dict`` holds the averaged weights."""
    step_fn, t, state = prepare_vq_training(model, train_images, tp, replacement, run)
    result = t.fit(step_fn, state, on_log=on_log)
    if "weight_ema" in state:
        result.ema_state_dict = state["weight_ema"].averaged_state_dict(model)
    return result


@dataclass
class TrainedVQ:
    model: VQAutoencoder
    result: TrainResult
    progress: dict      # where the quantizer's schedules stopped: {"step", "epoch"}


def run_train_vq(p, prepared: Path, pretrain_model: Path, codebook_init: Path | None,
                 checkpoint: Path | None = None, on_log=None) -> TrainedVQ:
    """The train_vq stage: the autoencoder with the quantizer of ``p.quantizer`` (seeded by
    ``p.train_vq.seed``), started as ``train_vq.init`` says, trained in two phases on the
    prepared training split:

    - ``kmeans``: the pretrained weights; every method's codebook starts from the k-means
      codes (SimVQ: C := codes, W := I; TransVQ: C := codes, the block near the identity;
      Gumbel: E := codes, nearest-code logits; FC: the codes mapped into its code space;
      SF-DiVeQ: the codes, no warm-up; see each method's ``init_codebook``);
    - ``random``: the pretrained weights, each method's reference init (VQ tables
      U(-1/K, 1/K), SimVQ/TransVQ's frozen N(0, 1/D) table, SF-DiVeQ's warm-up, ...);
    - ``scratch``: a freshly initialised autoencoder of the pretrained one's architecture
      (pretraining skipped) and the reference init."""
    tp, qp = p.train_vq, p.quantizer
    manifest = load_manifest(prepared)
    torch.manual_seed(tp.seed)            # the initial tables (and a scratch model) are part of what params fix
    model, _ = load_autoencoder(pretrain_model, weights=tp.init != "scratch")
    model.quantizer = build_quantizer(qp, model.config["code_dim"])
    if tp.init == "kmeans":
        model.quantizer.init_codebook(load_codebook_init(codebook_init, qp.codebook_size, model.quantizer.dim))
    run = RunOptions(checkpoint, fingerprint(model.config, method_params(qp), to_dict(tp), manifest["sha256"],
                                             p.data.augment), augment=p.data.augment, workers=p.data.workers)
    result = train_vq(model, load_split(prepared, "train"), tp, CodeReplacement.from_params(qp.replacement),
                      run, on_log)
    total = tp.track_steps + tp.freeze_steps
    progress = {"step": total, "epoch": total / steps_per_epoch(tp, manifest["counts"]["train"])}
    return TrainedVQ(model, result, progress)

