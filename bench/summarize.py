"""Collect the headline figures of the latest GPU run into reports/bench/summary.json.

    python bench/summarize.py [folder with quantizer.json, kmeans.json, train.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import OUT


def pick(rows, **match):
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    q = json.loads((src / "quantizer.json").read_text())
    km = json.loads((src / "kmeans.json").read_text())
    tr = json.loads((src / "train.json").read_text())
    at = q.get("headline", {"K": 65_536, "D": 8})      # K = 65,536, D = 8 (smoke runs: toy sizes)
    ours = pick(q["quantizer_step"], impl="ours fused triton", **at)
    graphed = pick(q["quantizer_step"], impl="ours fused triton, CUDA graph", **at)
    vqp = pick(q["quantizer_step"], impl="vqpytorch VectorQuantize (EMA)", **at)
    ns = pick(q["nsvq_search_ns_loss"], impl="ours fused triton", **at)
    # the fastest optimized nsvq step (fp32 or tf32x3 quantizer kernels), with its loss-curve check
    fast = max((r for r in tr["train"] if r["method"] == "nsvq" and r["step"] != "eager fp32"),
               key=lambda r: r["img_per_s"])
    curves = tr["loss_curves"]["nsvq"]
    curve_key = "optimized_tf32x3_max_rel_diff" if "tf32x3" in fast["step"] else "optimized_max_rel_diff"
    summary = {
        "quantizer_ms_k65536_d8": ours["ms"],
        "quantizer_extra_mb_k65536_d8": ours["peak_extra_mb"],
        "quantizer_graph_ms_k65536_d8": graphed["ms"],
        "vqpytorch_ms_k65536_d8": vqp["ms"],
        "nsvq_search_ns_loss_ms_k65536_d8": ns["ms"],
        "kmeans_s_k65536_1m": km["kmeans"]["total_s"],
        "train_img_per_s_k65536": fast["img_per_s"],
        "train_speedup_vs_eager_fp32": fast["speedup"],
        "train_mfu": fast["mfu"],
        "train_step_variant": fast["step"],
        "train_loss_curve_max_rel_diff": curves.get(curve_key, curves.get("max_rel_diff")),
        "train_loss_curve_noise_max_rel_diff": curves["max_noise_rel_diff"],
        "device": tr["meta"]["device"],
        "date": tr["meta"]["date"],
        "commands": sorted({d["meta"]["command"] for d in (q, km, tr)}),
        "git_commits": {name: d["meta"]["git_commit"] for name, d in
                        (("quantizer.json", q), ("kmeans.json", km), ("train.json", tr))},
    }
    (src / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
