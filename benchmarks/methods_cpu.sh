#!/usr/bin/env bash
# CPU-scale comparison of every NB201 method preset (P-DARTS: DARTS space only) on real CIFAR-10 images (docs/methods.md, docs/analysis.md):
# a small NAS-Bench-201 supernet (C=8, N=2), 3,000 training images, 12 epochs, lr 0.025, one seed, two
# searches at a time on a 2-core machine (the first eight took 40 minutes together; the other six were run later, see docs/methods.md). DARTS runs first order (order=1 for all).
# Each derived cell is looked up in the NAS-Bench-201 table shipped in the package; `sldarts report` gives
# the table. The images: CIFAR-10 as image folders, built from the official batches by
#   sldarts data download cifar10 --root data && python benchmarks/cifar10_folder.py data data/cifar10-png
#   bash benchmarks/methods_cpu.sh [OUT] [IMAGE_FOLDER_ROOT] [BENCHMARK (default: the shipped table)]
set -euo pipefail
OUT=${1:-runs/methods-cpu}
DATA=${2:-data/cifar10-png}
BENCH=${3:-}
sldarts sweep method=single-darts,darts,gdas,drnas,pcdarts,fairdarts,darts-minus,rsps,betadarts,sdarts,dartsplus,dropnas,setn,enas order=1 \
  dataset=imagefolder data_root="$DATA" channels=8 cells=2 train_samples=3000 eval_samples=1000 \
  epochs=12 lr=0.025 threads=1 workers=0 benchmark="$BENCH" progress=lines log_every=50 \
  --parallel 2 --out "$OUT"
sldarts analyze "$OUT"/*/ --out "$OUT/figures" > /dev/null
