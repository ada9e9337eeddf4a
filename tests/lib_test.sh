#!/bin/sh
# libblockq.so: it exports only the bq_* API of include/blockq.h, and a program
# linked against it alone (no internal headers) runs.
L=${1:-build/libblockq.so}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL lib: $*"; }

[ -f "$L" ] || { echo "FAIL lib: $L not built"; echo "lib: 0 passed, 1 failed"; exit 1; }
nm -D --defined-only "$L" | awk '{print $3}' | grep -v -E '^(bq_|_init$|_fini$|_edata$|_end$|__bss_start$)' >"$T/extra"
[ ! -s "$T/extra" ] && ok || bad "exports beyond bq_*: $(head -5 "$T/extra" | tr '\n' ' ')"
n=$(nm -D --defined-only "$L" | awk '{print $3}' | grep -c '^bq_')
want=$(grep -c 'BQ_API [^#]*bq_[a-z_0-9]*(' include/blockq.h)
[ "$n" -eq "$want" ] && ok || bad "$n bq_ symbols exported, the header declares $want"
cat >"$T/use.c" <<'C'
#include "blockq.h"
#include <stdio.h>
#include <string.h>
int main(void)
{
    if (bq_version_number() != BQ_VERSION_MAJOR * 10000 + BQ_VERSION_MINOR * 100 + BQ_VERSION_PATCH) return 3;
    bq_format *f;
    if (bq_format_parse("mxfp4", &f)) return 4;
    float x[32], y[32];
    for (int i = 0; i < 32; i++) x[i] = (float)i / 7.0f;
    if (bq_qdq(f, x, y, 1, 32, NULL)) return 5;
    bq_format_free(f);
    printf("%s %g\n", bq_version(), y[31]);
    return bq_format_parse("mxfp3", &f) == BQ_ERR_FORMAT && strstr(bq_last_error(), "mxfp3") ? 0 : 6;
}
C
d=$(dirname "$L")
cc -Iinclude "$T/use.c" -L"$d" -l:libblockq.so -o "$T/use" 2>"$T/cc.err" && ok || bad "linking against the .so: $(cat "$T/cc.err")"
out=$(LD_LIBRARY_PATH="$d" "$T/use") && [ "$out" = "$(grep -o 'MAJOR [0-9]*' include/blockq.h | head -1 | cut -d' ' -f2).$(grep -o 'MINOR [0-9]*' include/blockq.h | head -1 | cut -d' ' -f2).$(grep -o 'PATCH [0-9]*' include/blockq.h | head -1 | cut -d' ' -f2) 4" ] &&
    ok || bad "program on the .so printed '$out' (exit $?)"
echo "lib: $pass passed, $fail failed"
[ $fail -eq 0 ]
