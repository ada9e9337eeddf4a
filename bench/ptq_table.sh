#!/bin/sh
# The --ptq table of docs/quantisation.md: each weight format with round-to-nearest and with
# calibrated clipping, perplexity and KL divergence from the float model on the same windows.
#   sh bench/ptq_table.sh [CHUNKS]      -> bench/ptq.jsonl and a Markdown table on stdout
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
C=${1:-20}
J=bench/ptq.jsonl
: >"$J"
echo "| W format | ptq | ppl | KLD mean | KLD p99 | top-1 agreement |"
echo "|---|---|---|---|---|---|"
for f in q4_0 int4_b32_sfp16 nvfp4 int4_g128 bfp4_b16 mxfp4; do
    for p in none clip; do
        line=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 512 --chunks "$C" --wq $f --ptq $p --kld --json 2>/dev/null | tail -1)
        [ -n "$line" ] || { echo "| $f | $p | FAILED | | | |"; continue; }
        printf '{"format": "%s", "ptq": "%s", "result": %s}\n' $f $p "$line" >>"$J"
        echo "$line" | python3 -c "import json,sys; r=json.load(sys.stdin); print('| $f | $p | %.2f | %.5f | %.4f | %.2f%% |' % (r['ppl'], r['kld_mean'], r['kld_p99'], 100 * r['top1_agreement']))"
    done
done
