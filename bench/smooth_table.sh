#!/bin/sh
# The SmoothQuant table of docs/quantisation.md: weight/activation formats with and without
# --ptq smoothquant (alpha 0.5), perplexity and KL divergence from the float model.
#   sh bench/smooth_table.sh [CHUNKS]   -> bench/smooth.jsonl and a Markdown table on stdout
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
C=${1:-20}
J=bench/smooth.jsonl
: >"$J"
echo "| W / A | ptq | ppl | KLD mean | top-1 agreement |"
echo "|---|---|---|---|---|"
for wa in int8/int8 int6/int6 mxint8/mxint8 bfp6_b16/bfp6_b16 int8_row/int8 int4_g128/int8; do
    w=${wa%/*} a=${wa#*/}
    for p in none smoothquant; do
        line=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 512 --chunks "$C" --wq $w --aq $a --ptq $p --kld --json 2>/dev/null | tail -1)
        [ -n "$line" ] || { echo "| $wa | $p | FAILED | | |"; continue; }
        printf '{"w": "%s", "a": "%s", "ptq": "%s", "result": %s}\n' $w $a $p "$line" >>"$J"
        echo "$line" | python3 -c "import json,sys; r=json.load(sys.stdin); print('| $wa | $p | %.2f | %.5f | %.2f%% |' % (r['ppl'], r['kld_mean'], 100 * r['top1_agreement']))"
    done
done
