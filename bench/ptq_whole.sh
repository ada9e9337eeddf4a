#!/bin/sh
# Issue 16's results table: round-to-nearest against the post-training algorithms and
# their usual combinations, for W4A16, W4A8, W4A4, W4A4KV4, W6A6 and W8A8, on the WHOLE
# WikiText-2 test text (ctx 512, all 795 windows): perplexity, KL divergence from the
# float model on the same windows (mean, p99), top-1 agreement, and the seconds taken by
# loading, calibration and quantisation (load_seconds).
#   sh bench/ptq_whole.sh [OUT.jsonl]     DEVICE=cuda JOBS=4 THREADS=4 PART=1/2
# Each row is one `blockq ppl --kld --json` run; JOBS of them side by side (the GPU
# machine: DEVICE=cuda, calibration on the GPU too). PART=k/n runs every n-th row from
# the k-th (split over calls); ONLY=REGEX the rows whose "W/A/KV ptq" line matches. Then
# `python3 bench/ptq_whole.py OUT.jsonl` prints the table.
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
J=${1:-bench/ptq_whole_table.jsonl}
DEV=${DEVICE:-cpu}
N=${JOBS:-1}
TH=${THREADS:+--threads $THREADS}
PART=${PART:-1/1}
k=${PART%/*} n=${PART#*/}
# weights / activations / KV cache (- for none) : algorithms (none = round to nearest)
ROWS='f32/-/- none
q4_0/-/- none clip gptq,clip rotate,gptq,clip clip,lorc:8
int4_g128/-/- none clip gptq,clip rotate,gptq,clip awq
mxfp4/-/- none gptq,clip rotate,gptq
nvfp4/-/- none clip clip,lorc:8 rotate gptq,clip
bfp4_b16/-/- none gptq,clip rotate,gptq,clip
int4_g128/int8/- none smoothquant,gptq rotate,hadamard,gptq
mxfp4/mxint8/- none gptq rotate,hadamard,gptq
mxfp4/mxfp4/- none gptq rotate,hadamard rotate,hadamard,gptq smoothquant,gptq rotate,hadamard,gptq,clip
bfp4_b16/bfp4_b16/- none gptq rotate,hadamard rotate,hadamard,gptq smoothquant,gptq rotate,hadamard,gptq,clip
nvfp4/nvfp4/- none smoothquant rotate,hadamard rotate,hadamard,gptq
mxfp4/mxfp4/mxfp4 none rotate,hadamard,hadamard_kv,gptq
int6/int6/- none smoothquant rotate,hadamard rotate,hadamard,gptq
int8/int8/- none rotate,hadamard rotate,hadamard,gptq'
echo "$ROWS" | while read -r spec algs; do
    for p in $algs; do echo "$spec $p"; done
done | awk -v k="$k" -v n="$n" '(NR - k) % n == 0' | grep -E "${ONLY:-.}" >/tmp/ptq_whole_runs.txt
run_one() {  # spec ptq index
    w=$(echo "$1" | cut -d/ -f1) a=$(echo "$1" | cut -d/ -f2) kv=$(echo "$1" | cut -d/ -f3)
    opt="--wq $w"
    [ "$a" != - ] && opt="$opt --aq $a"
    [ "$kv" != - ] && opt="$opt --kv $kv"
    line=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 512 --device "$DEV" $TH $opt --ptq "$2" \
           --kld --json 2>/tmp/ptq_whole_err.$3 | tail -1)
    case "$line" in
        "{"*) printf '{"w": "%s", "a": "%s", "kv": "%s", "ptq": "%s", "result": %s}\n' "$w" "$a" "$kv" "$2" "$line" ;;
        *) printf '{"w": "%s", "a": "%s", "kv": "%s", "ptq": "%s", "error": "%s"}\n' "$w" "$a" "$kv" "$2" \
               "$(tail -1 /tmp/ptq_whole_err.$3 | tr -d '"\\')" ;;
    esac
    rm -f /tmp/ptq_whole_err.$3
}
i=0
while read -r spec p; do
    run_one "$spec" "$p" $i >>"$J" &
    i=$((i + 1))
    [ $((i % N)) -eq 0 ] && wait
done </tmp/ptq_whole_runs.txt
wait
