#!/bin/sh
# Runs each test program given, then the CLI tests; prints one total line.
pass=0; fail=0; status=0
for t in "$@"; do
    t0=$(date +%s)
    out=$("$t" 2>&1); rc=$?
    echo "TIME $(basename "$t"): $(( $(date +%s) - t0 )) s"
    printf '%s\n' "$out" | grep -E 'FAIL|SKIP|passed' | head -50
    line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
    p=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/'); f=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    [ -n "$line" ] || { echo "$t: crashed or printed no summary (exit $rc)"; printf '%s\n' "$out" | tail -20; f=1; p=0; }
    [ $rc -eq 0 ] || status=1
    pass=$((pass + p)); fail=$((fail + f))
done
# shell tests: the CLI, and libblockq.so (left out of the sanitizer tier, where a
# process without the sanitizer runtime cannot load it; Python likewise below)
run_shell() {
    t0=$(date +%s)
    out=$(sh "$1" "$2" 2>&1); rc=$?
    echo "TIME $(basename "$1"): $(( $(date +%s) - t0 )) s"
    printf '%s\n' "$out" | grep -E 'FAIL|SKIP|passed'
    line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
    [ -n "$line" ] || { echo "$1: printed no summary (exit $rc)"; line="0 passed, 1 failed"; }
    pass=$((pass + $(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/')))
    fail=$((fail + $(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
    [ $rc -eq 0 ] || status=1
}
run_shell tests/cli_test.sh "$BUILD/blockq"
run_shell tests/rtl_test.sh "$BUILD/blockq"
run_shell tests/mpi_test.sh "$BUILD/blockq"
[ -n "$BQ_SAN_TIER" ] || run_shell tests/lib_test.sh "$BUILD/libblockq.so"
# the Python package (python/): Debian's numpy and pytest belong to /usr/bin/python3
if [ -n "$BQ_SAN_TIER" ]; then
    echo "SKIP: sanitizer tier: libblockq.so and the Python package are tested in the optimised tier"
elif /usr/bin/python3 -c 'import numpy, pytest' 2>/dev/null; then
    out=$(BUILD=$BUILD BLOCKQ_LIB=$BUILD/libblockq.so /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider python/tests 2>&1); rc=$?
    printf '%s\n' "$out" | grep -E 'FAIL|SKIP|passed|failed|Error' | tail -20
    p=$(printf '%s\n' "$out" | tail -1 | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+'); f=$(printf '%s\n' "$out" | tail -1 | grep -oE '[0-9]+ (failed|error)' | grep -oE '[0-9]+' | head -1)
    [ -n "$p$f" ] || { echo "python: pytest printed no summary (exit $rc)"; f=1; }
    pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0}))
    [ $rc -eq 0 ] || status=1
else
    echo "SKIP: python3-numpy / python3-pytest not installed for /usr/bin/python3: the Python package is not tested"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && exit $status || exit 1
