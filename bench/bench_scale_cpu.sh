#!/bin/sh
# A 7B-shaped checkpoint on this machine's CPUs (issue 15): info, ppl over one
# window of 128 and generation of 8 tokens, each with its wall time and peak
# resident memory against the checkpoint's size on disk. Writes bench/scale_cpu.jsonl
# and prints a Markdown table.
#   /usr/bin/python3 bench/make_random_model.py /tmp/r7b   (13.5 GB, once)
#   sh bench/bench_scale_cpu.sh /tmp/r7b
M=${1:-/tmp/r7b}
B=${B:-build/blockq}
J=bench/scale_cpu.jsonl
file=$(du -cb "$M"/*.safetensors | tail -1 | cut -f1)
: >"$J"
printf '| command | seconds | peak RSS GB | RSS / file (%s GB) | result |\n|---|---|---|---|---|\n' "$(awk -v f="$file" 'BEGIN { printf "%.2f", f / 1e9 }')"
run() {
    name=$1; shift
    /usr/bin/time -f "%e %M" -o /tmp/bq_time "$@" >/tmp/bq_out 2>/tmp/bq_err
    rc=$?
    read -r sec kb </tmp/bq_time
    res=$(grep -E "^ppl|resident" /tmp/bq_out | head -1; grep -o "generated.*" /tmp/bq_err | head -1)
    [ $rc -eq 0 ] || res="FAILED (exit $rc): $(tail -1 /tmp/bq_err)"
    ratio=$(echo "$kb * 1024 / $file" | bc -l)
    printf '| %s | %s | %.2f | %.3f | %s |\n' "$name" "$sec" "$(echo "$kb / 1048576" | bc -l)" "$ratio" "$res"
    printf '{"command": "%s", "seconds": %s, "peak_rss_bytes": %s, "file_bytes": %s, "rss_over_file": %.4f, "exit": %d}\n' \
        "$name" "$sec" "$((kb * 1024))" "$file" "$ratio" "$rc" >>"$J"
}
run "info" $B info --model "$M"
run "ppl --chunks 1 --ctx 128" $B ppl --model "$M" --text data/wikitext-2-test.txt --chunks 1 --ctx 128
run "generate -n 8" $B generate --model "$M" --prompt "In the beginning" -n 8
