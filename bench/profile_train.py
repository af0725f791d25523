"""Where the GPU time of one optimized training step goes (torch.profiler), grouped by part.

What bounds the training throughput (bench/README.md) is read off one profile of the real step
(the one bench_train.py times: NS-VQ paper's CelebA VQ-VAE, 128 px, batch 64, bf16 +
channels_last + torch.compile, fused quantizer kernels) instead of separately benched parts. Kernel time is summed per group over the profiled
steps and divided by their number:

    search   _search_* / _merge_kernel (nearest code; NSVQ has none: its search is fused into
             the NS loss's row pass)
    ns_loss  _ns_* (dense NS loss statistics, both passes, with NSVQ's search)
    pack     _pack_codebook_kernel (codebook tiles, once per search and per NS loss)
    other    everything else: encoder/decoder (compiled), optimizer, STE, statistics

    python bench/profile_train.py [--method nsvq] [--k 65536] [--kernel-precision fp32|tf32x3]

Prints the group table and the top kernels; writes reports/bench/profile_train_<method>_<prec>.json
(or under $OUT). Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

from torch.profiler import ProfilerActivity, profile

from bench_train import BATCH, demo_images, make_step
from common import DEVICE, SMOKE, sync, table, write_json

GROUPS = (("search", ("_search_", "_merge_kernel")), ("ns_loss", ("_ns_",)), ("pack", ("_pack_codebook",)))


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="nsvq")
    ap.add_argument("--k", type=int, default=65_536)
    ap.add_argument("--kernel-precision", default="fp32", choices=["fp32", "tf32x3"])
    ap.add_argument("--warmup", type=int, default=30, help="steps before profiling (compile, autotune)")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps")
    a = ap.parse_args()
    if SMOKE:   # CPU smoke run (common.py): CPU ops stand in for the kernels
        a.k, a.warmup, a.steps = 128, 2, 2
    images = demo_images()
    step_fn, _ = make_step(images, a.method, a.k, optimized=True, kernel_precision=a.kernel_precision)
    for s in range(a.warmup):
        step_fn(s)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for s in range(a.warmup, a.warmup + a.steps):
            step_fn(s)
        sync()
        wall_ms = 1000 * (time.perf_counter() - t0) / a.steps

    per_group: dict[str, float] = defaultdict(float)
    kernels = []
    for ev in prof.key_averages():
        if DEVICE == "cuda":
            us = getattr(ev, "device_time_total", None)
            if us is None:
                us = ev.cuda_time_total
            if ev.device_type.name != "CUDA":
                continue
        else:
            us = ev.self_cpu_time_total
        if us <= 0:
            continue
        ms = us / 1000 / a.steps
        per_group[group_of(ev.key)] += ms
        kernels.append({"kernel": ev.key[:70], "group": group_of(ev.key), "ms_per_step": ms,
                        "calls_per_step": ev.count / a.steps})
    kernels.sort(key=lambda r: -r["ms_per_step"])
    busy = sum(per_group.values())
    rows = [{"group": g, "ms_per_step": per_group.get(g, 0.0),
             "share_of_kernel_time": per_group.get(g, 0.0) / busy if busy else float("nan")}
            for g in ("search", "ns_loss", "pack", "other")]
    rows.append({"group": "all kernels", "ms_per_step": busy, "share_of_kernel_time": 1.0})
    rows.append({"group": "step wall time", "ms_per_step": wall_ms})
    print(f"{a.method}, K = {a.k}, kernel precision {a.kernel_precision}, {a.steps} profiled steps")
    print(table(rows, ["group", "ms_per_step", "share_of_kernel_time"]))
    print(table(kernels[:20], ["kernel", "group", "ms_per_step", "calls_per_step"]))
    write_json(f"profile_train_{a.method}_{a.kernel_precision}.json",
               {"method": a.method, "K": a.k, "kernel_precision": a.kernel_precision, "steps": a.steps,
                "groups": rows, "kernels": kernels[:40], "img_per_s": BATCH * 1000 / wall_ms})


if __name__ == "__main__":
    main()
