"""Where the time of one quantizer step goes (torch.profiler, CUDA kernels and CPU ops).

    python bench/profile_quantizer.py [--method vq|nsvq] [--k 65536] [--d 8]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import common  # noqa: F401  (puts the repo on sys.path)
from pipeline.config import QuantizerParams
from pipeline.configbase import build
from pipeline.quantizers import build_quantizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="vq")
    ap.add_argument("--k", type=int, default=65_536)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--n", type=int, default=16_384)
    a = ap.parse_args()
    q = build_quantizer(build(QuantizerParams, {"method": a.method, "codebook_size": a.k}), a.d).cuda()
    z = torch.randn(a.n, a.d, device="cuda", requires_grad=True)

    def step():
        out = q(z)
        (out.z_q.sum() + out.loss).backward()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
