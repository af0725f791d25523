"""The data path on this machine's CPUs (not a timed test): prepare's throughput and memory,
and our shard loader against the loader a user would write (torchvision ImageFolder).

    python bench/bench_data.py | tee reports/bench/data.log     # writes reports/bench/data.json

1. A folder of 20,000 JPEG files, 256-512 px on the short side, quality 90: seeded crops of
   the bundled demo photographs, in 100 class folders of 200 (built once into .bench_tmp/).
   A 2,000-file folder links the first 20 files of each class.
2. ``prepare_dataset`` at 128 px (training images stored at 144) on the 20,000 with 1 and
   2 decode workers (twice each, alternated; the mean), and on the 2,000 with 2; each in a
   fresh process, which reports its wall time and the peak RSS of itself plus its workers.
3. Training batches at 128 px, batch 64, 2 loader workers, crop + flip: our BatchSource on the
   prepared shards (forced off the device path) vs ImageFolder + DataLoader decoding the JPEGs
   each step (Resize(144), RandomCrop(128), RandomHorizontalFlip, PILToTensor), timed one after
   the other in this process after each has served its first batches.
"""
from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TMP = REPO / ".bench_tmp" / "data"
OUT = Path(os.environ.get("OUT", REPO / "reports" / "bench"))
FILES, CLASSES, SMALL = 20_000, 100, 2_000
SIZE, STORE, BATCH = 128, 144, 64
REPEATS = 2


def _make_chunk(args) -> None:
    from PIL import Image

    from pipeline.data.demo import demo_photo_paths

    start, stop, root = args
    photos = []
    for p in demo_photo_paths():
        with Image.open(p) as im:
            photos.append(im.convert("RGB"))
    for i in range(start, stop):
        rng = np.random.default_rng([7, i])
        photo = photos[i % len(photos)]
        short = int(rng.integers(256, 513))
        w, h = photo.size
        side = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        aspect = float(rng.uniform(1.0, 1.5))
        crop = photo.crop((x, y, x + side, y + side)).resize((round(short * aspect), short), Image.Resampling.BICUBIC)
        path = root / f"class{i % CLASSES:03d}" / f"img{i:05d}.jpg"
        crop.save(path, quality=90)


