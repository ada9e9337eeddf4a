#!/bin/sh
# Round two on the GPU machine, one call (the device tool's run, carry .debs and
# .shared as bench/gpu.sh explains): build the whole tool, compare every CUDA
# backend operation and whole decodes with the CPU (tests/test_backend.c), the
# GPU-vs-CPU perplexity tests, generation on the bundled model (CPU vs GPU), and
# the random 7B-shaped checkpoint's whole commands with wall time and peak host
# memory (issue 15's targets) and batch-1 decode per weight format (issue 17).
#   sh bench/gpu_round2.sh $OUT        STAGES="tests bundled scale decode" (default: those four; also
#   ops, packed, graphs, ...: the stages below)
#   STAGES=decode DECODE_FORMATS="nvfp4 q4_0" NO_PPL=1: the per-format decode table alone
#   STAGES=packed: only quantising the 7B shape to a packed .bq and decoding from it (load time)
#   (GRAPHS_SHORT=1: without the fake-quantised decode and the quantised ppl)
#   STAGES=gemvtest: the GEMV tests of test_cuda alone (split and unsplit paths); STAGES=cudatest: all of test_cuda
#   STAGES=pipeline: pipeline stages on one GPU (issue 21): the 7B shape's ppl and decoding
#     with --stages 1, 2 and 4 (the same numbers and tokens; time of each), the bundled model's too
#   STAGES=multigpu (a machine of 2+ GPUs; issue 21's targets): the 7B shape's ppl on one GPU
#     (CUDA_VISIBLE_DEVICES=0) against 2 stages on 2 GPUs, then a random 70B shape (bf16, 140 GB,
#     written to /dev/shm: the 2-GPU machine's disk is 128 GiB) split over both
#   STAGES=pdl: batch-1 decode per format (PDL_FORMATS, ROUNDS) with and without programmatic launches, against the bound
#   STAGES=int8: the int8 tensor-core GEMV (src/cuda/i8_layout.h) and the fused decode kernels (the
#     defaults since the twentieth session): test_cuda's GEMV tests (both paths), test_backend and
#     test_engine with both, gpu_bench --gemv (rows "(int8)"), then batch-1 decode per format
#     (I8_FORMATS, ROUNDS) with neither, each and both, against the bound
#   STAGES=prefetch: test_engine on the defaults, then gemv_i8 with the next tile prefetched
#     (BQ_CUDA_I8_PF=1) beside it: GEMV rates and decode per I8_VARIANTS
#   STAGES=pieces: residual+norm and the int8 GEMV's pieces from the norm / activation kernels (BQ_CUDA_FUSE=2) and
#     attention by k_attn_vec (BQ_CUDA_ATTN=vec): their tests, decode per PC_FORMATS x PC_VARIANTS (ROUNDS)
#   STAGES=qdq: fake quantisation's kernels (twenty-second session) against the twentieth session's
#     (BQ_CUDA_QDQ=0): test_cuda's fake-quantisation tests on the device, then gpu_bench --qdq (ROUNDS)
#   STAGES=f6: MXFP6 on the fp16 GEMV by its codes' bits (default) or through the table (BQ_CUDA_F6=table), gpu_bench --gemv
#   STAGES=rates: gpu_bench --chain (a decode step as copies) and --gemv with the defaults
#   STAGES=minb: the one-token GEMVs of 4-bit codes (int8 path; fp16 path: 32-blocks with 1-byte scales) held to 4 CTAs
#     a multiprocessor (a second build, NVEXTRA=-DBQ_TC_MINB=1; since the twenty-seventh session NVFP4's int8 GEMV and
#     MXFP6's fp16 one have their floor in both builds) against ptxas's choice: its GEMV tests,
#     gpu_bench --gemv and decode per MINB_FORMATS (MXFP4 on the fp16 path too), ROUNDS interleaved
#   STAGES=attdepth: attention of one query with 16 keys a lane in flight (BQ_CUDA_ATTN=deep) against 4 (vec): test_cuda's
#     attention tests, decode per ATTN_FORMATS (ROUNDS interleaved), then one step op by op (bf16) each way
#   STAGES=offset: the int8 GEMV's 4-bit int codes as offset nibbles or through the slots' tables (BQ_CUDA_I8_OFF), gpu_bench --gemv
#   STAGES=prefill: ppl of packed .bq files (PREFILL_FORMATS) from the fp16 and the int8 layouts
#   STAGES=lcpp: llama.cpp (built from .peer/peers by bench/build_llama_cuda.sh) and blockq decoding the same GGUF files (LCPP_FORMATS)
#   STAGES=ops: one decoding step of the 7B shape op by op (bench/gpu_decode_ops.c), bf16 and OPS_FORMATS
#   STAGES=hadamard: greedy decoding of the 7B shape (bf16) with and without --ptq hadamard
#     (down_proj's 11008 inputs rotated online: 64 chunks x a 172 x 172 Hadamard block), same prompt
#   STAGES=gptq7b: calibration (128 x 2048 tokens, on the GPU) plus GPTQ of every linear of the 7B shape (issue 16),
#     both on the GPU; STAGES=gptqdev: one 7B layer's GPTQ on the GPU and test_backend's device GPTQ check
#   STAGES=ptqtable: bench/ptq_whole.sh on the GPU (JOBS side by side, PART=k/n of the rows)
#   STAGES=graphs: one-token steps replayed from a CUDA graph against --eager (every kernel
#     launched), bundled model and 7B shape, and the GEMV at a 7B layer's shapes
O=${1:-${OUT:-/tmp}}
mkdir -p "$O"
S=${STAGES:-tests bundled scale decode}
B=build/gpu/blockq
M=/tmp/r7b
T=data/wikitext-2-test.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "$S" in *scale*|*decode*|*lcpp*|*minb*|*attdepth*|*pdl*|*int8*|*prefetch*|*pieces*|*prefill*|*packed*|*graphs*|*pipeline*|*multigpu*|*ops*|*hadamard*|*gptq7b*|*train7b*) [ -f $M/config.json ] || (python3 bench/make_random_model.py $M >/tmp/gen.log 2>&1 &) ;; esac
mkdir -p /tmp/deps && for f in .debs/*.deb; do dpkg -x "$f" /tmp/deps; done 2>/dev/null
[ -f .debs/deps.tar.xz ] && tar xJf .debs/deps.tar.xz -C /tmp/deps  # the same packages, pruned to fit the transfer
D=/tmp/deps/usr; L=$D/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$L:$L/openblas-pthread:$LD_LIBRARY_PATH"
t0=$(date +%s)
# DIR [MAKE ARGS]: the whole tool into DIR
build_into() {
    d=$1; shift
    make -j"$(nproc)" BUILD=$d gpu-full EXTRA_CFLAGS="-I$D/include -I$D/include/x86_64-linux-gnu -I$D/include/x86_64-linux-gnu/openblas-pthread" \
        EXTRA_LDFLAGS="-L$L -L$L/openblas-pthread" "$@"
}
build_into build/gpu >/tmp/build.txt 2>&1 || { tail -30 /tmp/build.txt; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
[ -f .shared/README.md ] && export BQ_SHARED=.shared
case "$S" in *tests*)
    ./build/gpu/tests/test_backend 2>&1 | tee "$O/r2_backend.txt" | grep -v "^  decode" | tail -25
    grep "^  decode" "$O/r2_backend.txt" | head -30
    ./build/gpu/tests/test_engine cuda 2>&1 | tee "$O/r2_engine.txt" | tail -25 ;;
esac
case "$S" in *cudatest*)
    # every test of test_cuda: fake quantisation (reference vectors, CPU comparisons), GEMV, unpack, GEMM
    ./build/gpu/gpu/test_cuda >"$O/cudatest.txt" 2>&1; echo "test_cuda exit $?"; grep -v "^  GPU" "$O/cudatest.txt" | tail -6 ;;
esac
case "$S" in *qdq*)
    # twenty-second session: NVFP4 and scaled 4-bit blocks by the levels' table, int groups by
    # teams of lanes with several loads in flight, rows up to 16384 in registers, log blocks by
    # bits; against the kernels before (BQ_CUDA_QDQ=0), interleaved, each round both ways
    BQ_CUDA_ONLY=vectors,cpu ./build/gpu/gpu/test_cuda >"$O/qdq_test.txt" 2>&1; echo "test_cuda (fake quantisation) exit $?"
    tail -5 "$O/qdq_test.txt"
    for r in $(seq "${ROUNDS:-2}"); do
        for q in 0 1; do BQ_CUDA_QDQ=$q ./build/gpu/gpu/gpu_bench --qdq --json "$O/qdq_${q}_$r.jsonl" >"$O/qdq_${q}_$r.md" 2>&1; done
    done
    python3 bench/qdq_table.py "$O"/qdq_[01]_*.jsonl | tee "$O/qdq.md" ;;
esac
case "$S" in *gemvtest*)
    BQ_CUDA_ONLY=gemv ./build/gpu/gpu/test_cuda 2>&1 | tee "$O/r4_gemvtest.txt" | grep -v "^  GPU" | tail -5
    grep -c "split" "$O/r4_gemvtest.txt" ;;
esac
case "$S" in *bundled*)
    # greedy float32 generation: the same 64 tokens on both, tokens/s of each
    for dev in cpu cuda; do
        $B generate --model models/llama-19m-en --prompt "The history of the city" -n 64 --device $dev --json --threads 16 >/tmp/gen_$dev.json
        tail -1 /tmp/gen_$dev.json >>"$O/r2_bundled.jsonl"
    done
    python3 - "$O" <<'PY'
import json, sys
c = json.loads(open("/tmp/gen_cpu.json").read()); g = json.loads(open("/tmp/gen_cuda.json").read())
same = sum(1 for a, b in zip(c["ids"], g["ids"]) if a == b)
print(f"bundled greedy 64 tokens: {'identical' if c['ids'] == g['ids'] else f'{same}/64 equal'}; "
      f"CPU {c['gen_tokens_per_second']:.1f} tok/s, GPU {g['gen_tokens_per_second']:.1f} tok/s "
      f"({g['gen_tokens_per_second'] / c['gen_tokens_per_second']:.2f}x); prompt CPU {c['prompt_tokens_per_second']:.0f} GPU {g['prompt_tokens_per_second']:.0f} tok/s")
PY
    ;;
esac
while [ ! -f $M/model.safetensors.index.json ] && pgrep -f make_random_model >/dev/null; do sleep 2; done
export TIMECMD_JSONL="$O/r2_scale.jsonl"
R="python3 bench/timecmd.py"
case "$S" in *scale*)
    du -sb $M | tee -a "$O/r2_scale.txt"
    $R "info" -- $B info --model $M
    $R "ppl cuda float32 ctx2048 x8" -- $B ppl --model $M --text $T --ctx 2048 --chunks 8 --device cuda --json
    $R "ppl cuda W mxfp4 A mxint8" -- $B ppl --model $M --text $T --ctx 2048 --chunks 8 --device cuda --wq mxfp4 --aq mxint8 --json
    [ -n "$PACKED" ] && $R "ppl cuda W mxfp4 A mxint8 packed" -- $B ppl --model $M --text $T --ctx 2048 --chunks 8 --device cuda --wq mxfp4 --aq mxint8 --packed --json
    $R "quantize mxfp4 .bq" -- $B quantize --model $M --wq mxfp4 --out /tmp/m_scale.bq
    rm -f /tmp/m_scale.bq
    ;;
esac
case "$S" in *decode*)
    P="The meaning of life is"
    $R "decode bf16" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --json
    $R "decode mxfp4 fake-quantised (bf16 on the GPU)" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --wq mxfp4 --json
    for f in ${DECODE_FORMATS:-mxfp4 int4_g128}; do
        $R "quantize $f .bq" -- $B quantize --model $M --wq $f --out /tmp/m_$f.bq
        $R "decode packed $f (.bq)" -- $B generate --model /tmp/m_$f.bq --prompt "$P" -n 128 --device cuda --json
        [ -z "$NO_PPL" ] && $R "ppl cuda packed $f (.bq) A mxint8" -- $B ppl --model /tmp/m_$f.bq --text $T --ctx 2048 --chunks 8 --device cuda --aq mxint8 --json
        rm -f /tmp/m_$f.bq
    done
    ./build/gpu/gpu/gpu_bench --quick 2>&1 | grep -i -m3 "copy" | tee -a "$O/r2_scale.txt"
    ;;
esac
# Batch-1 decode per weight format beside its bandwidth bound (bench/decode_table.py): each
# format of $1 quantised to a .bq (bf16: the checkpoint as it is), then `$2 FORMAT MODEL`
# ROUNDS times, so the variants $2 runs interleave.
P="The meaning of life is"
per_format() {
    for f in $1; do
        m=$M
        [ $f = bf16 ] || { $R "quantize $f .bq" -- $B quantize --model $M --wq $f --out /tmp/m_$f.bq >/dev/null; m=/tmp/m_$f.bq; }
        for k in $(seq ${ROUNDS:-2}); do $2 $f $m; done
        rm -f /tmp/m_$f.bq
    done
}
# FORMAT LABEL MODEL [VAR=VALUE ...]: one run, the variables in its environment only
decode() {
    f=$1 l=$2 m=$3; shift 3
    env "$@" $R "decode $f $l" -- $B generate --model $m --prompt "$P" -n 128 --device cuda --json >/dev/null
}
copy_gbps() { sed -n 's/^device copy: \([0-9]*\) GB.*/\1/p'; }  # from gpu_bench's output
# kernels launched programmatically (launch.cuh) or not
pdl_round() { for p in 0 1; do decode $1 pdl=$p $2 BQ_CUDA_PDL=$p; done; }
# the int8 GEMV and the fused decode kernels: neither, each, both (bf16 has no packed GEMV);
# I8_VARIANTS picks (a "+pf" one: BQ_CUDA_I8_PF=1, the next tile in flight)
int8_round() {
    for v in ${I8_VARIANTS:-fp16 int8 fp16+fuse int8+fuse}; do
        [ $1 = bf16 ] && case $v in int8*) continue ;; esac
        fz=0; case $v in *fuse*) fz=1 ;; esac
        pf=0; case $v in *pf) pf=1 ;; esac
        decode $1 gemv=$v $2 BQ_CUDA_GEMV=${v%%+*} BQ_CUDA_FUSE=$fz BQ_CUDA_I8_PF=$pf
    done
}
case "$S" in *pdl*)
    copy=$(./build/gpu/gpu/gpu_bench --quick 2>&1 | copy_gbps)
    export TIMECMD_JSONL="$O/pdl_decode.jsonl"
    per_format "${PDL_FORMATS:-bf16 mxfp4 nvfp4 int4_g128 mxint8 mxfp6_e2m3}" pdl_round
    python3 bench/decode_table.py "$O/pdl_decode.jsonl" "$copy" | tee "$O/pdl_decode.md" ;;
