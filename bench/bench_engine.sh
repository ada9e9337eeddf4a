#!/bin/sh
# Engine throughput on the bundled model: blockq ppl tokens/s at 1 and 2 threads,
# float32 vs simulated formats (ratio measured in the same run), the share of
# time in OpenBLAS (matmuls) from perf, and generation tokens/s.
#   sh bench/bench_engine.sh [CHUNKS] > bench/engine.md   (JSON lines in bench/engine.jsonl)
set -e
B=build/blockq; M=models/llama-19m-en; T=data/wikitext-2-test.txt
CH=${1:-20}
J=bench/engine.jsonl
: > $J
run() { # threads label flags...
    th=$1; label=$2; shift 2
    out=$($B ppl --model $M --text $T --ctx 512 --chunks $CH --threads $th --json "$@" | tail -1)
    tps=$(printf '%s' "$out" | sed -E 's/.*"tokens_per_second": ([0-9.]+).*/\1/')
    ppl=$(printf '%s' "$out" | sed -E 's/.*"ppl": ([0-9.]+).*/\1/')
    echo "{\"threads\": $th, \"setting\": \"$label\", \"tokens_per_second\": $tps, \"ppl\": $ppl, \"chunks\": $CH}" >> $J
    echo "$tps"
}
echo "## blockq ppl on llama-19m-en, ctx 512, first $CH windows ($(($CH * 512)) tokens)"
echo
echo "| setting | threads | tokens/s | time vs float32 (same threads) |"
echo "|---|---|---|---|"
for th in 1 2; do
    base=$(run $th fp32)
    echo "| float32 | $th | $base | 1.00x |"
    for s in "bfp6_b16 W/A:--wq bfp6_b16 --aq bfp6_b16" "mxfp4 W/A:--wq mxfp4 --aq mxfp4" "nvfp4 W/A:--wq nvfp4 --aq nvfp4" \
             "int8_row W/A:--wq int8_row --aq int8_row" "fixed8.4 W/A:--wq fixed8.4 --aq fixed8.4" \
             "bl8_b16 W/A:--wq bl8_b16 --aq bl8_b16" \
             "bfp6_b16 W/A + attn bfp6_b16 + kv bfp8_b16:--wq bfp6_b16 --aq bfp6_b16 --attn bfp6_b16 --kv bfp8_b16"; do
        label=${s%%:*}; flags=${s#*:}
        tps=$(run $th "$label" $flags)
        echo "| $label | $th | $tps | $(echo "$base $tps" | awk '{printf "%.2fx", $1/$2}') |"
    done
done
echo
if perf stat -e task-clock true >/dev/null 2>&1; then
    perf record -q -o /tmp/bq_perf.data $B ppl --model $M --text $T --ctx 512 --chunks 10 --threads 1 >/dev/null 2>&1
    share=$(perf report -i /tmp/bq_perf.data --stdio --sort dso 2>/dev/null | awk '/libopenblas/ {s += $1} END {printf "%.1f", s}')
    echo "Share of samples in OpenBLAS (all matmuls incl. attention), float32, 1 thread: ${share}%"
    echo "{\"openblas_share_percent\": $share}" >> $J
fi
gen=$( { /usr/bin/time -f "%e" $B generate --model $M --prompt "In the beginning" -n 256 --threads 1 >/dev/null; } 2>&1 | tail -1)
echo "Generation: 256 tokens greedy, 1 thread, ${gen} s wall including load ($(echo "$gen" | awk '{printf "%.0f", 256/$1}') tokens/s)"
echo "{\"generate_tokens\": 256, \"seconds\": $gen}" >> $J
