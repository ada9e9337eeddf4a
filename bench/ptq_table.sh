#!/bin/sh
# The --ptq tables of docs/quantisation.md: perplexity and KL divergence from the float model
# on the same windows, without and with a post-training algorithm.
#   sh bench/ptq_table.sh [clip|gptq|smoothquant|lorc|hadamard|kv] [CHUNKS]
#     clip (default):  weight formats alone, round-to-nearest vs --ptq clip      -> bench/ptq.jsonl
#     gptq:            weight formats alone, none, clip, gptq, gptq+clip         -> bench/gptq.jsonl
#     smoothquant:     weight/activation pairs, none, alpha 0.5, alpha searched  -> bench/smooth.jsonl
#     lorc:            weight formats alone, none, lorc:8, lorc:32, clip+lorc:8  -> bench/lorc.jsonl
#     hadamard:        weight/activation pairs, none, hadamard, rotate, both     -> bench/hadamard.jsonl
#     kv:              KV-cache formats (--kv), none, hadamard_kv, rotate+hadamard_kv -> bench/kv_rot.jsonl
# and a Markdown table on stdout.
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
ALG=${1:-clip}
C=${2:-20}
case $ALG in
    clip) J=bench/ptq.jsonl; ALGS="none clip"; SET="q4_0 int4_b32_sfp16 nvfp4 int4_g128 bfp4_b16 mxfp4" ;;
    gptq) J=bench/gptq.jsonl; ALGS="none clip gptq gptq,clip"; SET="q4_0 int4_g128 bfp4_b16 mxfp4 bfp3_b16 fp8_e4m3" ;;
    smoothquant) J=bench/smooth.jsonl; ALGS="none smoothquant:0.5 smoothquant"  # smoothquant: alpha searched per input
        SET=${SET:-"int8/int8 int6/int6 mxint8/mxint8 bfp6_b16/bfp6_b16 int8_row/int8 int4_g128/int8"} ;;
    lorc) J=bench/lorc.jsonl; ALGS="none lorc:8 lorc:32 clip,lorc:8"; SET="q4_0 int4_g128 nvfp4 mxfp4 bfp4_b16" ;;
    hadamard) J=bench/hadamard.jsonl; ALGS="none hadamard rotate rotate,hadamard"
        SET=${SET:-"int8_row/int6 int6/int6 int8/int8 int4_g128/int8 mxfp4/mxfp4 nvfp4/nvfp4 bfp4_b16/bfp4_b16"} ;;
    kv) J=bench/kv_rot.jsonl; ALGS="none hadamard_kv rotate,hadamard_kv"; KV=1
        SET=${SET:-"int8 int4_g64 int4_g32 mxfp4 nvfp4 int3_g64"} ;;
    *) echo "usage: sh bench/ptq_table.sh [clip|gptq|smoothquant|lorc|hadamard|kv] [CHUNKS]" >&2; exit 2 ;;
esac
: >"$J"
echo "| W / A | ptq | ppl | KLD mean | KLD p99 | top-1 agreement |"
echo "|---|---|---|---|---|---|"
for wa in $SET; do
    w=${wa%/*} a=${wa#*/}
    aq=""; [ "$a" != "$wa" ] && aq="--aq $a"
    if [ -n "$KV" ]; then w=f32; aq="--kv $wa"; fi  # kv: the set is KV-cache formats, weights float
    for p in $ALGS; do
        line=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 512 --chunks "$C" --wq $w $aq --ptq $p --kld --json 2>/dev/null | tail -1)
        [ -n "$line" ] || { echo "| $wa | $p | FAILED | | | |"; continue; }
        printf '{"w": "%s", "a": "%s", "ptq": "%s", "result": %s}\n' $w "${aq#--aq }" $p "$line" >>"$J"
        echo "$line" | python3 -c "import json,sys; r=json.load(sys.stdin); print('| $wa | $p | %.2f | %.5f | %.4f | %.2f%% |' % (r['ppl'], r['kld_mean'], r['kld_p99'], 100 * r['top1_agreement']))"
    done
done
