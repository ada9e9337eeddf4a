#!/bin/sh
# Runs each test program given, then the CLI tests; prints one total line.
pass=0; fail=0; status=0
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -E 'FAIL|SKIP|passed' | head -50
    line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
    p=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/'); f=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    [ -n "$line" ] || { echo "$t: crashed or printed no summary (exit $rc)"; printf '%s\n' "$out" | tail -20; f=1; p=0; }
    [ $rc -eq 0 ] || status=1
    pass=$((pass + p)); fail=$((fail + f))
done
out=$(sh tests/cli_test.sh "$BUILD/blockq" 2>&1); rc=$?
printf '%s\n' "$out" | grep -E 'FAIL|SKIP|passed'
line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
pass=$((pass + $(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/')))
fail=$((fail + $(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
[ $rc -eq 0 ] || status=1
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && exit $status || exit 1
