"""Training step of the NS-VQ paper's CelebA VQ-VAE (128 px, batch 64) on the GPU: the eager
fp32 step against the optimized one (bf16 autocast for encoder/decoder with the quantizer in
fp32, channels_last, torch.compile of encoder and decoder, fused quantizer kernels), both
through pipeline/vq_training.py's step, the one the train_vq stage runs.

Throughput is measured over steps [warmup, steps) of the same run whose loss curve is
compared (same init, same batches). MFU counts the model's FLOPs (convolutions and matmuls
from torch's FLOP counter on one eager step, plus the quantizer's analytic FLOPs: VQ's search
2NKD; NSVQ's search fused into the dense NS loss, 6NKD) against the H100 SXM's dense bf16 peak.

    python bench/bench_train.py [--methods nsvq vq] [--k 65536] [--steps 500] [--no-tf32x3]

Per method three runs from the same init: the eager fp32 step, the optimized step, and the
optimized step with ``quantizer.search.precision: tf32x3`` (search and NS-loss matmuls on the
tensor cores as split TF32); each optimized curve is compared with the eager one.

Each row also counts the host syncs per step (torch's sync debug mode, over 10 steps after the
timed ones): the hot loop should have none.

Writes reports/bench/train.json (or $OUT/train.json).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import DEVICE, SMOKE, sync, table, write_json
from pipeline.config import DataParams, PretrainParams, QuantizerParams, TrainVQParams
from pipeline.configbase import build
from pipeline.data import load_split, prepare_dataset
from tools.host_sync import HostSyncRecorder, count_cuda_syncs
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.inference import encode_latents
from pipeline.pretraining import pretrain_autoencoder
from pipeline.quantizers import CodeReplacement, build_quantizer
from pipeline.training.setup import RunOptions
from pipeline.vq_training import prepare_vq_training

CELEBA = dict(hidden_channels=256, res_channels=256, num_res_blocks=6, downsample=4, code_dim=64)
PEAK_BF16_DENSE = 989.4e12      # H100 SXM datasheet, dense
BATCH = 64
IMAGE = 128
PRETRAIN_STEPS = 300
DEMO_CROPS = 1024
if SMOKE:   # CPU smoke run (common.py): a toy model at 32 px, same code paths
    CELEBA = dict(hidden_channels=16, res_channels=16, num_res_blocks=1, downsample=4, code_dim=24)
    IMAGE, PRETRAIN_STEPS, DEMO_CROPS = 32, 3, 128
PER_IMAGE = (IMAGE // CELEBA["downsample"]) ** 2      # latents per image


def demo_images(size: int = IMAGE, n: int = DEMO_CROPS):
    with tempfile.TemporaryDirectory() as d:
        prepare_dataset(build(DataParams, {"image_size": size, "demo_train_crops": n, "demo_val_crops": 8}), d)
        return np.asarray(load_split(d, "train"))


def pretrained_autoencoder(images) -> dict:
    """Encoder/decoder weights after a short continuous pretrain, as the pipeline's pretrain
    stage gives train_vq (from an untrained encoder the VQ losses spike into the thousands
    and no two runs, even two eager ones, follow the same curve)."""
    torch.manual_seed(0)
    model = VQAutoencoder(**CELEBA)
    pp = build(PretrainParams, {"steps": PRETRAIN_STEPS, "batch_size": BATCH, "lr": 5e-4, "precision": "bf16"})
    pretrain_autoencoder(model, images, pp, RunOptions(device=DEVICE, progress=False))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_step(images, method: str, k: int, optimized: bool, seed: int = 0, weights: dict | None = None,
              kernel_precision: str = "fp32"):
    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": method, "codebook_size": k, "search": {"precision": kernel_precision}})
    model = VQAutoencoder(**CELEBA, quantizer=build_quantizer(qp, CELEBA["code_dim"])).to(DEVICE)
    if weights is not None:
        model.load_state_dict(weights, strict=False)          # the quantizer is new
    # Codes start on the encoder's latents (as the pipeline's k-means init does).
    latents = encode_latents(model, images[: -(-k // PER_IMAGE)], DEVICE)
    model.quantizer.init_codebook(latents[torch.randperm(latents.shape[0], device=DEVICE)[:k]])
    precision = "bf16" if optimized else "fp32"
    tp = build(TrainVQParams, {"track_steps": 10**6, "freeze_steps": 0, "batch_size": BATCH, "lr": 2e-4,
                               "precision": precision, "compile": optimized, "seed": seed})
    step_fn, _, _ = prepare_vq_training(model, images, tp, CodeReplacement.from_params(qp.replacement),
                                     RunOptions(device=DEVICE, progress=False))
    return step_fn, model


def model_flops(images, method: str, k: int) -> float:
    """FLOPs of one training step: counted convs/matmuls (eager) + analytic quantizer work."""
    step_fn, _ = make_step(images, method, k, optimized=False)
    step_fn(0)
    with FlopCounterMode(display=False) as counter:
        step_fn(1)
    n = BATCH * PER_IMAGE
    # NSVQ: the search rides in the NS loss's first sweep (2NKD), the second sweep is 4NKD
    quant = 2 * n * k * CELEBA["code_dim"] * (3 if method == "nsvq" else 1)
    return counter.get_total_flops() + quant


def host_syncs_per_step(step_fn, first: int, n: int = 10) -> float:
    """Host syncs per training step over n more steps: torch's sync debug mode on the GPU; in
    smoke runs on the CPU, the ops that would sync on a GPU (tools/host_sync.py; the CPU's
    unfused Adam reads its step counter, so not 0 there)."""
    steps = iter(range(first, first + n))
    if DEVICE == "cuda":
        return count_cuda_syncs(lambda: step_fn(next(steps)), n) / n
    with HostSyncRecorder() as rec:
        for s in steps:
            step_fn(s)
    return len(rec.syncs) / n


def run(images, method: str, k: int, optimized: bool, steps: int, warmup: int, seed: int = 0,
        weights: dict | None = None, kernel_precision: str = "fp32") -> dict:
    step_fn, _ = make_step(images, method, k, optimized, seed, weights, kernel_precision)
    losses = []
    t_compile = time.perf_counter()
    for s in range(warmup):
        losses.append(step_fn(s)["loss"])
    sync()
    warm_s = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for s in range(warmup, steps):
        losses.append(step_fn(s)["loss"])
    sync()
    dt = time.perf_counter() - t0
    curve = torch.stack(losses).float().cpu()
    return {"img_per_s": (steps - warmup) * BATCH / dt, "ms_per_step": 1000 * dt / (steps - warmup),
            "warmup_s": warm_s, "curve": curve, "host_syncs_per_step": host_syncs_per_step(step_fn, steps)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["nsvq", "vq"])
    ap.add_argument("--k", type=int, default=65_536)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--no-tf32x3", action="store_true",
                    help="skip the optimized step with the quantizer kernels in tf32x3")
    a = ap.parse_args()
    if SMOKE:
        a.k, a.steps, a.warmup = 128, 100, 50
    images = demo_images()
    weights = pretrained_autoencoder(images)
    rows, curves = [], {}
    for method in a.methods:
        flops = model_flops(images, method, a.k)
        eager = run(images, method, a.k, False, a.steps, a.warmup, weights=weights)
        fast = run(images, method, a.k, True, a.steps, a.warmup, weights=weights)
        steps = [("eager fp32", eager), ("optimized", fast)]
        if not a.no_tf32x3:   # the same optimized step with the search / NS-loss matmuls on the tensor cores
            steps.append(("optimized, tf32x3 quantizer",
                          run(images, method, a.k, True, a.steps, a.warmup, weights=weights,
                              kernel_precision="tf32x3")))
        # Same loss curve within noise: 50-step means of eager vs optimized, against the
        # spread between two eager runs that differ only in the batch order (seed).
        other = run(images, method, a.k, False, a.steps, a.warmup, seed=1, weights=weights)
        e, o = (r["curve"].reshape(-1, 50).mean(1) for r in (eager, other))
        noise = ((e - o).abs() / e.abs()).tolist()
        curves[method] = {"eager_fp32_50step_means": e.tolist(), "eager_fp32_seed1_50step_means": o.tolist(),
                          "noise_rel_diff_50step_means": noise, "max_noise_rel_diff": max(noise[1:])}
        for name, r in steps:
            rows.append({"method": method, "K": a.k, "step": name, "img_per_s": r["img_per_s"],
                         "ms_per_step": r["ms_per_step"], "warmup_s": r["warmup_s"],
                         "mfu": flops * r["img_per_s"] / BATCH / PEAK_BF16_DENSE,
                         "gflop_per_step": flops / 1e9, "host_syncs_per_step": r["host_syncs_per_step"]})
            if name == "eager fp32":
                continue
            rows[-1]["speedup"] = r["img_per_s"] / eager["img_per_s"]
            f = r["curve"].reshape(-1, 50).mean(1)
            rel = ((e - f).abs() / e.abs()).tolist()
            key = "optimized" if name == "optimized" else "optimized_tf32x3"
            curves[method].update({f"{key}_50step_means": f.tolist(), f"{key}_rel_diff_50step_means": rel,
                                   f"{key}_max_rel_diff": max(rel[1:])})
        print(rows[-len(steps):], curves[method], flush=True)
    print(table(rows, ["method", "K", "step", "img_per_s", "ms_per_step", "mfu", "gflop_per_step", "speedup",
                       "host_syncs_per_step", "warmup_s"]))
    for m, c in curves.items():
        tf = (f"; eager vs optimized tf32x3 {c['optimized_tf32x3_max_rel_diff']:.3f}"
              if "optimized_tf32x3_max_rel_diff" in c else "")
        print(f"{m} loss curves (50-step means after the first 50 steps): eager vs optimized max rel diff "
              f"{c['optimized_max_rel_diff']:.3f}{tf}; eager seed 0 vs seed 1 (noise) "
              f"{c['max_noise_rel_diff']:.3f}")
    write_json("train.json", {"train": rows, "loss_curves": curves, "batch": BATCH, "image_size": IMAGE,
                              "model": CELEBA, "steps": a.steps, "warmup": a.warmup})


if __name__ == "__main__":
    main()
