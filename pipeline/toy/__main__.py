"""``python -m pipeline.toy``: run the toy drift demos and write reports/toy/ (see report.py).

    python -m pipeline.toy                                   # 3 streams x {ema, nsvq}, defaults
    python -m pipeline.toy --methods ema nsvq vq --steps 2000 --seed 1   # or --methods all
    python -m pipeline.toy --set nsvq.lam=0.02 --set replacement.policy=importance
    python -m pipeline.toy --prefect                         # as a Prefect flow (toy_flow)

``--set`` overrides keys of the ``quantizer`` params section for every method (dotted keys,
YAML values). Runs use one torch thread (see runner.toy_torch_settings); a fixed thread
count also keeps reruns byte-identical.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runner import ToyConfig, run_toy
from .streams import STREAMS

DEFAULT_METHODS = ("ema", "nsvq")


def parse_set(items: list[str]) -> dict:
    """["nsvq.lam=0.02", ...] -> {"nsvq": {"lam": 0.02}} (values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run_all(streams, methods, config: dict, log=print) -> list:
    results = []
    for stream in streams:
        for method in methods:
            t0 = time.perf_counter()
            r = run_toy(stream, method, **config)
            f = r.final
            log(f"{stream:14s} {method:16s} dead {f['dead_fraction']:.3f}  error {f['quant_error']:.4g}  "
                f"perplexity {f['perplexity']:.1f}  ({time.perf_counter() - t0:.1f} s)")
            results.append(r)
    return results


def parser() -> argparse.ArgumentParser:
    from ..quantizers.registry import METHODS

    d = ToyConfig()
    ap = argparse.ArgumentParser(prog="python -m pipeline.toy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", nargs="+", choices=list(STREAMS), default=list(STREAMS))
    ap.add_argument("--methods", nargs="+", choices=[*METHODS, "all"], default=list(DEFAULT_METHODS),
                    help="quantizer methods, or 'all' (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--codebook-size", type=int, default=d.codebook_size)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--window", type=int, default=d.window, help="dead-code window in steps")
    ap.add_argument("--lr", type=float, default=d.lr, help="Adam lr of gradient-trained methods")
    ap.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="tau epoch of NSVQ")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a quantizer params key, e.g. nsvq.lam=0.02 (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("reports/toy"))
    ap.add_argument("--prefect", action="store_true", help="run as the Prefect flow toy_flow")
    return ap


def main(argv: list[str] | None = None) -> int:
    from ..quantizers.registry import METHODS

    args = parser().parse_args(argv)
    methods = list(METHODS) if "all" in args.methods else args.methods
    written = _run(args, methods)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run(args, methods: list[str]) -> list[Path]:
    config = {"steps": args.steps, "codebook_size": args.codebook_size, "seed": args.seed,
              "batch_size": args.batch_size, "window": args.window, "lr": args.lr,
              "steps_per_epoch": args.steps_per_epoch, "overrides": parse_set(args.set)}
    if args.prefect:
        from .flow import toy_flow

        return toy_flow(args.streams, methods, config, str(args.out))
    from .report import write_reports

    return write_reports(run_all(args.streams, methods, config), args.out)


if __name__ == "__main__":
    from ..tracking import disable_telemetry

    disable_telemetry()
    sys.exit(main())
