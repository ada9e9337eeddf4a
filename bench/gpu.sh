#!/bin/sh
# Build, check and time the CUDA backend in one go on a GPU machine (the device
# tool's run). `make gpu` needs no OpenBLAS/PCRE2/cJSON; where .debs/ holds those
# Debian packages (apt-get download, see README), they are unpacked locally and
# the full blockq is built too: CPU-vs-GPU perplexity and the 7B-shaped engine run.
#   sh bench/gpu.sh [OUTDIR]      -> OUTDIR/gpu_*.txt|md|jsonl (8 files: what the device tool returns)
#   SANITIZE=1: compute-sanitizer over the GEMV/GEMM tests; QUICK=1: smaller benchmark;
#   LAYERS=N: the 7B-shaped stack's depth (32); PPL_CHUNKS=N; CPU_PPL=1 (see below)
# The GPU-vs-CPU tests of the other architectures read the tiny checkpoints from
# .shared/ where it was carried (a copy of ../shared's README.md, refs/refs.json
# and some of models/tiny/: the whole of ../shared is too big to travel).
set -e
O=${1:-${OUT:-/tmp}}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
X=""
if ls .debs/*.deb >/dev/null 2>&1; then
    mkdir -p /tmp/deps && for f in .debs/*.deb; do dpkg -x "$f" /tmp/deps; done
    D=/tmp/deps/usr; L=$D/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH="$L:$L/openblas-pthread:$LD_LIBRARY_PATH"
    X=full
fi
if [ -n "$X" ]; then
    make -j"$(nproc)" BUILD=build/gpu gpu-full \
        EXTRA_CFLAGS="-I$D/include -I$D/include/x86_64-linux-gnu -I$D/include/x86_64-linux-gnu/openblas-pthread" \
        EXTRA_LDFLAGS="-L$L -L$L/openblas-pthread" >/tmp/gpu_build.txt 2>&1 || { tail -30 /tmp/gpu_build.txt; exit 1; }
else
    make -j"$(nproc)" BUILD=build/gpu gpu >/tmp/gpu_build.txt 2>&1 || { tail -30 /tmp/gpu_build.txt; exit 1; }
fi
./build/gpu/gpu/test_cuda 2>&1 | tee "$O/gpu_test.txt"
# what the compiler made of the matrix kernels: tensor-core instructions, local-memory traffic
if command -v cuobjdump >/dev/null; then
    for k in gemm gemv; do
        cuobjdump -sass build/gpu/cuda/$k.o >"/tmp/$k.sass" 2>/dev/null || true
        printf '%s.o SASS: ' $k; for op in QGMMA IGMMA HGMMA HMMA IMMA LDL STL; do printf '%s=%s ' $op "$(grep -c "$op" /tmp/$k.sass)"; done; echo
    done | tee "$O/gpu_checks.txt"
fi
if [ -n "$SANITIZE" ] && command -v compute-sanitizer >/dev/null; then
    BQ_CUDA_ONLY=gemv,gemm compute-sanitizer --error-exitcode 9 ./build/gpu/gpu/test_cuda 2>&1 | tail -3 | tee -a "$O/gpu_checks.txt"
fi
./build/gpu/gpu/gpu_bench --json "$O/gpu_bench.jsonl" ${QUICK:+--quick} 2>&1 | tee "$O/gpu_bench.md"
if [ -n "$X" ]; then
    [ -f .shared/README.md ] && export BQ_SHARED=.shared
    ./build/gpu/tests/test_engine cuda 2>&1 | tee "$O/gpu_engine_test.txt"
    # the whole test text on the GPU (PPL_CHUNKS=N for fewer windows); on this machine's CPU
    # too with CPU_PPL=1 (about 4 minutes: the README's command gives the CPU's number)
    for dev in cuda ${CPU_PPL:+cpu}; do
        ./build/gpu/blockq ppl --model models/llama-19m-en --text data/wikitext-2-test.txt --ctx 512 --device $dev --json \
            ${PPL_CHUNKS:+--chunks $PPL_CHUNKS} | tail -1 | tee -a "$O/gpu_ppl_full.txt"
    done
    ./build/gpu/gpu/gpu_ppl_bench --layers ${LAYERS:-32} --ctx 2048 --windows 3 --json "$O/gpu_ppl_bench.jsonl" 2>&1 | tee "$O/gpu_ppl_bench.md"
fi