esac
case "$S" in *int8*)
    # the int8 GEMV (BQ_CUDA_GEMV=int8) and the fused decode kernels (BQ_CUDA_FUSE=1), named
    # explicitly; their tests, then decode with neither, each and both
    BQ_CUDA_ONLY=gemv ./build/gpu/gpu/test_cuda 2>&1 | tee "$O/i8_gemvtest.txt" | grep -v "^  GPU" | tail -5
    grep "GPU GEMV int8" "$O/i8_gemvtest.txt" | sort -t= -k2 -g | tail -3  # the largest errors
    BQ_CUDA_GEMV=int8 BQ_CUDA_FUSE=1 ./build/gpu/tests/test_backend 2>&1 | tee "$O/i8_backend.txt" | grep -v "^  decode" | tail -8
    BQ_CUDA_GEMV=int8 BQ_CUDA_FUSE=1 ./build/gpu/tests/test_engine cuda 2>&1 | tee "$O/i8_engine.txt" | tail -4
    ./build/gpu/gpu/gpu_bench --gemv --json "$O/i8_gemv.jsonl" 2>&1 | tee "$O/i8_gemv.txt" | grep -E "^[|]|copy"
    copy=$(copy_gbps < "$O/i8_gemv.txt")
    export TIMECMD_JSONL="$O/i8_decode.jsonl"
    per_format "${I8_FORMATS:-bf16 mxfp4 int4_g128 mxint8}" int8_round
    python3 bench/decode_table.py "$O/i8_decode.jsonl" "$copy" | tee "$O/i8_decode.md" ;;
