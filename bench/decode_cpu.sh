#!/bin/sh
# CPU decoding beside llama.cpp on the same GGUF files (issue 22): the bundled model exported
# as F32, Q8_0 and Q4_0 (the LM head and embedding in the same type), llama-bench's tg128
# (-p 0 -n 128, 3 repetitions, its mean) against blockq generate -n 128 (3 runs, the median),
# at 1 and 2 threads, alternating so that both see the same machine state.
#   sh bench/decode_cpu.sh   -> bench/decode_cpu.jsonl and a Markdown table on stdout
# Needs llama.cpp built by `make interop` (BQ_PEER_CACHE, default ~/.cache/blockq).
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
L=$(ls -d "${BQ_PEER_CACHE:-$HOME/.cache/blockq}"/llama.cpp-*/build/bin 2>/dev/null | head -1)
[ -x "$L/llama-bench" ] || { echo "SKIP: llama-bench not built (run make interop first)"; exit 0; }
J=bench/decode_cpu.jsonl
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
: >"$J"
echo "| file | threads | llama.cpp tok/s | blockq tok/s | blockq / llama.cpp |"
echo "|---|---|---|---|---|"
for f in f32 q8_0 q4_0; do
    printf '"lm_head" = { w = "%s" }\n' $f >"$T/head.toml"
    $B quantize --model $M --wq $f --emb $f --config "$T/head.toml" --out "$T/$f.gguf" >/dev/null 2>&1 || { echo "| $f | export failed | | | |"; continue; }
    for t in 1 2; do
        lc=$("$L/llama-bench" -m "$T/$f.gguf" -p 0 -n 128 -t $t -r 3 -o csv 2>/dev/null | tail -1 | awk -F, '{ gsub(/"/, "", $(NF-1)); print $(NF-1) }')
        bq=$(for r in 1 2 3; do $B generate --model "$T/$f.gguf" --prompt "The" -n 128 --threads $t --json 2>/dev/null |
             sed -n 's/.*"gen_tokens_per_second": \([0-9.]*\).*/\1/p'; done | sort -n | sed -n 2p)
        printf '{"file": "%s", "threads": %d, "llama_cpp_tg128": %s, "blockq_tg128": %s}\n' $f $t "${lc:-null}" "${bq:-null}" >>"$J"
        awk -v f=$f -v t=$t -v a="$lc" -v b="$bq" 'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2fx |\n", f, t, a, b, (a > 0 ? b / a : 0) }'
    done
done