def build_folders() -> tuple[Path, Path]:
    big, small = TMP / "jpegs20k", TMP / "jpegs2k"
    done = TMP / "jpegs.done"
    if not done.exists():
        import multiprocessing

        for c in range(CLASSES):
            (big / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        step = 500
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
            pool.map(_make_chunk, [(s, min(s + step, FILES), big) for s in range(0, FILES, step)])
        for c in range(CLASSES):
            (small / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
            for i in range(c, CLASSES * (SMALL // CLASSES), CLASSES):
                os.link(big / f"class{c:03d}" / f"img{i:05d}.jpg", small / f"class{c:03d}" / f"img{i:05d}.jpg")
        done.write_text("ok\n")
    return big, small


PREPARE = """
import json, os, threading, time
from pipeline.config import DataParams
from pipeline.configbase import build
from pipeline.data import prepare_dataset

def rss_kb(pid, field="VmRSS"):
    try:
        for line in open(f"/proc/{{pid}}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

peak = [0]
def watch():   # the stage's RSS: this process plus its decode workers, sampled every 50 ms
    me = os.getpid()
    while True:
        try:
            kids = open(f"/proc/{{me}}/task/{{me}}/children").read().split()
        except OSError:
            kids = []
        peak[0] = max(peak[0], rss_kb(me) + sum(rss_kb(k) for k in kids))
        time.sleep(0.05)

threading.Thread(target=watch, daemon=True).start()
p = build(DataParams, {{"source": {src!r}, "image_size": {size}, "train_store_size": {store}, "workers": {w}}})
t0 = time.perf_counter()
m = prepare_dataset(p, {out!r}, progress=False)
sec = time.perf_counter() - t0
print(json.dumps({{"seconds": sec, "files": m["used_files"] + m["unreadable_count"],
                  "main_peak_rss_mb": rss_kb(os.getpid(), "VmHWM") / 1024, "total_peak_rss_mb": peak[0] / 1024}}))
"""


def run_prepare(src: Path, workers: int, out: Path) -> dict:
    """One prepare in a fresh process (peak RSS from /proc: VmHWM is per process image, unlike
    ru_maxrss, which a child inherits from the process that forked it)."""
    code = PREPARE.format(src=str(src), size=SIZE, store=STORE, w=workers, out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["img_per_s"] = r["files"] / r["seconds"]
    print(f"prepare {src.name} workers={workers}: {r}", flush=True)
    return r


def batches_per_s(next_batch, warmup: int, n: int) -> float:
    for _ in range(warmup):
        next_batch()
    t0 = time.perf_counter()
    for _ in range(n):
        next_batch()
    return n / (time.perf_counter() - t0)


def main() -> None:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from pipeline.data import load_split
    from pipeline.training.batches import BatchSource

    torch.set_num_threads(1)
    big, small = build_folders()
    # Alternated and repeated: this machine's speed drifts by 20-30% from minute to minute.
    runs = {1: [], 2: []}
    for _ in range(REPEATS):
        for w in (1, 2):
            runs[w].append(run_prepare(big, w, TMP / f"prepared_{w}w"))
    prep = {w: {"img_per_s": float(np.mean([r["img_per_s"] for r in rs])),
                "total_peak_rss_mb": max(r["total_peak_rss_mb"] for r in rs)} for w, rs in runs.items()}
    small_run = run_prepare(small, 2, TMP / "prepared_2k")
    ours = BatchSource(load_split(TMP / "prepared_2w", "train"), BATCH, seed=0, device=torch.device("cpu"),
                       augment="crop_flip", workers=2, max_device_bytes=0)
    step = iter(range(10**9))
    loader_bps = batches_per_s(lambda: ours.batch(next(step)), warmup=10, n=300)
    ours.close()
    print(f"our loader: {loader_bps:.1f} batches/s", flush=True)
    tf = T.Compose([T.Resize(STORE), T.RandomCrop(SIZE), T.RandomHorizontalFlip(), T.PILToTensor()])
    folder = torch.utils.data.DataLoader(ImageFolder(str(big), transform=tf), batch_size=BATCH, shuffle=True,
                                         num_workers=2, generator=torch.Generator().manual_seed(0))
    it = iter(folder)
    folder_bps = batches_per_s(lambda: next(it), warmup=3, n=30)
    del it
    print(f"ImageFolder loader: {folder_bps:.2f} batches/s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    result = {
        "prepare_img_per_s_1w": round(prep[1]["img_per_s"], 1),
        "prepare_img_per_s_2w": round(prep[2]["img_per_s"], 1),
        "prepare_speedup_2w": round(prep[2]["img_per_s"] / prep[1]["img_per_s"], 2),
        "prepare_runs_img_per_s": {f"{w}w": [round(r["img_per_s"], 1) for r in rs] for w, rs in runs.items()},
        "prepare_peak_rss_mb_2k": round(small_run["total_peak_rss_mb"], 1),
        "prepare_peak_rss_mb_20k": round(prep[2]["total_peak_rss_mb"], 1),
        "prepare_rss_note": "the stage's process plus its 2 decode workers, summed, sampled every 50 ms",
        "loader_batches_per_s": round(loader_bps, 2),
        "imagefolder_batches_per_s": round(folder_bps, 2),
        "loader_speedup": round(loader_bps / folder_bps, 1),
        "setting": f"{FILES} JPEG q90, 256-512 px short side, {CLASSES} class folders; prepare at {SIZE} px "
                   f"(train stored at {STORE}); batches {BATCH} x {SIZE} px, crop_flip, 2 loader workers",
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "command": "python bench/bench_data.py",
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