esac
case "$S" in *prefetch*)
    # twentieth session: the int8 GEMV and the fused kernels by default (test_engine without
    # variables), and gemv_i8 loading a warp's next tile before multiplying this one
    # (BQ_CUDA_I8_PF=1) beside it: GEMV rates, then decode per I8_VARIANTS
    # (PF_DECODE_ONLY=1 COPY=GBPS: the decode runs alone, against a copy rate measured before)
    [ -z "$PF_DECODE_ONLY" ] && ./build/gpu/tests/test_engine cuda 2>&1 | tee "$O/pf_engine.txt" | tail -3
    [ -z "$PF_DECODE_ONLY" ] && for pf in 0 1; do BQ_CUDA_I8_PF=$pf ./build/gpu/gpu/gpu_bench --gemv --json "$O/pf_gemv_$pf.jsonl" >"$O/pf_gemv_$pf.txt" 2>&1; done
    [ -z "$PF_DECODE_ONLY" ] && python3 bench/gemv_ab.py "$O/pf_gemv_0.jsonl" "$O/pf_gemv_1.jsonl" "with the next tile prefetched"
    copy=${COPY:-$(copy_gbps < "$O/pf_gemv_0.txt")}
    export TIMECMD_JSONL="$O/pf_decode.jsonl"
    I8_VARIANTS=${I8_VARIANTS:-fp16+fuse int8+fuse int8+fuse+pf}
    per_format "${I8_FORMATS:-bf16 nvfp4 mxfp4 int4_g128 mxint8}" int8_round
    python3 bench/decode_table.py "$O/pf_decode.jsonl" "$copy" | tee "$O/pf_decode.md" ;;
