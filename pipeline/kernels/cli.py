"""The command line shared by the kernel modules' check / time / sweep entry points:

    python -m pipeline.kernels.search_triton   [--n N --k K --d D] [--sweep] [--check] [--device cpu]
    python -m pipeline.kernels.ns_loss_triton  (same, plus --tau --lam)
    python -m pipeline.kernels.ns_fused_triton (same, plus --tau --lam)

Each prints one JSON line per config (the default, then ``sweep_configs(d)`` with --sweep)
with its error against the torch reference and, on a GPU, its time. ``--device cpu`` (under
TRITON_INTERPRET=1) checks every config at toy sizes without timing, which is how CI keeps the
sweeps runnable (tests/test_bench_smoke.py, via ``bench/run_all.sh sweep``) before they
cost device time.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import torch


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
    ap.add_argument("--sweep", action="store_true", help="check / time sweep_configs(d) too")
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
