#!/bin/sh
# Two blockq builds decoding the same GGUF file side by side (how this session's CPU decoding
# changes were measured, bench/RESULTS.md tenth session): ROUNDS (11) rounds of old, new,
# llama-bench -r 1 (when built), new again; prints the median of the rounds' new/old and
# new/llama.cpp ratios, so that the machine's drift between rounds cancels.
#   OLD=/path/to/old/blockq sh bench/decode_ab.sh FILE.gguf THREADS [blockq options...]
# e.g. OLD=/tmp/old/build/blockq sh bench/decode_ab.sh /tmp/q4_0.gguf 1 --aq q8_0 --config head.toml
f=$1; t=$2; shift 2
[ -n "$OLD" ] && [ -f "$f" ] || { echo "usage: OLD=old-blockq sh bench/decode_ab.sh FILE.gguf THREADS [options]"; exit 2; }
NEW=${NEW:-build/blockq}
L=$(ls -d ${BQ_PEER_CACHE:-$HOME/.cache/blockq}/llama.cpp-*/build/bin 2>/dev/null | grep -v noamx | head -1)
g() { b=$1; shift; "$b" generate --model "$f" --prompt The -n 128 --threads "$t" --json "$@" 2>/dev/null | sed -n 's/.*"gen_tokens_per_second": \([0-9.]*\).*/\1/p'; }
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
ro=""; rl=""
for i in $(seq ${ROUNDS:-11}); do
    o=$(g "$OLD" "$@"); n=$(g "$NEW" "$@")
    ro="$ro $(awk -v a="$n" -v b="$o" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b }')"
    [ -x "$L/llama-bench" ] || continue
    lc=$("$L/llama-bench" -m "$f" -p 0 -n 128 -t "$t" -r 1 -o csv 2>/dev/null | tail -1 | awk -F, '{ gsub(/"/, "", $(NF-1)); print $(NF-1) }')
    n2=$(g "$NEW" "$@")
    rl="$rl $(awk -v a="$n2" -v b="$lc" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b }')"
done
echo "new / old: $(echo $ro | med)  [$ro ]"
[ -n "$rl" ] && echo "new / llama.cpp: $(echo $rl | med)  [$rl ]"