esac
case "$S" in *offset*)
    # twenty-third session: 4-bit int codes as offset nibbles (BQ_CUDA_I8_OFF=1, the default)
    # against the slots' tables (0), one GEMV at a time (gpu_bench --gemv, the int8 rows)
    for v in 0 1; do BQ_CUDA_I8_OFF=$v ./build/gpu/gpu/gpu_bench --gemv --json "$O/off_gemv_$v.jsonl" >"$O/off_gemv_$v.txt" 2>&1; done
    python3 bench/gemv_ab.py "$O/off_gemv_0.jsonl" "$O/off_gemv_1.jsonl" "offset nibbles (I8_OFF=1)" | tee "$O/off_gemv.md" ;;
esac
case "$S" in *f6*)
    # twenty-fifth session: MXFP6 codes put into fp16 by their bits (the default) against the
    # 64-entry table (BQ_CUDA_F6=table), one GEMV at a time (gpu_bench --gemv: the mxfp6 rows),
    # ROUNDS interleaved; test_cuda's gemv_f6 (same bits both ways) runs in the gemvtest stage;
    # decode: the pieces stage's "+f6tab" variants with PC_FORMATS=mxfp6_e2m3
    for r in $(seq 1 "${ROUNDS:-1}"); do for v in table bits; do
        BQ_CUDA_F6=$v ./build/gpu/gpu/gpu_bench --gemv --json "$O/f6_gemv_${v}_$r.jsonl" >"$O/f6_gemv_${v}_$r.txt" 2>&1; done
        python3 bench/gemv_ab.py "$O/f6_gemv_table_$r.jsonl" "$O/f6_gemv_bits_$r.jsonl" "MXFP6 by bits (F6=bits), round $r" all | grep -E "^[|] (GEMV|---|mxfp6)" | tee -a "$O/f6_gemv.md"; done ;;
esac
case "$S" in *rates*)
    # one GEMV at a time at a 7B layer's shapes and 16384x16384 (L2 flushed), against a copy of
    # the same bytes and the large copy: issue 17's GEMV targets with the defaults
    # (first the decode step as a chain of copies, one per weight launch: the ceiling of a
    # decode of one kernel per matrix)
    ./build/gpu/gpu/gpu_bench --chain --json "$O/rates_chain.jsonl" 2>&1 | tee "$O/rates_chain.txt"
    ./build/gpu/gpu/gpu_bench --gemv --json "$O/rates_gemv.jsonl" >"$O/rates_gemv.txt" 2>&1; grep -E "^[|]|copy" "$O/rates_gemv.txt" ;;
