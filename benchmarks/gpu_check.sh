#!/usr/bin/env bash
# The one prepared GPU check (issue: speed, memory and scale), under 8 minutes on an H200:
#   1. `sldarts bench --device cuda` (reference vs fused supernet, single / 1st / 2nd order);
#   2. a full NB201 single-level + sigmoid search, 50 epochs at batch 64, over the CIFAR-10 training
#      images (JPEG folders), timed; then the same search 3x concurrently on the one GPU (throughput).
# Before the device call, build the images into an ignored folder of the checkout and carry it:
#   echo /data/ >> .git/info/exclude; sldarts data download cifar10 --root data
#   python benchmarks/cifar10_folder.py data data/cifar10-png
# and run:  bash benchmarks/gpu_check.sh   (writes into $OUT, or ./gpu_check_out).
set -uo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SLDARTS_CACHE="$OUT/cache"
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || python3 -m pip install -q -e .
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 -m sldarts bench --device cuda --repeats 5 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.md"
SEARCH="--config nb201-single-sigmoid dataset=imagefolder data_root=data/cifar10-png progress=lines log_every=200"
start=$(date +%s)
timeout 240 python3 -m sldarts search $SEARCH amp=bf16 out="$OUT/search" overwrite=true 2>&1 | tail -n 60 > "$OUT/search.log"
echo "one search: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
start=$(date +%s)
timeout 180 python3 -m sldarts sweep $SEARCH amp=bf16 epochs=5 seed=0,1,2 --parallel 3 --gpus 0 --out "$OUT/sweep" \
    > "$OUT/sweep.log" 2>&1
echo "3 concurrent 5-epoch searches: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
tail -n 3 "$OUT/search.log"
