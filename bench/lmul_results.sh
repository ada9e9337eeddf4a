#!/bin/sh
# Exact vs L-Mul products (issue 24) on the bundled model: perplexity over the first
# CHUNKS windows of 512 tokens of WikiText-2 test, weights and activations in the
# same format, and the time of each run (L-Mul cannot use SGEMM). Prints a Markdown
# table and writes bench/lmul.jsonl.
#   sh bench/lmul_results.sh [CHUNKS]
B=${B:-build/blockq}
C=${1:-20}
J=bench/lmul.jsonl
: >"$J"
printf '| W/A format | l(m) | exact ppl | L-Mul ppl | L-Mul vs exact | exact s | L-Mul s | time ratio |\n|---|---|---|---|---|---|---|---|\n'
for f in fp32 fp8_e4m3 fp8_e5m2 mxfp8_e4m3 mxfp8_e5m2 bfp8_b16 fp6_e2m3 fp6_e3m2 mxfp6_e2m3 mxfp6_e3m2 bme3m2_b16; do
    q="--wq $f --aq $f"; [ $f = fp32 ] && q=""
    e=$($B ppl --model models/llama-19m-en --text data/wikitext-2-test.txt --ctx 512 --chunks $C $q --json 2>&1 | tail -1)
    l=$($B ppl --model models/llama-19m-en --text data/wikitext-2-test.txt --ctx 512 --chunks $C $q --mul lmul --json 2>&1 | tail -1)
    pe=$(echo "$e" | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p'); se=$(echo "$e" | sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p')
    pl=$(echo "$l" | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p'); sl=$(echo "$l" | sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p')
    if [ -z "$pl" ]; then
        printf '| %s | - | %s | refused: %s | | %s | | |\n' "$f" "$pe" "$(echo "$l" | sed 's/^blockq ppl: //')" "$se"
        printf '{"format": "%s", "exact_ppl": %s, "lmul": null}\n' "$f" "$pe" >>"$J"
        continue
    fi
    lm=$(case $f in fp32) echo 4;; *e4m3|*e3m2|bme3m2*) echo "$(echo $f | sed 's/.*m\([0-9]\).*/\1/')";; *e5m2) echo 2;; *e2m3) echo 3;; esac)
    printf '| %s | %s | %.3f | %.3f | %+.2f%% | %.1f | %.1f | %.1fx |\n' "$f" "$lm" "$pe" "$pl" "$(echo "($pl / $pe - 1) * 100" | bc -l)" "$se" "$sl" "$(echo "$sl / $se" | bc -l)"
    printf '{"format": "%s", "exact_ppl": %s, "lmul_ppl": %s, "exact_seconds": %s, "lmul_seconds": %s}\n' "$f" "$pe" "$pl" "$se" "$sl" >>"$J"
done
