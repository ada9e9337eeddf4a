#!/bin/sh
# CPU decoding beside llama.cpp on the same GGUF files (issue 22): the bundled model exported
# as F32, Q8_0 and Q4_0 (the LM head and embedding in the same type), llama-bench's tg128
# (-p 0 -n 128 -r 1) against blockq generate -n 128, at 1 and 2 threads, in ROUNDS (9)
# interleaved rounds; the ratio is the median of the rounds' ratios. For the quantised
# files blockq also runs llama.cpp's arithmetic: activations quantised to q8_0 before every
# product (--aq q8_0, and the head's through a config), the integer (VNNI) path.
#   sh bench/decode_cpu.sh   -> bench/decode_cpu.jsonl and a Markdown table on stdout
# llama.cpp as it builds for this CPU (-march=native): the build `make interop` makes on CPUs
# without AMX, else one made here once (on AMX CPUs interop's own build leaves AMX out, and
# llama.cpp decodes Q8_0/Q4_0 1.3-1.6x faster with it: bench/RESULTS.md, eighth session).
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
SRC=$(ls "${BQ_SHARED:-../shared}"/peers/llama.cpp-*.tar.xz 2>/dev/null | head -1)
[ -n "$SRC" ] || { echo "SKIP: no llama.cpp source in ../shared/peers"; exit 0; }
C=${BQ_PEER_CACHE:-$HOME/.cache/blockq}/$(basename "$SRC" .tar.xz)
L=$C/build/bin
if [ ! -x "$L/llama-bench" ]; then
    echo "building llama-bench (native) in $C (once; a few minutes)" >&2
    rm -rf "$C" && mkdir -p "$C" && tar xJf "$SRC" -C "$C" || exit 1
    [ -f "$C/CMakeLists.txt" ] || { d=$(ls -d "$C"/*/ | head -1); mv "$d"* "$C"/; }
    (cmake -B "$C/build" -S "$C" -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release &&
     cmake --build "$C/build" -j"$(nproc)" --target llama-bench) >"$C/build.log" 2>&1 || { echo "llama.cpp build failed ($C/build.log)"; exit 1; }
fi
J=bench/decode_cpu.jsonl
R=${ROUNDS:-9}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
: >"$J"
# This VM's speed drifts by 2x within minutes (other tenants): each round runs llama-bench
# (-r 1) and both blockq settings back to back, and the ratios are taken per round before
# the median, so that drift cancels; the tok/s columns are medians over the rounds.
echo "| file | threads | llama.cpp tok/s | blockq tok/s (float activations) | blockq / llama.cpp | blockq, activations q8_0 | / llama.cpp |"
echo "|---|---|---|---|---|---|---|"
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "null" }'; }
for f in f32 q8_0 q4_0; do
    printf '"lm_head" = { w = "%s" }\n' $f >"$T/head.toml"
    printf '"lm_head" = { a = "q8_0" }\n' >"$T/heada.toml"
    $B quantize --model $M --wq $f --emb $f --config "$T/head.toml" --out "$T/$f.gguf" >/dev/null 2>&1 || { echo "| $f | export failed | | | |"; continue; }
    for t in 1 2; do
        gen() { $B generate --model "$T/$f.gguf" --prompt "The" -n 128 --threads $t --json "$@" 2>/dev/null |
                sed -n 's/.*"gen_tokens_per_second": \([0-9.]*\).*/\1/p'; }
        lcs=""; bqs=""; bq8s=""; r1=""; r8=""
        for r in $(seq $R); do
            lc=$("$L/llama-bench" -m "$T/$f.gguf" -p 0 -n 128 -t $t -r 1 -o csv 2>/dev/null | tail -1 |
                 awk -F, '{ gsub(/"/, "", $(NF-1)); print $(NF-1) }')
            bq=$(gen)
            bq8=""
            [ $f != f32 ] && bq8=$(gen --aq q8_0 --config "$T/heada.toml")
            [ -n "$lc" ] || continue
            lcs="$lcs $lc"; bqs="$bqs $bq"; bq8s="$bq8s $bq8"
            r1="$r1 $(awk -v a="$bq" -v b="$lc" 'BEGIN { if (a > 0 && b > 0) printf "%.4f", a / b }')"
            [ -n "$bq8" ] && r8="$r8 $(awk -v a="$bq8" -v b="$lc" 'BEGIN { if (a > 0 && b > 0) printf "%.4f", a / b }')"
        done
        lc=$(echo $lcs | med); bq=$(echo $bqs | med); bq8=$(echo $bq8s | med); x1=$(echo $r1 | med); x8=$(echo $r8 | med)
        printf '{"file": "%s", "threads": %d, "rounds": %d, "llama_cpp_tg128": %s, "blockq_tg128": %s, "blockq_q8_0_act_tg128": %s, "ratio": %s, "ratio_q8_0_act": %s}\n' \
            $f $t $R "$lc" "$bq" "$bq8" "$x1" "$x8" >>"$J"
        awk -v f=$f -v t=$t -v a="$lc" -v b="$bq" -v c="$bq8" -v x="$x1" -v y="$x8" 'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2fx | %s | %s |\n", f, t, a, b, x,
            (c == "null" ? "-" : sprintf("%.1f", c)), (y == "null" ? "-" : sprintf("%.2fx", y)) }'
    done
done
