#!/bin/sh
# Synthesised cost of each format's block dot product (docs/cost-model.md, "From synthesis"):
# generate, check bit-exactly in Icarus Verilog, synthesise with Yosys (2-input gates and
# iCE40 LUTs); the hand-counted model beside it, and the rank agreement of the two.
#   sh bench/rtl_table.sh            -> bench/rtl.jsonl, a Markdown table on stdout
# Two formats are synthesised at a time (JOBS=2). Results are cached per module in build/rtl
# (a module whose text did not change is not synthesised again).
B=${B:-build/blockq}
D=${D:-build/rtl}
J=bench/rtl.jsonl
JOBS=${JOBS:-2}
# the seed grid's formats (bl8_b16 the generator refuses by name: a 260-bit exact accumulator),
# the 8-bit baselines (mxint8 per block of 32; int8_row: its float32 row scale outside the lanes)
# and the float FMA baselines (fp32, bf16: one fused multiply-add a lane into float32)
SET=${SET:-"fp32 bf16 int8_row fixed8.4 fixed6.3 fp8_e4m3:sat fp6_e3m2 bfp8_b16 bfp6_b16 bfp5_b16 bfp4_b16 bme4m3_b16 bme2m3_b16 bl6_b16 mxint8 mxfp8_e4m3 mxfp6_e2m3 mxfp4 nvfp4"}
mkdir -p "$D"
one() {
    f=$1; o="$D/$(echo "$f" | tr ':' '_')"
    r=$($B rtl "$f" --out "$o" --check --synth --json 2>"$o.err" | tail -1)
    c=$($B cost --formats "$f" --json 2>/dev/null | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)[0]))")
    if [ -n "$r" ] && [ -n "$c" ]; then printf '{"format": "%s", "rtl": %s, "model": %s}\n' "$f" "$r" "$c" >"$o.row"
    else echo "FAILED: $f ($(cat "$o.err"))" >&2; rm -f "$o.row"; fi
}
start=$(date +%s)
set -- $SET
while [ $# -gt 0 ]; do
    n=0
    while [ $# -gt 0 ] && [ $n -lt "$JOBS" ]; do one "$1" & n=$((n + 1)); shift; done
    wait
done
echo "synthesis: $(( $(date +%s) - start )) s for $(echo $SET | wc -w) formats, $JOBS at a time" >&2
: >"$J"
for f in $SET; do cat "$D/$(echo "$f" | tr ':' '_').row" >>"$J" 2>/dev/null; done
python3 - "$J" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def rank(v):
    o = sorted(range(len(v)), key=lambda i: v[i]); r = [0.0] * len(v); i = 0
    while i < len(o):
        j = i
        while j + 1 < len(o) and v[o[j + 1]] == v[o[i]]: j += 1
        for k in range(i, j + 1): r[o[k]] = (i + j) / 2.0
        i = j + 1
    return r
def spearman(a, b):
    ra, rb = rank(a), rank(b); n = len(a); ma = sum(ra) / n; mb = sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
by = {r["format"]: r for r in rows}
per = lambda r: r["rtl"]["area"] / r["rtl"]["lanes"]
lut = lambda r: r["rtl"]["ice40_luts"] / r["rtl"]["lanes"]
base, f32 = by["mxint8"], by.get("fp32")
# A block format's result (acc * 2^ex, or with its minifloat scale) still goes into a float32
# accumulator once a block: about one bf16 FMA's area (a short significand into float32), shared
# by the block's lanes. Element formats and per-row/group integer lanes keep summing exactly.
acc = per(by["bf16"]) if "bf16" in by else 0
fma = lambda r: r["rtl"]["fma"]
blk = lambda r: per(r) + (acc / r["rtl"]["block"] if r["rtl"]["block"] else 0)
print("| format | bits/elem | accumulator | cells | area / lane | iCE40 LUT4 / lane | depth | hand MAC area (FA) | "
      "density vs mxint8: synth | hand | vs fp32 FMA: synth | synth, + float32 add per block | hand |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r["model"]; x = r["rtl"]
    v32 = "%.1fx | %.1fx" % (per(f32) / per(r), per(f32) / blk(r)) if f32 else "- | -"
    print("| %s | %.3f | %s | %d | %.1f | %.1f | %d | %.1f | %.2fx | %.2fx | %s | %.1fx |" % (r["format"], m["bits_per_element"],
          "fp32 FMA" if fma(r) else "%d-bit exact" % x["acc_bits"], x["cells"], per(r), lut(r), x["depth"], m["mac_area_fa"],
          per(base) / per(r), base["model"]["mac_area_fa"] / m["mac_area_fa"], v32, m["arith_density"]))
print()
def rho(sel, what):
    s = [r for r in rows if sel(r)]
    return "%.3f (%d formats)" % (spearman([r["model"]["mac_area_fa"] for r in s], [what(r) for r in s]), len(s))
grid = lambda r: r["format"] != "bf16"  # the seed grid's formats (sweep's default list) that the generator expresses
print("Spearman rank correlation of the hand MAC area with the synthesised area per lane: seed grid %s; "
      "its 4- to 8-bit formats %s. With iCE40 LUTs per lane: seed grid %s; 4- to 8-bit %s." %
      (rho(grid, per), rho(lambda r: grid(r) and not fma(r), per), rho(grid, lut), rho(lambda r: grid(r) and not fma(r), lut)))
PY
