"""train_vq on N processes (torchrun, gloo on the CPU / NCCL on GPUs) against one process, at
the default params, from the repository's own prepared demo set, pretrained model and k-means
codes (run ``make repro`` first).

    python bench/bench_ddp.py [--steps 200] [--processes 1 2]

For each process count N: ``torchrun --standalone --nproc-per-node N`` runs ``steps`` train_vq
steps (phase 1: encoder, decoder and codebook train, with replacement rounds) at the global
batch ``train_vq.batch_size`` (N x batch / N), and reports the wall time of the steps, images/s
and the final logged loss. On this 2-core CPU the processes share the cores, so N = 2 measures
correctness (the same curve), not speed. Writes reports/bench/ddp.json (or $OUT/ddp.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(steps: int, out: Path) -> None:
    import torch

    from pipeline import distributed
    from pipeline.config import load_params
    from pipeline.configbase import build, to_dict
    from pipeline.config import TrainVQParams
    from pipeline.vq_training import run_train_vq

    p = load_params(ROOT / "params.yaml")
    p.train_vq = build(TrainVQParams, {**to_dict(p.train_vq), "track_steps": steps, "freeze_steps": 0})
    trained = run_train_vq(p, ROOT / "data" / "prepared", ROOT / "models" / "pretrain.pt",
                           ROOT / "models" / "codebook_init.pt")
    if distributed.is_main():
        r = trained.result
        out.write_text(json.dumps({"seconds": r.seconds, "final": r.final, "world": distributed.size(),
                                   "threads": torch.get_num_threads(),
                                   "curve": [row["loss"] for row in r.history]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.steps, a.worker)
    from pipeline.config import load_params

    batch = load_params(ROOT / "params.yaml").train_vq.batch_size
    rows = []
    for n in a.processes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            env = {**os.environ, "NSVQ_DEVICE": os.environ.get("NSVQ_DEVICE", "cpu"), "PYTHONPATH": str(ROOT)}
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                            __file__, "--steps", str(a.steps), "--worker", str(out)], env=env, check=True, cwd=ROOT)
            r = json.loads(out.read_text())
        rows.append({"processes": n, "batch_per_process": batch // n, "steps": a.steps,
                     "train_seconds": round(r["seconds"], 2), "images_per_s": round(a.steps * batch / r["seconds"], 1),
                     "threads_per_process": r["threads"], "final_loss": r["final"]["loss"], "curve": r["curve"]})
        print(f"{n} process(es) x batch {batch // n}: {r['seconds']:.1f} s, "
              f"{a.steps * batch / r['seconds']:.0f} img/s, final loss {r['final']['loss']:.6f}")
    if len(rows) > 1:
        base = rows[0]["curve"]
        for row in rows[1:]:
            row["max_rel_loss_diff_vs_first"] = max(abs(x - y) / abs(y) for x, y in zip(row["curve"], base))
    dest = Path(os.environ.get("OUT", ROOT / "reports" / "bench")) / "ddp.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
