"""Quantizer step and dense NS loss on the GPU: ours (chunked torch, fused Triton) against
vector-quantize-pytorch, in one run.

A quantizer step is the forward and backward of one VQ layer on N latents:
``out = q(z); (out.z_q.sum() + out.loss).backward()``. Peak MB is what the step allocates
above the inputs (latents, codebook, parameters) that exist before it.

    python bench/bench_quantizer.py [--quick]

Prints one table and writes reports/bench/quantizer.json (or $OUT/quantizer.json).
"""
from __future__ import annotations

import argparse

import torch

from common import DEVICE, SMOKE, peak_extra_mb, table, time_ms, write_json

N = 16_384                     # batch 64 of 16 x 16 latents
KS = [1_024, 16_384, 65_536, 262_144]
DS = [8, 64]
K_NS = 65_536                  # the NS-loss and fused-search tables
if SMOKE:                      # CPU smoke run (common.py): toy sizes, same code paths
    N, KS, DS, K_NS = 48, [40, 100], [8, 24], 100


def our_vq(k: int, d: int, backend: str, precision: str = "fp32"):
    from pipeline.config import SearchParams
    from pipeline.quantizers.vq import VQ

    q = VQ(k, d, search=SearchParams(backend=backend, precision=precision)).to(DEVICE)
    with torch.no_grad():
        q.embedding.normal_()

    def run(z):
        out = q(z)
        (out.z_q.sum() + out.loss).backward()
    return run


