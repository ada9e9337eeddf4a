#!/bin/sh
# llama.cpp's llama-bench with its CUDA backend for Hopper (sm_90a), built from the source
# in $BQ_SHARED/peers (default ../shared) into a cache outside the repository (nvcc, no GPU
# needed): about 15 minutes on 2 cores, 3 on the device machine's 16. The binary (88 MB)
# does not fit the device tool's 64 MiB beside the tree, so gpu_round2.sh's STAGES=lcpp
# builds it there from the source tarball carried in .peer/peers (git-ignored):
#   mkdir -p .peer/peers && cp ../shared/peers/llama.cpp-*.tar.xz .peer/peers/   (carry .peer)
#   sh bench/build_llama_cuda.sh          (here; BQ_PEER_CACHE=DIR for another cache)
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
ls -l "$C/build/bin/llama-bench"
