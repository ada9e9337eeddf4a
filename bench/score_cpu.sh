#!/bin/sh
# Scoring speed beside llama.cpp on the same GGUF files (issue 22: "scoring stays >= 1.2x"):
# the bundled model exported as F32, Q8_0 and Q4_0 (LM head and embedding in the same type, as
# bench/decode_cpu.sh), WikiText-2 test, ctx 512, the first CHUNKS (16) windows, THREADS (2).
# llama-perplexity's prompt-eval tokens/s (its own timer, load excluded) against blockq ppl's
# tokens/s (--protocol llama.cpp, load excluded), ROUNDS (5) interleaved rounds, the median of
# the rounds' ratios (this VM's speed drifts). blockq runs its default arithmetic (float
# activations) and llama.cpp's (--aq q8_0 for the quantised files).
#   sh bench/score_cpu.sh   -> bench/score_cpu.jsonl and a Markdown table on stdout
# llama.cpp: the native build of bench/decode_cpu.sh's cache folder (llama-perplexity target).
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
S=${BQ_SHARED:-../shared}
TXT=$S/data/wikitext-2-test.txt
SRC=$(ls "$S"/peers/llama.cpp-*.tar.xz 2>/dev/null | head -1)
[ -n "$SRC" ] || { echo "SKIP: no llama.cpp source in $S/peers"; exit 0; }
C=${BQ_PEER_CACHE:-$HOME/.cache/blockq}/$(basename "$SRC" .tar.xz)
L=$C/build/bin
if [ ! -x "$L/llama-perplexity" ]; then
    [ -f "$C/CMakeLists.txt" ] || { echo "SKIP: run bench/decode_cpu.sh first (it builds llama.cpp in $C)"; exit 0; }
    echo "building llama-perplexity (native) in $C (once)" >&2
    cmake --build "$C/build" -j"$(nproc)" --target llama-perplexity >"$C/build-ppl.log" 2>&1 || { echo "build failed ($C/build-ppl.log)"; exit 1; }
fi
J=bench/score_cpu.jsonl
R=${ROUNDS:-5}
N=${CHUNKS:-16}
TH=${THREADS:-2}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
: >"$J"
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "null" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.4f", a / b }'; }
echo "| file | llama.cpp tok/s | blockq tok/s (float activations) | / llama.cpp | blockq, activations q8_0 | / llama.cpp |"
echo "|---|---|---|---|---|---|"
for f in f32 q8_0 q4_0; do
    printf '"lm_head" = { w = "%s" }\n' $f >"$T/head.toml"
    printf '"lm_head" = { a = "q8_0" }\n' >"$T/heada.toml"
    $B quantize --model $M --wq $f --emb $f --config "$T/head.toml" --out "$T/$f.gguf" >/dev/null 2>&1 || { echo "| $f | export failed | | | | |"; continue; }
    score() { $B ppl --model "$T/$f.gguf" --text "$TXT" --ctx 512 --chunks $N --threads $TH --protocol llama.cpp --json "$@" 2>/dev/null |
              sed -n 's/.*"tokens_per_second": \([0-9.]*\).*/\1/p'; }
    lcs=""; bqs=""; bq8s=""; r1=""; r8=""
    for r in $(seq $R); do
        # llama_perf_context_print: "prompt eval time = X ms / N tokens ( ... ms per token, Y tokens per second)"
        lc=$("$L/llama-perplexity" -m "$T/$f.gguf" -f "$TXT" -c 512 --chunks $N -t $TH 2>&1 |
             sed -n 's/.*prompt eval time.*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -1)
        bq=$(score)
        bq8=""
        [ $f != f32 ] && bq8=$(score --aq q8_0 --config "$T/heada.toml")
        [ -n "$lc" ] || continue
        lcs="$lcs $lc"; bqs="$bqs $bq"; bq8s="$bq8s $bq8"
        r1="$r1 $(ratio "$bq" "$lc")"
        [ -n "$bq8" ] && r8="$r8 $(ratio "$bq8" "$lc")"
    done
    lc=$(echo $lcs | med); bq=$(echo $bqs | med); bq8=$(echo $bq8s | med); x1=$(echo $r1 | med); x8=$(echo $r8 | med)
    printf '{"file": "%s", "threads": %d, "ctx": 512, "chunks": %d, "rounds": %d, "llama_cpp_tok_s": %s, "blockq_tok_s": %s, "blockq_q8_0_act_tok_s": %s, "ratio": %s, "ratio_q8_0_act": %s}\n' \
        $f $TH $N $R "$lc" "$bq" "$bq8" "$x1" "$x8" >>"$J"
    awk -v f=$f -v a="$lc" -v b="$bq" -v c="$bq8" -v x="$x1" -v y="$x8" 'BEGIN { printf "| %s | %.1f | %.1f | %.2fx | %s | %s |\n", f, a, b, x,
        (c == "null" ? "-" : sprintf("%.1f", c)), (y == "null" ? "-" : sprintf("%.2fx", y)) }'
done