def vqpytorch(kind: str, k: int, d: int):
    import vector_quantize_pytorch as vqp     # ImportError: measure() notes "not installed"

    if kind == "VectorQuantize":
        q = vqp.VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=1.0).to(DEVICE).train()
    else:
        q = vqp.SimVQ(dim=d, codebook_size=k).to(DEVICE).train()

    def run(z):
        quantized, _, loss = q(z[None])
        (quantized.sum() + loss.sum()).backward()
    return run


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def graphed(step):
    """The same step captured once in a CUDA graph and replayed: GPU time without Python's
    per-op launch cost (possible because the step has no host syncs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def measure(make, k, d, label, rows, reps, graph=False):
    torch.manual_seed(0)
    try:
        if graph and DEVICE != "cuda":
            raise RuntimeError("CUDA graphs need CUDA")
        fn = make()
        z = torch.randn(N, d, device=DEVICE, requires_grad=True)
        step = lambda: fn(z)          # noqa: E731
        if graph:
            step = graphed(step)
        mb = peak_extra_mb(step)
        ms = time_ms(step, reps=reps)
        rows.append({"impl": label, "K": k, "D": d, "ms": ms, "peak_extra_mb": mb})
    except (torch.OutOfMemoryError, ImportError, RuntimeError) as exc:
        note = ("out of memory" if isinstance(exc, torch.OutOfMemoryError) else
                f"not installed ({exc.name})" if isinstance(exc, ImportError) else str(exc)[:80])
        rows.append({"impl": label, "K": k, "D": d, "ms": float("nan"), "peak_extra_mb": float("nan"),
                     "note": note})
    finally:
        empty_cache()
    print(rows[-1], flush=True)


def ns_loss_official_style(z, e, tau, lam):
    """The NS-VQ reference code's formulation: distance, argmin, softmax, one-hot and weights all N x K."""
    k, d = e.shape
    dist = (z.detach() ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * z.detach() @ e.t()
    win = dist.argmin(1, keepdim=True)
    one_hot = torch.zeros(z.shape[0], k, device=z.device).scatter_(1, win, 1)
    soft = lam * k * torch.softmax(-dist.detach() / tau, dim=1)
    w = torch.clamp(soft * (1 - one_hot) + one_hot, 0.0, 1.0)
    return (w * dist / d).sum() / z.shape[0]


def ns_rows(k: int, d: int, rows: list, reps: int):
    """NSVQ's nearest-code search + dense NS loss, forward + backward (one sweep over the N x K
    scores in ours: the search rides in the loss's row pass)."""
    from pipeline.quantizers.ns_loss import ns_search_and_loss

    torch.manual_seed(1)
    z = torch.randn(N, d, device=DEVICE)
    e = torch.randn(k, d, device=DEVICE, requires_grad=True)
    impls = {
        "official-style dense": lambda: ns_loss_official_style(z, e, 1.0, 0.01).backward(),
        "ours chunked torch": lambda: ns_search_and_loss(z, e, 1.0, 0.01, backend="torch")[2].backward(),
        "ours fused triton": lambda: ns_search_and_loss(z, e, 1.0, 0.01, backend="triton")[2].backward(),
    }
    if d > 16:   # the kernels' tl.dot path: tensor cores (split TF32) as well
        impls["ours fused triton tf32x3"] = lambda: ns_search_and_loss(
            z, e, 1.0, 0.01, backend="triton", precision="tf32x3")[2].backward()
    # Reference gradient in strict fp32 (the timed runs keep TF32 matmuls on, as the anchors did).
    torch.backends.cuda.matmul.allow_tf32 = False
    e.grad = None
    ns_loss_official_style(z, e, 1.0, 0.01).backward()
    ref = e.grad.detach().clone()
    torch.backends.cuda.matmul.allow_tf32 = True
    for label, fn in impls.items():
        try:
            e.grad = None
            fn()
            rel = ((e.grad - ref).norm() / ref.norm()).item()
            mb = peak_extra_mb(fn)
            ms = time_ms(fn, reps=reps)
            rows.append({"impl": label, "K": k, "D": d, "ms": ms, "peak_extra_mb": mb, "grad_rel_err": rel})
        except torch.OutOfMemoryError:
            rows.append({"impl": label, "K": k, "D": d, "ms": float("nan"), "note": "out of memory"})
        empty_cache()
        print(rows[-1], flush=True)


def tf32x3_agreement(k: int, d: int) -> dict:
    """How often the tf32x3 search picks another code than the fp32 kernel, and by how much
    that code's exact distance exceeds the fp32 winner's: relative to the distance, and in
    units of 2^-24 (||z||^2 + ||c||^2), the rounding scale of the fp32 expansion itself."""
    from pipeline.quantizers.search import nearest_code

    torch.manual_seed(2)
    z = torch.randn(N, d, device=DEVICE)
    cb = torch.randn(k, d, device=DEVICE)
    i32, d32 = nearest_code(z, cb, backend="triton")
    i3, d3 = nearest_code(z, cb, backend="triton", precision="tf32x3")
    excess = (d3 - d32).clamp_min(0)
    scale = (z.pow(2).sum(1) + cb[i32].pow(2).sum(1)) * 2.0 ** -24
    row = {"K": k, "D": d, "mismatch_frac": (i3 != i32).float().mean().item(),
           "max_rel_excess": (excess / d32.clamp_min(1e-30)).max().item(),
           "max_ulp_scale_excess": (excess / scale).max().item()}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="K = 65,536 and D = 8 only")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True      # the anchors were taken "fp32/tf32"
    torch.backends.cudnn.allow_tf32 = True
    ks, ds = ([K_NS], DS[:1]) if args.quick else (KS, DS)
    rows: list[dict] = []
    for d in ds:
        for k in ks:
            big = k * d >= 262_144 * 64
            reps = 10 if big else 30
            measure(lambda: vqpytorch("VectorQuantize", k, d), k, d, "vqpytorch VectorQuantize (EMA)", rows, reps)
            measure(lambda: vqpytorch("SimVQ", k, d), k, d, "vqpytorch SimVQ", rows, reps)
            measure(lambda: our_vq(k, d, "torch"), k, d, "ours chunked torch", rows, reps)
            measure(lambda: our_vq(k, d, "triton"), k, d, "ours fused triton", rows, reps)
            measure(lambda: our_vq(k, d, "triton"), k, d, "ours fused triton, CUDA graph", rows, reps, graph=True)
            if d > 16:
                measure(lambda: our_vq(k, d, "triton", "tf32x3"), k, d, "ours fused triton tf32x3", rows, reps)
                measure(lambda: our_vq(k, d, "triton", "tf32x3"), k, d, "ours fused triton tf32x3, CUDA graph",
                        rows, reps, graph=True)
    agree = [tf32x3_agreement(k, ds[-1]) for k in ks] if ds[-1] > 16 else []
    ns: list[dict] = []
    for d in ds:
        ns_rows(K_NS, d, ns, reps=10)
    print(f"\nquantizer step (fwd+bwd), N = {N:,}")
    print(table(rows, ["impl", "K", "D", "ms", "peak_extra_mb", "note"]))
    print(f"\nNSVQ's nearest-code search + dense NS embedding loss (fwd+bwd), N = {N:,}, K = {K_NS:,}")
    print(table(ns, ["impl", "K", "D", "ms", "peak_extra_mb", "grad_rel_err", "note"]))
    if agree:
        print(f"\ntf32x3 search against the fp32 kernel, N = {N:,}, D = {ds[-1]}")
        print(table(agree, ["K", "D", "mismatch_frac", "max_rel_excess", "max_ulp_scale_excess"]))
    write_json("quantizer.json", {"quantizer_step": rows, "nsvq_search_ns_loss": ns,
                                  "tf32x3_search": agree, "N": N, "headline": {"K": K_NS, "D": ds[0]}})


if __name__ == "__main__":
    main()
