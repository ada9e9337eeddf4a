#!/bin/sh
# Packed models end to end on the bundled llama-19m-en: .bq file size and resident
# memory against the formats' own bits per weight, and ppl / generate tokens/s
# against float32, all in one run.
#   sh bench/bench_packed_model.sh [CHUNKS] > bench/packed_model.md   (JSON lines in bench/packed_model.jsonl)
set -e
B=build/blockq; M=models/llama-19m-en; T=data/wikitext-2-test.txt
CH=${1:-8}
J=bench/packed_model.jsonl
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
: > $J
num() { printf '%s' "$1" | sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/"; }
ppl_tps() { # threads model flags...
    th=$1; mod=$2; shift 2
    out=$($B ppl --model $mod --text $T --ctx 512 --chunks $CH --threads $th --json "$@" | tail -1)
    echo "$(num "$out" tokens_per_second) $(num "$out" ppl)"
}
gen_tps() { # model flags...: tokens/s of 128 generated tokens (1 thread), load and prompt excluded
    mod=$1; shift
    t0=$(date +%s.%N); $B generate --model $mod --prompt "The history of" -n 1 --threads 1 "$@" >/dev/null; t1=$(date +%s.%N)
    $B generate --model $mod --prompt "The history of" -n 129 --threads 1 "$@" >/dev/null; t2=$(date +%s.%N)
    echo "$t0 $t1 $t2" | awk '{printf "%.0f", 128 / (($3 - $2) - ($2 - $1) + 1e-9)}'
}
blobs=$(($(wc -c < $M/config.json) + $(wc -c < $M/tokenizer.json)))
fi=$($B info --model $M --json)
base_float=$(num "$fi" float_bytes); base_rss=$(num "$fi" resident_bytes)
overhead=$(echo "$base_rss $base_float" | awk '{print $1 - $2}')   # process + libraries, no weights
read f1 p1 <<EOF
$(ppl_tps 1 $M)
EOF
read f2 p2 <<EOF
$(ppl_tps 2 $M)
EOF
g0=$(gen_tps $M)
echo "## Packed llama-19m-en (.bq) vs float32, ctx 512, first $CH windows; generation: 128 tokens, 1 thread"
echo
echo "Process without weights: $(echo $overhead | awk '{printf "%.1f", $1/1e6}') MB (float32 model resident minus its weights)."
echo "Float parts (embedding, LM head, norms) stay float: bf16 in the file, float32 in memory."
echo
echo "| weights (acts) | bits/w ideal | file MB | file vs ideal + float parts | resident MB | resident vs ideal + float32 parts | ppl | tok/s 1T (vs fp32) | tok/s 2T (vs fp32) | generate tok/s (vs fp32) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
echo "| float32 (folder) | 32 | - | - | $(echo $base_rss | awk '{printf "%.1f", $1/1e6}') | - | $p1 | $f1 | $f2 | $g0 |"
echo "{\"setting\": \"fp32\", \"ppl\": $p1, \"tps_1t\": $f1, \"tps_2t\": $f2, \"gen_tps\": $g0, \"resident_bytes\": $base_rss}" >> $J
for s in mxfp4 nvfp4 int4_b32_sfp16 bfp4_b32 mxfp6_e2m3 mxint8 bfp8_b16 int8_b32_sfp16 mxfp8_e4m3 \
         "mxfp4:mxint8" "nvfp4:mxint8" "mxint8:mxint8" "bfp8_b16:bfp8_b16"; do
    w=${s%%:*}; a=${s#*:}; [ "$a" = "$s" ] && a=""
    f=$D/m.bq
    if [ -n "$a" ]; then $B quantize --model $M --wq $w --aq $a --out $f >/dev/null; label="$w ($a)"
    else $B quantize --model $M --wq $w --out $f >/dev/null; label="$w"; fi
    info=$($B info --model $f --json)
    ideal_bits=$(num "$info" packed_params | awk -v b="$(num "$info" bits_per_weight_ideal)" '{print $1 * b}')
    fp=$(num "$info" float_params); fb=$(num "$info" float_bytes); rss=$(num "$info" resident_bytes)
    bpw=$(num "$info" bits_per_weight_ideal)
    size=$(wc -c < $f)
    fvs=$(echo "$size $ideal_bits $fp $blobs" | awk '{printf "%.3f", $1 / ($2 / 8 + $3 * 2 + $4)}')
    rvs=$(echo "$rss $ideal_bits $fb $overhead" | awk '{printf "%.3f", $1 / ($2 / 8 + $3 + $4)}')
    read t1 q1 <<EOF
$(ppl_tps 1 $f)
EOF
    read t2 q2 <<EOF
$(ppl_tps 2 $f)
EOF
    g=$(gen_tps $f)
    echo "| $label | $bpw | $(echo $size | awk '{printf "%.2f", $1/1e6}') | ${fvs}x | $(echo $rss | awk '{printf "%.1f", $1/1e6}') | ${rvs}x | $q1 | $t1 ($(echo "$t1 $f1" | awk '{printf "%.2fx", $1/$2}')) | $t2 ($(echo "$t2 $f2" | awk '{printf "%.2fx", $1/$2}')) | $g ($(echo "$g $g0" | awk '{printf "%.2fx", $1/$2}')) |"
    echo "{\"setting\": \"$label\", \"bits_per_weight_ideal\": $bpw, \"file_bytes\": $size, \"file_vs_ideal\": $fvs, \"resident_bytes\": $rss, \"resident_vs_ideal\": $rvs, \"ppl\": $q1, \"tps_1t\": $t1, \"tps_2t\": $t2, \"gen_tps\": $g}" >> $J
done
