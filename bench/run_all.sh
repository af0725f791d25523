#!/usr/bin/env bash
# The GPU benchmarks, results in $OUT (default reports/bench), then the headline figures in
# summary.json. Needs torch + triton; for the comparison, vector-quantize-pytorch 1.32.0 and
# its pure-Python needs on PYTHONPATH.
#
#   bash bench/run_all.sh                 # everything (more than one 10-minute device call)
#   bash bench/run_all.sh quantizer       # one part: kmeans | quantizer | train | profile | sweep | summary
#
# One part fits a 10-minute call; run them in this order and `summary` last. `sweep` times every
# launch config of the kernels (bench/sweep_kernels.py) to pick the defaults from.
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
sweep_failed=0
if run sweep; then
  # smoke mode: toy sizes, checked on the CPU under TRITON_INTERPRET=1, not timed
  if [[ "${NSVQ_BENCH_SMOKE:-}" == 1 ]]; then size=(--device cpu --n 33 --k 200); else size=(); fi
  for spec in "search 8" "search 64" "ns 8" "ns 64"; do
    read -r kernels d <<< "$spec"
    # a wrong or failing config is in the log and fails the part at the end; the other sweeps still run
    python3 sweep_kernels.py "$kernels" --sweep --d "$d" ${size[@]+"${size[@]}"} 2>&1 \
      | tee "$OUT/sweep_${kernels}_d$d.log" || { sweep_failed=1; echo "sweep failed: $kernels --d $d" >&2; }
  done
fi
if run summary || [[ "$part" == all ]]; then python3 summarize.py "$OUT"; fi
exit "$sweep_failed"
