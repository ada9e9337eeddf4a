#!/bin/sh
# llama.cpp's llama-bench with its CUDA backend for Hopper (sm_90a), built on this machine
# (nvcc, no GPU needed) from the source in ../shared/peers into a cache outside the
# repository, then compressed to .peer/llama-bench.xz (git-ignored) for the device tool to carry:
# gpu_round2.sh's STAGES=lcpp runs it beside blockq on the same GGUF files.
# About an hour on 2 cores (the quantised matmul kernels); once per cache.
#   sh bench/build_llama_cuda.sh
set -e
SH=${BQ_SHARED:-../shared}
SRC=$(ls "$SH"/peers/llama.cpp-*.tar.xz | head -1)
C=${BQ_PEER_CACHE:-$HOME/.cache/blockq}/llama-cuda
export PATH=/usr/local/cuda/bin:$PATH
if [ ! -x "$C/build/bin/llama-bench" ]; then
    rm -rf "$C" && mkdir -p "$C" && tar xJf "$SRC" -C "$C"
    [ -f "$C/CMakeLists.txt" ] || { d=$(ls -d "$C"/*/ | head -1); mv "$d"* "$C"/; }
    cmake -B "$C/build" -S "$C" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >"$C/build.log" 2>&1
    cmake --build "$C/build" -j"$(nproc)" --target llama-bench >>"$C/build.log" 2>&1
fi
mkdir -p .peer
cp "$C/build/bin/llama-bench" /tmp/llama-bench
strip /tmp/llama-bench
xz -9 -T2 -c /tmp/llama-bench >.peer/llama-bench.xz  # (88 MB -> 32 MB: the device tool carries 64 MiB)
ls -l .peer/llama-bench.xz
