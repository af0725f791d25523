#!/usr/bin/env bash
# Every GPU benchmark in one run (about 8 minutes on an H100), results in $OUT (default
# reports/bench), then the headline figures in summary.json. Needs torch + triton; for the
# comparison, vector-quantize-pytorch 1.32.0 and its pure-Python needs on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
OUT="${OUT:-../reports/bench}"
export OUT
python3 bench_kmeans.py 2>&1 | tee "$OUT/kmeans.log"
python3 bench_quantizer.py 2>&1 | tee "$OUT/quantizer.log"
python3 bench_train.py 2>&1 | tee "$OUT/train.log"
python3 summarize.py "$OUT"
