#!/bin/sh
# A long fuzz run, each target for its own time (sized to pass 10 million executions
# on a 2-core VM); prints a Markdown table of executions. Run `make fuzz FUZZ_SECONDS=1` first to build.
set -e
printf '| target | seconds | executions | exec/s | new corpus units | crashes |\n|---|---|---|---|---|---|\n'
for spec in ${FUZZ_SPECS:-format:300 safetensors:120 config:100 tokenizer_json:540 tokenize:900 toml:120}; do
    t=${spec%%:*}; s=${spec#*:}
    mkdir -p build/fuzz/corpus/$t
    if build/fuzz/fuzz_$t -max_total_time=$s -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=build/fuzz/crash-$t- -print_final_stats=1 build/fuzz/corpus/$t fuzz/seeds/$t \
        2>build/fuzz/$t.long.log; then c=0; else c="yes: see build/fuzz/crash-$t-*"; fi
    ex=$(grep number_of_executed_units build/fuzz/$t.long.log | awk '{print $2}')
    ps=$(grep average_exec_per_sec build/fuzz/$t.long.log | awk '{print $2}')
    nu=$(grep new_units_added build/fuzz/$t.long.log | awk '{print $2}')
    printf '| fuzz_%s | %s | %s | %s | %s | %s |\n' "$t" "$s" "$ex" "$ps" "$nu" "$c"
done
