#!/bin/sh
# Synthesised cost of each format's block dot product (docs/cost-model.md, "From synthesis"):
# generate, check bit-exactly in Icarus Verilog, synthesise with Yosys (2-input gates and
# iCE40 LUTs); the hand-counted model beside it, and the rank agreement of the two.
#   sh bench/rtl_table.sh            -> bench/rtl.jsonl, a Markdown table on stdout
# Results are cached per module in build/rtl (a module whose text did not change is not
# synthesised again).
B=${B:-build/blockq}
D=${D:-build/rtl}
J=bench/rtl.jsonl
# the seed grid's formats the generator expresses (fp32, bl8_b16, int8_row and int4_g128 it
# refuses by name); mxint8 is the 8-bit per-block baseline
SET=${SET:-"fixed8.4 fixed6.3 fp8_e4m3:sat fp6_e3m2 bfp8_b16 bfp6_b16 bfp5_b16 bfp4_b16 bme4m3_b16 bme2m3_b16 bl6_b16 mxint8 mxfp8_e4m3 mxfp6_e2m3 mxfp4 nvfp4"}
mkdir -p "$D"
: >"$J"
for f in $SET; do
    r=$($B rtl "$f" --out "$D/$(echo $f | tr ':' '_')" --check --synth --json 2>/dev/null | tail -1)
    c=$($B cost --formats "$f" --json 2>/dev/null | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)[0]))")
    [ -n "$r" ] && [ -n "$c" ] && printf '{"format": "%s", "rtl": %s, "model": %s}\n' "$f" "$r" "$c" >>"$J" || echo "FAILED: $f" >&2
done
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
base = next(r for r in rows if r["format"] == "mxint8")
per = lambda r: r["rtl"]["area"] / r["rtl"]["lanes"]
lut = lambda r: r["rtl"]["ice40_luts"] / r["rtl"]["lanes"]
print("| format | bits/elem | acc bits | cells | area / lane | iCE40 LUT4 / lane | depth | hand MAC area (FA) | density vs mxint8: synth | hand |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r["model"]; x = r["rtl"]
    print("| %s | %.3f | %d | %d | %.1f | %.1f | %d | %.1f | %.2fx | %.2fx |" % (r["format"], m["bits_per_element"], x["acc_bits"], x["cells"],
          per(r), lut(r), x["depth"], m["mac_area_fa"], per(base) / per(r), base["model"]["mac_area_fa"] / m["mac_area_fa"]))
print()
print("Spearman rank correlation, hand MAC area vs synthesised area per lane: %.3f; vs iCE40 LUTs per lane: %.3f (%d formats)" %
      (spearman([r["model"]["mac_area_fa"] for r in rows], [per(r) for r in rows]),
       spearman([r["model"]["mac_area_fa"] for r in rows], [lut(r) for r in rows]), len(rows)))
PY
