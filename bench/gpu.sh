#!/bin/sh
# Build, check and time the CUDA backend in one go on a GPU machine (the device
# tool's run): make gpu builds only the parts that need no OpenBLAS/PCRE2/cJSON.
#   sh bench/gpu.sh [OUTDIR]      -> OUTDIR/gpu_test.txt, gpu_bench.md, gpu_bench.jsonl
set -e
O=${1:-${OUT:-/tmp}}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
make -j"$(nproc)" BUILD=build/gpu gpu >"$O/gpu_build.txt" 2>&1 || { tail -30 "$O/gpu_build.txt"; exit 1; }
./build/gpu/gpu/test_cuda 2>&1 | tee "$O/gpu_test.txt"
./build/gpu/gpu/gpu_bench --json "$O/gpu_bench.jsonl" ${QUICK:+--quick} 2>&1 | tee "$O/gpu_bench.md"
