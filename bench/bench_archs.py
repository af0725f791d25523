"""Parameter counts and forward + backward time per image of every architecture (model.arch, at
its default options, code_dim 64, a vq quantizer with K = 1,024), at 32 and 128 px.

    python bench/bench_archs.py [--sizes 32 128] [--batch 4] [--repeats 5] [--archs ...] [--codebook-size K]

On a GPU, the recipe's figure: ``--archs vqgan --sizes 128 --batch 64 --codebook-size 65536``.

One step: encoder, quantizer, decoder, MSE, backward (fp32 on the CPU; bf16 autocast for the
encoder/decoder on CUDA, the quantizer in fp32). The time is the median over ``repeats`` steps after
two warm-up steps, divided by the batch. Writes reports/bench/archs.json (or $OUT/archs.json).
Take timings on a quiet machine: another torch job on the same cores slows this one many times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_seconds(arch: str, size: int, batch: int, repeats: int, device: str, k: int) -> tuple[int, float]:
    import torch
    import torch.nn.functional as F

    from pipeline.config import QuantizerParams
    from pipeline.configbase import build, to_dict
    from pipeline.models.autoencoder import VQAutoencoder
    from pipeline.models.registry import ARCHS
    from pipeline.quantizers import build_quantizer

    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": "vq", "codebook_size": k}, "quantizer")
    options = to_dict(ARCHS[arch].options())
    model = VQAutoencoder(arch, 64, quantizer=build_quantizer(qp, 64), image_size=size, **options).to(device).train()
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("quantizer."))
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    times = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            x_hat, out = model(x)
        (F.mse_loss(x_hat.float(), x) + out.loss).backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return params, statistics.median(times) / batch


def main() -> None:
    import torch

    from pipeline.models.registry import ARCHS

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--codebook-size", type=int, default=1024)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for arch in args.archs:
        for size in args.sizes:
            params, sec = step_seconds(arch, size, args.batch, args.repeats, device, args.codebook_size)
            rows.append({"arch": arch, "image_size": size, "batch": args.batch, "codebook_size": args.codebook_size,
                         "params": params, "images_per_s": round(1 / sec, 1),
                         "fwd_bwd_ms_per_image": round(sec * 1e3, 2)})
            print(f"{arch:12s} {size:4d} px  {params / 1e6:7.2f} M params  {sec * 1e3:9.2f} ms / image", flush=True)
    out = Path(os.environ.get("OUT", ROOT / "reports" / "bench")) / "archs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
                               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
