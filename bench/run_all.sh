#!/usr/bin/env bash
# The GPU benchmarks, results in $OUT (default reports/bench), then the headline figures in
# summary.json. Needs torch + triton; for the comparison, vector-quantize-pytorch 1.32.0 and
# its pure-Python needs on PYTHONPATH.
#
#   bash bench/run_all.sh                 # everything (more than one 10-minute device call)
#   bash bench/run_all.sh quantizer       # one part: kmeans | quantizer | train | profile | summary
#
# One part fits a 10-minute call; run them in this order and `summary` last.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
OUT="${OUT:-../reports/bench}"
export OUT
part="${1:-all}"
run() { [[ "$part" == all || "$part" == "$1" ]]; }
if run kmeans; then python3 bench_kmeans.py 2>&1 | tee "$OUT/kmeans.log"; fi
if run quantizer; then python3 bench_quantizer.py 2>&1 | tee "$OUT/quantizer.log"; fi
if run train; then python3 bench_train.py 2>&1 | tee "$OUT/train.log"; fi
if run profile; then
  for prec in fp32 tf32x3; do
    python3 profile_train.py --kernel-precision "$prec" 2>&1 | tee "$OUT/profile_train_nsvq_$prec.log"
  done
fi
if run summary || [[ "$part" == all ]]; then python3 summarize.py "$OUT"; fi
