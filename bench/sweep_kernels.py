"""Check, time and sweep the launch configs of the Triton kernels against the torch reference.

    python bench/sweep_kernels.py search [--n N --k K --d D] [--sweep] [--check] [--device cpu]
    python bench/sweep_kernels.py ns     (NSVQ's row + per-code passes; plus --tau --lam)

Each prints one JSON line per config (the default, then the sweep's configs with --sweep) with
its error against the torch reference and, on a GPU, its time. ``--device cpu`` (under
TRITON_INTERPRET=1) checks every config at toy sizes without timing, which is how CI keeps the
sweeps runnable (tests/test_bench_smoke.py, via ``bench/run_all.sh sweep``) before they cost
device time. A config overrides keys of the kernel's default (``quantizer.search.kernel`` /
``quantizer.search.ns_kernel`` in params.yaml take the winners).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.kernels.launch import FMA_MAX_D  # noqa: E402


def parse_args(description: str, argv, *, ns: bool = False) -> argparse.Namespace:
    """--n/--k/--d (+ --tau/--lam for the NS kernels), --sweep, --check, --rep, --device.
    A device other than cuda implies --check (Triton's do_bench times CUDA work only)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--k", type=int, default=65536)
    ap.add_argument("--d", type=int, default=8)
    if ns:
        ap.add_argument("--tau", type=float, default=0.5)
        ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--sweep", action="store_true", help="check / time the sweep's configs too")
    ap.add_argument("--check", action="store_true", help="correctness only (no timing)")
    ap.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    ap.add_argument("--device", default="cuda", help="cpu: TRITON_INTERPRET=1 smoke run (implies --check)")
    args = ap.parse_args(argv)
    if args.device != "cuda":
        args.check = True
    return args


def random_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal latents (n, d) and codebook (k, d) on ``args.device``."""
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(args.n, args.d, device=dev, generator=g)
    cb = torch.randn(args.k, args.d, device=dev, generator=g)
    return z, cb


def print_header(args: argparse.Namespace, **extra) -> None:
    """The run's first JSON line: device, sizes, ``extra``, library versions."""
    import triton

    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(json.dumps(dict(device=name, n=args.n, k=args.k, d=args.d, **extra,
                          triton=triton.__version__, torch=torch.__version__)), flush=True)


def timer(args: argparse.Namespace) -> Callable[[Callable[[], object]], float]:
    """``ms(fn)``: Triton's do_bench of ``fn`` in ms (4 decimals)."""
    from triton.testing import do_bench

    return lambda fn: round(do_bench(fn, rep=args.rep), 4)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the kernels' tolerance measure (1e-4 for the NS statistics)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------------------------
# nearest-code search
# ----------------------------------------------------------------------------------------------
def search_sweep(d: int) -> list[dict]:
    """Configs worth timing on the GPU (bench/README.md)."""
    if d <= FMA_MAX_D:
        cfgs = []
        for bn, bk, nw in ((64, 32, 4), (64, 32, 8), (32, 32, 4), (128, 32, 8), (32, 32, 2),
                           (64, 64, 4), (64, 64, 8), (128, 64, 8)):
            if (bn // nw) * d * (bk // 32) <= 160:
                cfgs.append(dict(path="fma", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, SPLIT_K=0))
        cfgs += [dict(path="fma", BLOCK_N=128, BLOCK_K=32, num_warps=8, SPLIT_K=2),
                 dict(path="fma", BLOCK_N=64, BLOCK_K=32, num_warps=4, SPLIT_K=2)]
        # tensor cores with 3xTF32 (near-fp32, not bit-faithful; pipeline/kernels/search_triton.py)
        cfgs += [dict(path="dot", precision="tf32x3", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
                      num_stages=ns, SPLIT_K=0)
                 for bn, bk, nw, ns in ((64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2))]
        return cfgs
    cfgs = [dict(path="dot", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns, SPLIT_K=0)
            for bn, bk, nw, ns in ((64, 64, 8, 1), (64, 64, 4, 1), (128, 64, 8, 1), (64, 128, 8, 1),
                                   (64, 64, 8, 2))]
    cfgs += [dict(path="dot", precision="tf32x3", BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
                  num_stages=ns, SPLIT_K=0)
             for bn, bk, nw, ns in ((64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3))]
    return cfgs


def check_search(idx, dist, z, cb, ridx, rdist) -> dict:
    """Mismatch count, whether every mismatch is a near-tie (1e-5 relative, fp64), the returned
    distance's error, and ``ok``: no mismatch beyond near-ties and the distance within 1e-5."""
    mism = (idx != ridx).nonzero().flatten()
    bad = 0
    if mism.numel():
        zz = z[mism].double()
        d_ours = ((zz - cb[idx[mism]].double()) ** 2).sum(1)
        d_ref = ((zz - cb[ridx[mism]].double()) ** 2).sum(1)
        bad = int(((d_ours - d_ref).abs() > 1e-5 * d_ref.abs().clamp_min(1e-30)).sum())
    exact = (z - cb[idx]).pow(2).sum(1)
    derr = ((dist - exact).abs() / exact.clamp_min(1e-12)).max().item()
    return dict(mismatches=int(mism.numel()), non_tie_mismatches=bad, dist_rel_err=derr,
                ok=bad == 0 and derr < 1e-5)


def search_main(argv) -> int:
    """Check every config against nearest_code_torch at full size (non-near-tie mismatches,
    winner distance), then time it; exit 1 if an fp32 config is wrong or the default fails."""
    from pipeline.kernels.search_triton import default_config, nearest_code_triton
    from pipeline.quantizers.search import nearest_code_torch

    args = parse_args("check / time nearest_code_triton on the GPU", argv)
    z, cb = random_inputs(args)
    flops = 2.0 * args.n * args.k * args.d
    print_header(args, gflop=flops / 1e9)
    ridx, rdist = nearest_code_torch(z, cb)
    ms = None if args.check else timer(args)
    if ms:
        print(json.dumps(dict(impl="torch", ms=ms(lambda: nearest_code_torch(z, cb)))))
    cfgs = [dict()] + (search_sweep(args.d) if args.sweep else [])
    failed = 0
    for cfg in cfgs:
        full = default_config(args.n, args.k, args.d)
        full.update(cfg)
        try:
            idx, dist = nearest_code_triton(z, cb, config=cfg)
            res = dict(config=full, **check_search(idx, dist, z, cb, ridx, rdist))
            strict = full.get("precision", "ieee") == "ieee"   # tf32x3 may swap near-ties: reported only
            failed += strict and not res["ok"]
            if ms:
                t = ms(lambda: nearest_code_triton(z, cb, config=cfg))
                res.update(ms=t, tflops=round(flops / t / 1e9, 2))
        except Exception as exc:  # a config that does not compile / fit: report and go on
            res = dict(config=full, error=repr(exc)[:300])
            failed += not cfg
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# NSVQ's kernels: the row pass (search + log-sum-exp) and the per-code pass
# ----------------------------------------------------------------------------------------------
def ns_sweep(d: int) -> list[dict]:
    """Row-pass (F_*) and per-code-pass (C_*) variants worth timing on the GPU (bench/README.md).

    The per-code variants are those the H100 sweep of the unfused kernels timed (that per-code
    pass is this one); the row-block shapes that sweep chose for its pass 1 are the F_* defaults."""
    if d <= FMA_MAX_D:
        rows = [dict(F_BLOCK_N=bn, F_num_warps=nw, F_BLOCK_K=32)
                for bn, nw in ((64, 4), (128, 8), (32, 4), (64, 8), (128, 4)) if (bn // nw) * d <= 128]
        codes = [dict(C_BLOCK_K=bk, C_num_warps=nw, C_SPLIT=sp)
                 for bk, nw, sp in ((256, 1, 0), (256, 1, 4), (256, 1, 16), (128, 1, 0), (512, 2, 0),
                                    (256, 2, 0), (512, 1, 0)) if (bk // (32 * nw)) * d <= 64]
        return rows + codes
    rows = [dict(F_BLOCK_N=bn, F_num_warps=nw, F_BLOCK_K=bk)
            for bn, bk, nw in ((64, 64, 8), (64, 64, 4), (32, 64, 4), (128, 64, 8), (64, 32, 4))]
    rows = (rows + [dict(rows[0], F_BLOCK_D=16)]
            + [dict(c, precision="tf32x3") for c in rows] + [dict(rows[0], precision="tf32x3", F_BLOCK_D=32)]
            + [dict(rows[0], F_num_stages=1), dict(rows[0], precision="tf32x3", F_num_stages=1)])
    codes = [dict(C_BLOCK_R=br, C_num_warps=nw, C_SPLIT=sp)
             for br, nw, sp in ((32, 4, 0), (16, 4, 0), (64, 4, 0), (32, 8, 0), (32, 4, 8))]
    # the default shapes without software pipelining (sm_90 SASS: the per-code pass "ieee" spills
    # 240 bytes per thread at 3 stages and none at 1; which is faster is the GPU's to say)
    codes += [dict(C_num_stages=1), dict(precision="tf32x3", C_num_stages=1, F_num_stages=1)]
    return rows + codes


def stats_for(z, cb, win, tau, lam, ns_weights, rows: int = 1024):
    """(total, s, M) for given winners in fp64, in row chunks (the kernel's own winners, where
    tf32x3 swapped a near-tie against the torch reference's)."""
    z64, e64 = z.double(), cb.double()
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    s = torch.zeros(cb.shape[0], dtype=torch.float64, device=z.device)
    m = torch.zeros_like(e64)
    for a in range(0, z.shape[0], rows):
        zc = z64[a:a + rows]
        d = torch.cdist(zc, e64).pow(2)
        w = ns_weights(d, win[a:a + rows], tau, lam)
        total += (w * d).sum()
        s += w.sum(0)
        m += w.t() @ zc
    return total.float(), s.float(), m.float()


def ns_main(argv) -> int:
    """Check every config against the torch reference at full size: winners equal
    nearest_code_torch's except near-ties (checked in fp64, as the search check does; fp32
    configs only), (total, s, M) within 1e-4 of the torch statistics for those winners (fp64
    for the kernel's own winners where they differ). Then time it, and the autograd forward +
    backward of the default. Exit 1 if a config is wrong or the default fails."""
    from pipeline.kernels.ns_fused_triton import ns_search_stats_triton
    from pipeline.kernels.ns_loss_triton import default_ns_config
    from pipeline.quantizers.ns_loss import ns_search_and_loss, ns_search_stats, ns_weights

    args = parse_args("check / time ns_search_stats_triton on the GPU", argv, ns=True)
    z, cb = random_inputs(args)
    print_header(args, tau=args.tau, lam=args.lam)
    ref = ns_search_stats(z, cb, args.tau, args.lam)
    ms = None if args.check else timer(args)
    failed = 0
    for cfg in [dict()] + (ns_sweep(args.d) if args.sweep else []):
        try:
            idx, dist, *stats = ns_search_stats_triton(z, cb, args.tau, args.lam, config=cfg)
            res = dict(config=cfg or "default", **check_search(idx, dist, z, cb, ref[0], ref[1]))
            own = ref[2:] if torch.equal(idx, ref[0]) else stats_for(z, cb, idx, args.tau, args.lam, ns_weights)
            errs = [rel_err(a, b) for a, b in zip(stats, own)]
            res.update(rel_err_total=errs[0], rel_err_s=errs[1], rel_err_M=errs[2])
            # tf32x3 may swap near-ties (reported, as the search CLI does); the stats must hold always
            strict = {**default_ns_config(args.n, args.k, args.d), **cfg}["precision"] == "ieee"
            res["ok"] = (res["ok"] or not strict) and max(errs) <= 1e-4
            failed += not res["ok"]
            if ms:
                res["ms"] = ms(lambda: ns_search_stats_triton(z, cb, args.tau, args.lam, config=cfg))
        except Exception as exc:
            res = dict(config=cfg or "default", error=repr(exc)[:300])
            failed += not cfg
        print(json.dumps(res), flush=True)
    if ms:  # forward + backward through the autograd Function, default config
        e = cb.clone().requires_grad_(True)

        def fwd_bwd():
            e.grad = None
            ns_search_and_loss(z, e, args.tau, args.lam, backend="triton")[2].backward()

        print(json.dumps(dict(impl="ns_search_and_loss triton fwd+bwd", ms=ms(fwd_bwd))), flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("search", "ns"):
        print("usage: python bench/sweep_kernels.py search|ns [options]", file=sys.stderr)
        return 2
    return (search_main if argv[0] == "search" else ns_main)(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
