"""Instructions in the packed GEMVs' main loops, counted in PTX (no GPU needed).
    python3 bench/ptx_loop.py [--json FILE]
Compiles src/cuda/gemv.cu to PTX for sm_90a (nvcc -ptx, the Makefile's flags) and,
for each tensor-core GEMV instantiation at one token (n8 block 1, unsplit), counts
the instructions of its loop over 64-column tiles: the loop whose back edge closes
the most MMAs. A warp's tile is 2 row groups x 16 rows x 64 columns (2048
weights). PTX is before ptxas's register allocation and scheduling, so `mov`s are
left out of the total (most vanish) and the count is a proxy for the SASS the
machine issues, not the SASS itself (this machine has no cuobjdump). The bound it
speaks to: an H200 issues about 132 SMs x 4 warps x 1.98 GHz = 1.05e12 warp
instructions a second, so a loop needs >= 4.1 weight bytes an instruction to keep
up with 4.3 TB/s at perfect issue."""
import collections, json, os, re, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = os.environ.get("NVCC") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), "nvcc")
# (label, mangled prefix, weight bytes of a warp's tile: codes + scales)
CASES = [
    ("MXFP4, fp16 path", "_Z7gemv_tcILi1ELi32ELi1ELi1ELb0E", 2048 // 2 + 2 * 16 * 2),
    ("MXFP4, int8 path", "_Z7gemv_i8ILi4ELi32ELi1ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 2),
    ("NVFP4, fp16 path", "_Z7gemv_tcILi1ELi16ELi1ELi1ELb0E", 2048 // 2 + 2 * 16 * 4),
    ("NVFP4, int8 path", "_Z7gemv_i8ILi4ELi16ELi1ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 4),
    ("int4_g128, fp16 path", "_Z7gemv_tcILi2ELi64ELi4ELi1ELb0E", 2048 // 2 + 2 * 16 * 2),
    ("int4_g128, int8 path (slots' tables)", "_Z7gemv_i8ILi4ELi64ELi4ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 2),
    ("int4_g128, int8 path (offset nibbles)", "_Z7gemv_i8ILi5ELi64ELi4ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 2),
    ("int4_b32_sfp16 (q4_0), int8 path (slots' tables)", "_Z7gemv_i8ILi4ELi32ELi2ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 4),
    ("int4_b32_sfp16 (q4_0), int8 path (offset nibbles)", "_Z7gemv_i8ILi5ELi32ELi2ELi1ELb0ELb0E", 2048 // 2 + 2 * 16 * 4),
    ("MXINT8, int8 path", "_Z7gemv_i8ILi8ELi32ELi1ELi1ELb0ELb0E", 2048 + 2 * 16 * 2),
    ("MXFP6 e2m3, fp16 path (table)", "_Z7gemv_tcILi3ELi32ELi1ELi1ELb0E", 2048 * 6 // 8 + 2 * 16 * 2),
    ("MXFP6 e2m3, fp16 path (by bits)", "_Z7gemv_tcILi6ELi32ELi1ELi1ELb0E", 2048 * 6 // 8 + 2 * 16 * 2),
    ("MXFP6 e3m2, fp16 path (by bits)", "_Z7gemv_tcILi7ELi32ELi1ELi1ELb0E", 2048 * 6 // 8 + 2 * 16 * 2),
]


def ptx(src=f"{ROOT}/src/cuda/gemv.cu"):
    """src compiled to PTX for sm_90a with the Makefile's flags (bench/ptx_qdq.py too)"""
    out = os.path.join(tempfile.mkdtemp(), "out.ptx")
    inc = [f"-I{ROOT}/{d}" for d in ("include", "src/core", "src/formats", "src/kernels", "src/cuda", "src/model", "src/engine", "src/train")]
    subprocess.run([NVCC, "-O3", "-std=c++17", "--fmad=false", "-gencode=arch=compute_90a,code=compute_90a", *inc, "-ptx",
                    src, "-o", out], check=True)
    return open(out).read()


def write_json(rows):
    """rows as JSON lines to the file after --json, if given"""
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def loop_of(func):
    """The instructions of the loop closing the most mma.sync (labels to back edge)."""
    blocks = collections.OrderedDict(entry=[])
    cur = "entry"
    for line in func.split("\n"):
        s = line.strip()
        if re.match(r"^\$L__BB\S+:$", s):
            cur = s[:-1]
            blocks[cur] = []
        elif s and not s.startswith(("//", ".", "{", "}", "(", ")")):
            blocks[cur].append(s)
    labels, best = list(blocks), None
    for i, lab in enumerate(labels):
        for j in range(i, len(labels)):
            if any(re.search(r"bra(\.uni)?\s+" + re.escape(lab) + ";", x) for x in blocks[labels[j]]):
                body = [x for k in range(i, j + 1) for x in blocks[labels[k]]]
                mma = sum("mma.sync" in x for x in body)
                if mma and (best is None or mma > best[0]):
                    best = (mma, body)
    return best


def main():
    text = ptx()
    funcs = {m.group(1): f for f in re.split(r"\n(?=\.visible \.entry|\.entry)", text)
             for m in [re.match(r"(?:\.visible )?\.entry (\S+)\(", f)] if m}
    rows = []
    print("| GEMV loop (1 token) | PTX instructions a tile, without mov | of which mma | weight bytes an instruction |")
    print("|---|---|---|---|")
    for label, prefix, wbytes in CASES:
        name = next((n for n in funcs if n.startswith(prefix)), None)
        found = loop_of(funcs[name]) if name else None
        if not found:
            print(f"| {label} | not found | | |")
            continue
        mma, body = found
        ops = [x.lstrip("@!%p0123456789 ").split()[0] for x in body]
        n = sum(1 for o in ops if not o.startswith("mov"))
        rows.append({"case": label, "kernel": name, "instructions": n, "mma": mma, "bytes_per_instruction": wbytes / n})
        print(f"| {label} | {n} | {mma} | {wbytes / n:.1f} |")
    write_json(rows)


if __name__ == "__main__":
    main()