esac
case "$S" in *attdepth*)
    # twenty-seventh session: k_attn_vec with 16 keys (and 16 of V's rows) a lane in flight;
    # op by op, a 7B layer's attention over 128 positions took 7.7 us for 4 MB on the H100
    BQ_CUDA_ONLY=attention ./build/gpu/gpu/test_cuda >"$O/attn_test.txt" 2>&1; grep -v "^  GPU" "$O/attn_test.txt" | tail -2
    copy=$(./build/gpu/gpu/gpu_bench --quick 2>&1 | copy_gbps)
    export TIMECMD_JSONL="$O/attn_decode.jsonl"
    attn_round() { for v in vec deep; do decode $1 r21=fuse2-nopieces+$v $2 BQ_CUDA_ATTN=$v; done; }
    per_format "${ATTN_FORMATS:-nvfp4}" attn_round
    python3 bench/decode_table.py "$O/attn_decode.jsonl" "$copy" | tee "$O/attn_decode.md"
    for v in vec deep; do BQ_CUDA_ATTN=$v ./build/gpu/gpu/gpu_decode_ops $M 2>&1 | grep -E "attention|sum of" | sed "s/^/$v: /"; done | tee "$O/attn_ops.txt" ;;
esac
case "$S" in *minb*)
    # twenty-sixth session: gemv.cu's tc_min_blocks and i8_min_blocks. MXFP4's unsplit fp16 GEMV
    # (79 registers, 3 CTAs a multiprocessor) ran at 62% of copy on the H100 where NVFP4's (64,
    # 4 CTAs) ran at 77%, and on the int8 path int4_g128 (64) at 87% where MXFP4 and NVFP4 (80,
    # 71) ran at 61-62%; the second build holds them to 64 registers and 6-bit codes to 80
    # (twenty-seventh session: kept for NVFP4's int8 GEMV and MXFP6, bench/RESULTS.md)
    build_into build/gpu_minb NVEXTRA=-DBQ_TC_MINB=1 >/tmp/build_minb.txt 2>&1 || { tail -30 /tmp/build_minb.txt; exit 1; }
    echo "build (minb): $(( $(date +%s) - t0 )) s"
    for r in $(seq 1 "${ROUNDS:-1}"); do for v in gpu gpu_minb; do
        ./build/$v/gpu/gpu_bench --gemv --json "$O/minb_gemv_${v}_$r.jsonl" >"$O/minb_gemv_${v}_$r.txt" 2>&1; done
        python3 bench/gemv_ab.py "$O/minb_gemv_gpu_$r.jsonl" "$O/minb_gemv_gpu_minb_$r.jsonl" "4 / 3 CTAs (minb), round $r" all | tee -a "$O/minb_gemv.md"; done
    export TIMECMD_JSONL="$O/minb_decode.jsonl"
    minb_round() {
        for v in gpu gpu_minb; do
            B=build/$v/blockq
            decode $1 $v $2
            [ $1 = mxfp4 ] && decode $1 $v+fp16 $2 BQ_CUDA_GEMV=fp16
        done
        B=build/gpu/blockq
    }
    per_format "${MINB_FORMATS:-mxfp4 mxfp6_e2m3}" minb_round
    BQ_CUDA_ONLY=gemv ./build/gpu_minb/gpu/test_cuda >"$O/minb_gemvtest.txt" 2>&1; grep -v "^  GPU" "$O/minb_gemvtest.txt" | tail -2
    python3 - "$O/minb_decode.jsonl" <<'PY' | tee "$O/minb_decode.md"
import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if r["command"].startswith("decode"):
        print(f"{r['command']}: {r['stderr_last'].split('; generated ')[-1]} (whole command {r['seconds']:.1f} s)")
PY
    ;;
esac
case "$S" in *pieces*)
    # twenty-first session: (1) BQ_CUDA_FUSE=2: each residual connection with the norm after it
    # as one kernel, which also makes the int8 GEMV's activation pieces, as the activation's
    # kernel does (norm_i8, act_i8: five launches fewer a layer) and (2) attention of few
    # queries with 16-byte loads (k_attn_vec; BQ_CUDA_ATTN=vec): test_cuda's
    # GEMV and attention tests, test_backend with both (the fused ops against the separate ones
    # bit for bit, every op and whole decodes against the CPU), then decode per PC_FORMATS with
    # neither, each and both (PC_VARIANTS)
    case "$S" in *cudatest*) ;; *)
        BQ_CUDA_ONLY=gemv,attention ./build/gpu/gpu/test_cuda >"$O/pc_gemvtest.txt" 2>&1; grep -v "^  GPU" "$O/pc_gemvtest.txt" | tail -4 ;; esac
    [ -z "$PC_DECODE_ONLY" ] && BQ_CUDA_FUSE=2 BQ_CUDA_PIECES=1 BQ_CUDA_ATTN=vec ./build/gpu/tests/test_backend 2>&1 | tee "$O/pc_backend.txt" | grep -v "^  decode" | tail -6
    copy=${COPY:-$(./build/gpu/gpu/gpu_bench --quick 2>&1 | copy_gbps)}
    export TIMECMD_JSONL="$O/pc_decode.jsonl"
    pieces_round() {
        for v in ${PC_VARIANTS:-base fuse2 vec fuse2+vec}; do
            fz=1; case $v in *fuse2*) fz=2 ;; esac
            at=few; case $v in *deep*) at=deep ;; *vec*) at=vec ;; esac  # (+deep: vec with 16 keys in flight, the default since the twenty-seventh session)
            pc=1; case $v in *nopieces*) pc=0 ;; esac  # fuse2-nopieces: the residual with the norm, the GEMV's own split
            pf=0; case $v in *pfu*) pf=unsplit ;; *pf*) pf=1 ;; esac  # +pf: gemv_i8 with the next tile in flight (BQ_CUDA_I8_PF=1; +pfu: unsplit launches only)
            off=1; case $v in *tab*) off=0 ;; esac  # +tab: 4-bit int codes through the slots' tables, not as offset nibbles (BQ_CUDA_I8_OFF=0)
            f6=bits; case $v in *f6tab*) f6=table ;; esac  # +f6tab: MXFP6 codes through the fp16 table, not by their bits (BQ_CUDA_F6=table)
            [ $1 = bf16 ] && { [ $pf != 0 ] || [ $off = 0 ] || [ $f6 = table ]; } && continue  # (bf16: no int8 GEMV; the pieces switch changes nothing there)
            case $1 in mxfp6*) ;; *) [ $f6 = table ] && continue ;; esac  # (+f6tab: 6-bit codes only)
            case $1 in mxfp4|nvfp4|mxint8) [ $off = 0 ] && continue ;; esac  # (no int grid of [-8, 7])
            decode $1 r21=$v $2 BQ_CUDA_FUSE=$fz BQ_CUDA_ATTN=$at BQ_CUDA_PIECES=$pc BQ_CUDA_I8_PF=$pf BQ_CUDA_I8_OFF=$off BQ_CUDA_F6=$f6
        done
    }
    per_format "${PC_FORMATS:-bf16 mxfp4 int4_g128 nvfp4 mxint8}" pieces_round
    python3 bench/decode_table.py "$O/pc_decode.jsonl" "$copy" | tee "$O/pc_decode.md" ;;
