#!/bin/sh
# The seed grid on the bundled LAMBADA-style task (issue 19): cloze accuracy and
# target perplexity per weight/activation format, the first LIMIT items (all 1,416 by
# default). Prints a Markdown table and writes bench/eval_grid.jsonl.
#   sh bench/eval_grid.sh [LIMIT]
B=${B:-build/blockq}
L=${1:-0}
J=bench/eval_grid.jsonl
: >"$J"
printf '| W/A | items | acc (greedy last word) | target ppl | seconds |\n|---|---|---|---|---|\n'
for s in fp32 fixed8.4 fixed6.3 fp8_e4m3:sat fp6_e3m2 bfp8_b16 bfp6_b16 bfp5_b16 bfp4_b16 bme4m3_b16 bme2m3_b16 \
         bl8_b16 bl6_b16 mxint8 mxfp8_e4m3 mxfp6_e2m3 mxfp4 nvfp4 int8_row int4_g128/fp32; do
    w=${s%/*}; a=${s#*/}
    q="--wq $w --aq $a"; [ "$s" = fp32 ] && q=""
    out=$($B eval --model models/llama-19m-en --tasks data/tasks/lambada-wikitext2-test.jsonl --limit "$L" $q --json 2>&1)
    line=$(printf '%s\n' "$out" | grep '"task"')
    if [ -z "$line" ]; then printf '| %s | failed: %s | | | |\n' "$s" "$(printf '%s' "$out" | tail -1)"; continue; fi
    it=$(echo "$line" | sed -n 's/.*"items": \([0-9]*\).*/\1/p'); acc=$(echo "$line" | sed -n 's/.*"acc": \([0-9.]*\).*/\1/p')
    se=$(echo "$line" | sed -n 's/.*"acc_stderr": \([0-9.]*\).*/\1/p'); ppl=$(echo "$line" | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
    sec=$(echo "$line" | sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p')
    printf '| %s | %s | %.4f +- %.4f | %.1f | %.1f |\n' "$s" "$it" "$acc" "$se" "$ppl" "$sec"
    printf '{"setting": "%s", "items": %s, "acc": %s, "acc_stderr": %s, "ppl": %s, "seconds": %s}\n' "$s" "$it" "$acc" "$se" "$ppl" "$sec" >>"$J"
done
