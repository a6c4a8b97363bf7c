#!/usr/bin/env bash
# CPU-scale comparison of every method preset on real CIFAR-10 images (docs/methods.md, docs/analysis.md):
# a small NAS-Bench-201 supernet (C=8, N=2), 3,000 training images, 12 epochs, lr 0.025, one seed, two
# searches at a time on a 2-core machine (about 40 minutes). DARTS runs first order (order=1 for all).
# Each derived cell is looked up in the NAS-Bench-201 table; `sldarts report` gives the table.
#   bash benchmarks/methods_cpu.sh [OUT] [DATA_ROOT] [NB201_CSV]
set -euo pipefail
OUT=${1:-runs/methods-cpu}
DATA=${2:-../shared/data/cifar10-jpeg}
BENCH=${3:-../shared/nb201/nb201_accuracy.csv}
sldarts sweep method=single-darts,darts,gdas,drnas,pcdarts,fairdarts,darts-minus,rsps order=1 \
  dataset=imagefolder data_root="$DATA" channels=8 cells=2 train_samples=3000 eval_samples=1000 \
  epochs=12 lr=0.025 threads=1 workers=0 benchmark="$BENCH" progress=lines log_every=50 \
  --parallel 2 --out "$OUT"
sldarts analyze "$OUT"/*/ --out "$OUT/figures" > /dev/null