esac
case "$S" in *prefill*)
    # prefill (ppl windows of 2048: the packed weights unpacked to bf16 for cuBLAS) from the
    # fp16 and the int8 layouts (unpack_tc, unpack_i8), the same .bq, interleaved
    export TIMECMD_JSONL="$O/prefill.jsonl"
    prefill_round() { for g in fp16 int8; do env BQ_CUDA_GEMV=$g $R "ppl $1 gemv=$g" -- $B ppl --model $2 --text $T --ctx 2048 --chunks 8 --device cuda --json >/dev/null; done; }
    per_format "${PREFILL_FORMATS:-mxfp4 mxint8}" prefill_round
    python3 - "$O/prefill.jsonl" <<'PY'
import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if r["command"].startswith("ppl"):
        g = json.loads(r["stdout_last"]) if r["stdout_last"].startswith("{") else {}
        print(f"{r['command']}: {r['seconds']:.2f} s, ppl {g.get('ppl')}")
PY
    ;;
esac
case "$S" in *lcpp*)
    # llama.cpp beside blockq on this GPU: the same GGUF files of the 7B shape (blockq's export,
    # llama.cpp's own quantisation rules), batch-1 decode. llama-bench built here for sm_90a from
    # the source carried in .peer/peers (bench/build_llama_cuda.sh): tg128 (128 tokens, empty
    # prompt), 3 repetitions; blockq's generate: 128 tokens after a 5-token prompt
    export TIMECMD_JSONL="$O/lcpp.jsonl"
    # (the build started with the call: BQ_SHARED=.peer BQ_PEER_CACHE=/tmp/peer sh bench/build_llama_cuda.sh &)
    LB=${LLAMA_BENCH:-/tmp/peer/llama-cuda/build/bin/llama-bench}
    while [ ! -x "$LB" ] && pgrep -f build_llama_cuda >/dev/null; do sleep 2; done
    [ -x "$LB" ] || BQ_SHARED=.peer BQ_PEER_CACHE=/tmp/peer sh bench/build_llama_cuda.sh >/tmp/lb.log 2>&1 || tail -20 /tmp/lb.log
    for f in ${LCPP_FORMATS:-q4_0 q8_0 bf16}; do
        $R "quantize $f .gguf" -- $B quantize --model $M --wq $f --out /tmp/m_$f.gguf >/dev/null
        for k in $(seq ${ROUNDS:-2}); do
            LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/cuda/lib64" $LB -m /tmp/m_$f.gguf -p 0 -n 128 -ngl 99 -r 3 -o jsonl \
                >>"$O/lcpp_bench.jsonl" 2>"$O/lcpp_$f.err" ||
                tail -5 "$O/lcpp_$f.err"
            decode $f blockq /tmp/m_$f.gguf
        done
        rm -f /tmp/m_$f.gguf
    done
    python3 - "$O" <<'PY'
import json, sys, statistics as st
o = sys.argv[1]
lc, bq = {}, {}
for r in map(json.loads, open(o + "/lcpp_bench.jsonl")):
    lc.setdefault(r["model_filename"].split("m_")[-1].split(".gguf")[0], []).append(r["avg_ts"])
for r in map(json.loads, open(o + "/lcpp.jsonl")):
    if r["command"].startswith("decode "):
        t = r["stderr_last"].split("(")[-1].split(" tokens/s")[0]
        bq.setdefault(r["command"].split()[1], []).append(float(t))
