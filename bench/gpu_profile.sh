#!/bin/sh
# Where a 7B-shaped packed decode spends its GPU time, per kernel (nsys), for each
# weight format: the per-format decode table's follow-up (issue 17).
#   sh bench/gpu_profile.sh $OUT        PROFILE_FORMATS="mxfp4 nvfp4" (default)
# Builds like gpu_round2.sh (carry .debs and .shared); the .bq files are made here.
O=${1:-${OUT:-/tmp}}
B=build/gpu/blockq
M=/tmp/r7b
[ -f $M/config.json ] || (python3 bench/make_random_model.py $M >/tmp/gen.log 2>&1 &)
mkdir -p /tmp/deps && tar xJf .debs/deps.tar.xz -C /tmp/deps 2>/dev/null || for f in .debs/*.deb; do dpkg -x "$f" /tmp/deps; done
D=/tmp/deps/usr; L=$D/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$L:$L/openblas-pthread:$LD_LIBRARY_PATH"
make -j"$(nproc)" BUILD=build/gpu gpu-full EXTRA_CFLAGS="-I$D/include -I$D/include/x86_64-linux-gnu -I$D/include/x86_64-linux-gnu/openblas-pthread" \
    EXTRA_LDFLAGS="-L$L -L$L/openblas-pthread" >/tmp/build.txt 2>&1 || { tail -30 /tmp/build.txt; exit 1; }
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}"
while [ ! -f $M/model.safetensors.index.json ] && pgrep -f make_random_model >/dev/null; do sleep 2; done
for f in ${PROFILE_FORMATS:-mxfp4 nvfp4}; do
    $B quantize --model $M --wq $f --out /tmp/m_$f.bq >/dev/null || continue
    $B generate --model /tmp/m_$f.bq --prompt "The meaning of life is" -n 64 --device cuda --json 2>&1 >/dev/null | tail -1 | tee -a "$O/profile.txt"
    if [ -n "$NSYS" ]; then
        $NSYS profile -o /tmp/p_$f -t cuda --force-overwrite true $B generate --model /tmp/m_$f.bq --prompt "The meaning of life is" -n 64 \
            --device cuda --eager >/dev/null 2>&1
        $NSYS stats -r cuda_gpu_kern_sum -f csv -o "$O/kern_$f" /tmp/p_$f.nsys-rep >/dev/null 2>&1
        echo "== $f: top kernels (eager, 64 tokens + prompt)" | tee -a "$O/profile.txt"
        head -12 "$O/kern_${f}_cuda_gpu_kern_sum.csv" | cut -c1-220 | tee -a "$O/profile.txt"
    fi
    rm -f /tmp/m_$f.bq
done
