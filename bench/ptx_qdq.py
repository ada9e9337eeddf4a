"""Instructions of the fake-quantisation kernels' paths, counted in PTX (no GPU needed).
    python3 bench/ptx_qdq.py [--json FILE]
For each case, a copy of src/cuda/qdq.cu with the branches that case never takes
removed (the edits below: `if (false && ...)`, or a fallback replaced by 0) is compiled
to PTX for sm_90a with the Makefile's flags, and the instructions of the case's kernel
are counted, `mov`s left out (most vanish in ptxas). Every instruction a kernel still
holds is counted once, so the number is a static proxy for the path: branches of
block_scale for other schemes stay in, loops count once, and PTX's div.rn.f32 is one
instruction where the machine runs about ten (counted apart). The kernels handle 8
elements a thread (lanes8, levels8) or 4 a float4 (int groups): compare like with like."""
import os, re, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptx_loop import ROOT, ptx, write_json  # noqa: E402

SRC = open(os.path.join(ROOT, "src/cuda/qdq.cu")).read()

NO_LOG = ("    if (EV == 3 && f.sch == SCH_BL) {", "    if (false && EV == 3 && f.sch == SCH_BL) {")
NO_POW2 = ("} else if ((EV == 0 || EV == 2) && s.pow2", "} else if (false && (EV == 0 || EV == 2) && s.pow2")
NO_RCP = ("rcp && !s.pow2 &&\n                 recip_values<8>", "rcp && !s.pow2 && false &&\n                 recip_values<8>")
NO_GENERIC = ("#pragma unroll\n        for (int k = 0; k < 8; k++) e[k] = block_value(f, c, s, e[k], 8 * i + k);\n    }\n    y[2 * i]",
              "#pragma unroll\n        for (int k = 0; k < 8; k++) e[k] = 0.0f;\n    }\n    y[2 * i]")
NO_LEVELS_FALLBACK = ("for (int k = 0; k < 8; k++) e[k] = block_value(f, c, s, e[k], 8 * i + k);\n        }\n        y[2 * i]",
                      "for (int k = 0; k < 8; k++) e[k] = 0.0f;\n        }\n        y[2 * i]")
NO_GROUP_RCP = ("if (!ASYM && RND != BQ_ROUND_STOCHASTIC && rcp && !bad", "if (false && !ASYM && RND != BQ_ROUND_STOCHASTIC && rcp && !bad")
NO_GROUP_FALLBACK = ("    return int_value4(f, c, v, idx, s, z, bad);\n}", "    return make_float4(0.0f, 0.0f, 0.0f, 0.0f);\n}")

# (case, kernel's mangled prefix, edits)
CASES = [
    ("NVFP4 (or e4m3_b16_sbf16), per element (x / div)", "_Z10qdq_lanes8ILi16ELi0ELi0EE", [NO_LOG, NO_POW2, NO_RCP]),
    ("NVFP4 under 16384 values (or e4m3_b16_sbf16), x * (1 / div) checked", "_Z10qdq_lanes8ILi16ELi0ELi0EE",
     [NO_LOG, NO_POW2, NO_GENERIC]),
    ("NVFP4, levels' table", "_Z11qdq_levels8ILi16EE", [NO_LEVELS_FALLBACK]),
    ("int8_b32_sfp16, per element (x / div)", "_Z10qdq_lanes8ILi32ELi0ELi2EE", [NO_LOG, NO_POW2, NO_RCP]),
    ("int8_b32_sfp16, x * (1 / div) checked", "_Z10qdq_lanes8ILi32ELi0ELi2EE", [NO_LOG, NO_POW2, NO_GENERIC]),
    ("bl8_b16, block_value (block_elem)", "_Z10qdq_lanes8ILi16ELi0ELi3EE", [NO_LOG, NO_POW2]),
    ("bl8_b16, log_bits_elem", "_Z10qdq_lanes8ILi16ELi0ELi3EE", [NO_GENERIC]),
    ("int4_g128, team, x / s", "_Z12qdq_int_teamILi4ELi0ELi0EE", [NO_GROUP_RCP]),
    ("int4_g128, team, x * (1 / s) checked", "_Z12qdq_int_teamILi4ELi0ELi0EE", [NO_GROUP_FALLBACK]),
]


def count(edits, prefix):
    src = SRC
    for old, new in edits:
        if old not in src:
            sys.exit(f"edit not found (qdq.cu changed?): {old[:60]!r}")
        src = src.replace(old, new, 1)
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "qdq.cu"), "w") as f:
        f.write(src)
    text = ptx(os.path.join(d, "qdq.cu"))
    m = re.search(r"\.entry " + re.escape(prefix) + r"\S*\(", text)
    body = text[m.start():text.index("\n}\n", m.start())]
    ins = [s.strip() for s in body.split("\n")]
    ins = [s for s in ins if s and not s.startswith(("//", ".", "{", "}", "(", ")", "$")) and not s.endswith(":")]
    ops = [s.lstrip("@!%p0123456789 ").split()[0] for s in ins]
    return sum(1 for o in ops if not o.startswith("mov")), sum(1 for o in ops if o.startswith("div")), sum(1 for o in ops if o.startswith("bra"))


def main():
    rows = []
    print("| path | kernel | PTX instructions (no mov) | of which div | bra |")
    print("|---|---|---|---|---|")
    for label, prefix, edits in CASES:
        n, dv, br = count(edits, prefix)
        rows.append({"case": label, "kernel": prefix, "instructions": n, "div": dv, "bra": br})
        print(f"| {label} | {prefix} | {n} | {dv} | {br} |")
    write_json(rows)

if __name__ == "__main__":
    main()