print("| GGUF | llama.cpp tg128 tokens/s | blockq generate tokens/s | blockq / llama.cpp |\n|---|---|---|---|")
for f in bq:
    a, b = st.median(lc.get(f, [float("nan")])), st.median(bq[f])
    print(f"| {f} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
PY
    ;;
esac
case "$S" in *ops*)
    # one decoding step op by op (CUDA events; no nsys there), beside generate's tokens/s
    P="The meaning of life is"
    export TIMECMD_JSONL="$O/r7_decode.jsonl"
    ./build/gpu/gpu/gpu_decode_ops $M --json "$O/r7_ops_bf16.jsonl" 2>&1 | tee "$O/r7_ops_bf16.txt"
    $R "decode bf16" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --json
    for f in ${OPS_FORMATS:-mxfp4}; do
        $R "quantize $f .bq" -- $B quantize --model $M --wq $f --out /tmp/m_$f.bq
        ./build/gpu/gpu/gpu_decode_ops /tmp/m_$f.bq --json "$O/r7_ops_$f.jsonl" 2>&1 | tee "$O/r7_ops_$f.txt"
        $R "decode packed $f (.bq)" -- $B generate --model /tmp/m_$f.bq --prompt "$P" -n 128 --device cuda --json
        rm -f /tmp/m_$f.bq
    done ;;
esac
case "$S" in *hadamard*)
    P="The meaning of life is"
    export TIMECMD_JSONL="$O/r8_hadamard.jsonl"
    # (unquantised, the rotated down_proj is no longer bf16-exact and runs as float32:
    # twice its bytes; fake-quantised to mxfp4 it stays bf16-exact)
    for w in "" "--wq mxfp4"; do
        $R "decode bf16 $w" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --json $w
        $R "decode bf16 $w, --ptq hadamard" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --ptq hadamard --json $w
    done ;;
esac
case "$S" in *packed*)
    $R "quantize mxfp4 .bq" -- $B quantize --model $M --wq mxfp4 --out /tmp/m_mxfp4.bq
    $R "decode packed mxfp4 (.bq)" -- $B generate --model /tmp/m_mxfp4.bq --prompt "The meaning of life is" -n 128 --device cuda --json
    $R "decode packed mxfp4 (.bq) on the CPU, 16 threads" -- $B generate --model /tmp/m_mxfp4.bq --prompt "The meaning of life is" -n 16 --threads 16 --json
    rm -f /tmp/m_mxfp4.bq ;;
esac
case "$S" in *graphs*)
    for e in "" --eager; do
        $B generate --model models/llama-19m-en --prompt "The history of the city" -n 128 --device cuda --json $e >/tmp/gen_g$e.json
        tail -1 /tmp/gen_g$e.json >>"$O/r4_bundled.jsonl"
    done
    python3 - <<'PY'
import json
g = json.loads(open("/tmp/gen_g.json").read()); e = json.loads(open("/tmp/gen_g--eager.json").read())
print(f"bundled greedy 128 tokens on the GPU: graphs {g['gen_tokens_per_second']:.1f} tok/s, eager {e['gen_tokens_per_second']:.1f} tok/s "
      f"({g['gen_tokens_per_second'] / e['gen_tokens_per_second']:.2f}x); tokens {'identical' if g['ids'] == e['ids'] else 'DIFFER'}")
PY
    P="The meaning of life is"
    export TIMECMD_JSONL="$O/r4_decode.jsonl"
    for e in "" --eager; do $R "decode bf16 $e" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --json $e; done
    [ -z "$GRAPHS_SHORT" ] && $R "decode mxfp4 fake-quantised" -- $B generate --model $M --prompt "$P" -n 128 --device cuda --wq mxfp4 --json
    [ -z "$GRAPHS_SHORT" ] && $R "ppl cuda W mxfp4 A mxint8" -- $B ppl --model $M --text $T --ctx 2048 --chunks 8 --device cuda --wq mxfp4 --aq mxint8 --json
    for f in ${DECODE_FORMATS:-mxfp4}; do
        $R "quantize $f .bq" -- $B quantize --model $M --wq $f --out /tmp/m_$f.bq
        for e in "" --eager; do $R "decode packed $f (.bq) $e" -- $B generate --model /tmp/m_$f.bq --prompt "$P" -n 128 --device cuda --json $e; done
        rm -f /tmp/m_$f.bq
    done
    ./build/gpu/gpu/gpu_bench --gemv --json "$O/r4_gemv.jsonl" 2>&1 | tee "$O/r4_gemv.txt" ;;
esac
case "$S" in *pipeline*)
    export TIMECMD_JSONL="$O/r6_pipeline.jsonl"
    for k in 1 2 8; do
        $B ppl --model models/llama-19m-en --text $T --ctx 512 --chunks 32 --device cuda --stages $k --json >>"$O/r6_bundled.jsonl"
    done
    for k in 1 2 4; do
        $R "ppl cuda bf16 ctx2048 x8 stages $k" -- $B ppl --model $M --text $T --ctx 2048 --chunks 8 --device cuda --stages $k --json
        $B generate --model $M --prompt "The meaning of life is" -n 64 --device cuda --stages $k --json >"$O/r6_gen_$k.json"
    done
    python3 bench/pipeline_table.py "$O" | tee "$O/r6_pipeline.txt" ;;
esac
case "$S" in *multigpu*)
    export TIMECMD_JSONL="$O/r6_multigpu.jsonl"
    CUDA_VISIBLE_DEVICES=0 $R "7B ppl ctx2048 x16, 1 GPU" -- $B ppl --model $M --text $T --ctx 2048 --chunks 16 --device cuda --json
    $R "7B ppl ctx2048 x16, 2 stages" -- $B ppl --model $M --text $T --ctx 2048 --chunks 16 --device cuda --stages 2 --json
    rm -rf $M
    python3 bench/make_random_model.py /dev/shm/r70b --layers 80 --hidden 8192 --inter 28672 --heads 64 --kv-heads 8 >/tmp/gen70.log 2>&1
    $R "70B ppl ctx2048 x4, 2 stages" -- $B ppl --model /dev/shm/r70b --text $T --ctx 2048 --chunks 4 --device cuda --stages 2 --json
    $R "70B decode 32 tokens, 2 stages" -- $B generate --model /dev/shm/r70b --prompt "The meaning of life is" -n 32 --device cuda --stages 2 --json
    rm -rf /dev/shm/r70b ;;
