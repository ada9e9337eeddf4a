#!/bin/sh
# Generated Verilog (blockq rtl): every family simulates bit-exactly against the library's
# vectors (Icarus Verilog), a corrupted decoder is caught, refusals name their reason,
# synthesis reports its cost (Yosys). RTL_ALL=1: every format (make rtl-check).
B=${1:-build/blockq}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL rtl: $*"; }
if ! command -v iverilog >/dev/null 2>&1; then
    echo "SKIP: iverilog is not installed (Debian package iverilog): the generated Verilog is not simulated"
    echo "rtl: 0 passed, 0 failed"; exit 0
fi
SET="mxfp4 mxint8 nvfp4 bfp6_b16 bfp3_b16 bme2m3_b16 bl4_b16 fp8_e4m3 fp8_e5m2 fp6_e2m3 fixed6.3 log6 q4_0 int8_b32_sfp16 e4m3_b16_sbf16 int8_row int4_g128"
[ -n "$RTL_ALL" ] && SET=$($B formats | awk 'NR > 1 {print $1}')
gen=0; refused=0
for f in $SET; do
    if out=$($B rtl "$f" --out "$T/$f" --check --vectors 500 2>&1); then
        echo "$out" | grep -q "500 vectors bit-exact" && ok || bad "$f: $out"; gen=$((gen + 1))
    elif [ -n "$RTL_ALL" ] && echo "$out" | grep -qE "decodes elements of up to 8 bits|zero points|generator stops at"; then
        refused=$((refused + 1))
    else bad "$f: $out"; fi
done
[ -n "$RTL_ALL" ] && echo "rtl: $gen formats generated and bit-exact, $refused refused by name"
for p in "mxfp4 --a mxint8" "int4_b32_sfp16 --a mxint8" "fp8_e4m3 --a bfp6_b16" "mxfp4 --pipeline" "nvfp4 --a nvfp4 --pipeline"; do
    $B rtl $p --out "$T/pair" --check --vectors 300 2>&1 | grep -q "300 vectors bit-exact" && ok || bad "$p"
done
# the float baselines: chains of fused multiply-adds against C's fmaf
for p in "fp32" "bf16" "fp16" "bf16 --a fp32"; do
    $B rtl $p --lanes 3 --out "$T/fma" --check --vectors 1000 2>&1 | grep -q "1000 vectors bit-exact against the C library's fmaf" && ok || bad "fma $p"
done
# ... and the testbench catches rounding that truncates ties (round half down instead of to even)
sed "s/(rb \& (st | q\[0\]))/(rb \& st)/" "$T/fma/bq_fma_bf16_fp32.v" >"$T/fma/m.v"
cmp -s "$T/fma/m.v" "$T/fma/bq_fma_bf16_fp32.v" && bad "the FMA mutation did not apply" || ok
(cd "$T/fma" && iverilog -g2005 -o m.sim m.v bq_fma_bf16_fp32_tb.v && vvp -n m.sim) | grep -q "^FAIL" && ok ||
    bad "an FMA that rounds ties wrongly passed the testbench"
# the testbench catches a wrong decoder entry: mxfp4's 6.0 (code 7: m 3, e 2) made 2.0
$B rtl mxfp4 --out "$T/mut" >/dev/null 2>&1
sed -i "s/4'd7: dec_w = {1'b0, 1'b0, 2'd2, 2'd3};/4'd7: dec_w = {1'b0, 1'b0, 2'd2, 2'd1};/" "$T/mut/bq_dot_mxfp4_mxfp4.v"
grep -q "4'd7: dec_w = {1'b0, 1'b0, 2'd2, 2'd1};" "$T/mut/bq_dot_mxfp4_mxfp4.v" && ok || bad "the mutation did not apply"
(cd "$T/mut" && iverilog -g2005 -o m.sim bq_dot_mxfp4_mxfp4.v bq_dot_mxfp4_mxfp4_tb.v && vvp -n m.sim) | grep -q "^FAIL" && ok ||
    bad "a corrupted decoder passed the testbench"
# refusals by name, exit 2, no module written
expect() {
    msg=$1; shift
    "$@" >"$T/o" 2>"$T/e"; rc=$?
    [ $rc -eq 2 ] && grep -q -- "$msg" "$T/e" && ok || bad "'$*': exit $rc, said '$(cat "$T/e")', expected '$msg'"
}
expect "zero points" $B rtl int4_asym_g128 --out "$T/r1"
expect "combinational only" $B rtl fp32 --pipeline --out "$T/r2"
expect "not an IEEE float of 16 or 32 bits" $B rtl bf16 --a mxfp4 --out "$T/r6"
expect "do not pair" $B rtl bfp4_b16 --a mxint8 --out "$T/r3"
expect "one whole block of 32" $B rtl mxfp4 --lanes 16 --out "$T/r4"
expect "unknown format" $B rtl nosuch --out "$T/r5"
[ ! -e "$T/r1" ] && [ ! -e "$T/r4" ] && [ ! -e "$T/r6" ] && ok || bad "a refused design left a folder"
# synthesis: a small module, then the cached result
if command -v yosys >/dev/null 2>&1; then
    a=$($B rtl fixed4.2 --lanes 4 --out "$T/syn" --synth --json 2>&1 | tail -1)
    echo "$a" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["cells"] > 10 and r["ice40_luts"] > 4 and r["depth"] > 2 and r["area"] > 0, r' && ok ||
        bad "synthesis of fixed4.2: $a"
    b=$($B rtl fixed4.2 --lanes 4 --out "$T/syn" --synth --json 2>&1 | tail -1)
    [ "$a" = "$b" ] && ok || bad "the cached synthesis differs: $a / $b"
    # cost --synth: the synthesised area beside the hand model (mxint8 the reference: 1x); refused formats get none
    BQ_RTL_CACHE="$T/cache" $B cost --formats mxint8,bl8_b16 --synth --json >"$T/cost.json" 2>"$T/cost.err" &&
    /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert abs(r[0]["synth_density_vs_mxint8"] - 1) < 1e-9 and r[0]["synth_area_lane"] > 0 and "synth_area_lane" not in r[1], r' "$T/cost.json" &&
        ok || bad "cost --synth: $(cat "$T/cost.json" "$T/cost.err")"
else
    echo "SKIP: yosys is not installed (Debian package yosys): synthesis is not run"
fi
echo "rtl: $pass passed, $fail failed"
[ $fail -eq 0 ]