esac
case "$S" in *gptqdev*)
    # GPTQ of one 7B layer's seven linears on the device (src/cuda/gptq.cu), then the
    # device's GPTQ against the CPU's on the same inputs (test_backend's last check), and
    # every format's device fake quantisation against the CPU's (llama.cpp's rules too)
    ./build/gpu/bench/bench_gptq --device 1 --json "$O/gptq_speed_gpu.jsonl"
    BQ_BACKEND_ONLY=gptq ./build/gpu/tests/test_backend 2>&1 | tee "$O/r11_backend.txt" | tail -12
    BQ_CUDA_ONLY=cpu ./build/gpu/gpu/test_cuda 2>&1 | tee "$O/r11_cuda.txt" | tail -4 ;;
esac
case "$S" in *gptq7b*)
    # issue 16's speed target: calibration on 128 windows of 2048 tokens (on the GPU: the
    # float model's forward passes, per-channel sums and the Gram matrices X^T X by cuBLAS
    # DSYRK) and GPTQ of all 224 linears on the host's cores, then one window scored
    /usr/bin/time -v $B ppl --model $M --text $T --ctx 2048 --chunks 1 --device cuda --wq q4_0 --ptq gptq \
        --calib-chunks 128 --calib-ctx 2048 --threads "$(nproc)" --json >"$O/r11_gptq7b.json" 2>"$O/r11_gptq7b.txt"
    echo "exit $?"; cat "$O/r11_gptq7b.json"
    grep -E "blockq|Elapsed|Maximum resident" "$O/r11_gptq7b.txt" ;;
esac
case "$S" in *ptqtable*)
    # issue 16's whole-text table (bench/ptq_whole.sh), rows side by side on the GPU
    DEVICE=cuda JOBS=${JOBS:-4} THREADS=$(( $(nproc) / ${JOBS:-4} )) PART=${PART:-1/1} B=$B sh bench/ptq_whole.sh "$O/ptq_whole_table.jsonl"
    python3 bench/ptq_whole.py "$O/ptq_whole_table.jsonl" ;;
esac
case "$S" in *trainbundled*)
    # issue 20: the CUDA training pass against the CPU's (tests/test_train.c's CUDA part:
    # one window's loss and every gradient, quantised weights bit for bit, three steps), then
    # the bundled model's training speed on both (full fine-tuning, float and MXFP4 W4A4)
    ./build/gpu/tests/test_train 2>&1 | tee "$O/r5_test_train.txt" | tail -12
    ./build/gpu/gpu/gpu_train_bench --model models/llama-19m-en --ctx 256 --accum 4 --steps 3 --cpu \
        --json "$O/r5_train_bundled.jsonl" 2>&1 | tee "$O/r5_train_bundled.md" ;;
esac
case "$S" in *train7b*)
    # issue 20's GPU target: the random 7B shape, LoRA rank 16, windows of 2048 tokens
    /usr/bin/time -v ./build/gpu/gpu/gpu_train_bench --model $M --ctx 2048 --steps 2 --lora 16 --runs "${TRAIN_RUNS:-float mxfp4}" \
        --json "$O/r5_train7b.jsonl" 2>"$O/r5_train7b_time.txt" | tee "$O/r5_train7b.md"
    grep -E "Elapsed|Maximum resident" "$O/r5_train7b_time.txt"; grep -v "Command\|^\s" "$O/r5_train7b_time.txt" | head -5 ;;
esac
case "$S" in *qat*)
    # issue 20's recovery target on the GPU: bench/qat_table.sh at the CPU's budget (100 steps)
    # and at 10x it (1000 steps x 4 windows x 257 tokens), full fine-tuning
    for st in ${QAT_STEPS:-100 1000}; do
        DEVICE=cuda NO_LORA=${NO_LORA-1} NO_FULL=$NO_FULL OUT=/tmp/qat$st J="$O/qat_gpu_$st.jsonl" B=$B sh bench/qat_table.sh $st 60 2>&1 | tee "$O/qat_gpu_$st.md"
    done ;;
esac
case "$S" in *trainattn*)
    # attention operands quantised in training: the CUDA trainer against the CPU's (test_train),
    # then W4A4 with MXFP4 attention operands and KV cache, RTN against QAT at 1000 steps
    ./build/gpu/tests/test_train 2>&1 | tee "$O/r6_test_train.txt" | tail -6
    DEVICE=cuda NO_LORA=1 QX="--attn mxfp4 --kv mxfp4" SET="mxfp4/mxfp4" OUT=/tmp/qatattn J="$O/qat_attn_1000.jsonl" B=$B \
        sh bench/qat_table.sh 1000 60 2>&1 | tee "$O/qat_attn_1000.md" ;;
esac
case "$S" in *traintest*)
    ./build/gpu/tests/test_train 2>&1 | tee "$O/r7_test_train.txt" | tail -8 ;;
esac
