"""Batch-1 decode of the random 7B shape against its bandwidth bound (issue 17).
    python3 bench/decode_table.py DECODE.jsonl COPY_GBPS [--md]
DECODE.jsonl: bench/timecmd.py lines named "decode FORMAT pdl=P", "decode FORMAT
r21=base|fuse2|vec|fuse2+vec|fuse2-nopieces+vec[+tab|+pf|+pfu|+l2|+f6tab]" or "decode FORMAT gemv=fp16|int8[+fuse][+pf]" (generate --json as the last stdout line). The bound is the bytes a token reads (every linear's weights
in the format, the bf16 head, the float32 KV cache at the run's mean position)
over the device copy bandwidth measured in the same run; tokens/s are the median
of the runs of each (format, pdl)."""
import json, statistics, sys

# LLaMA-2-7B's shape (bench/make_random_model.py)
LAYERS, H, I, V = 32, 4096, 11008, 32000
LINEAR = LAYERS * (4 * H * H + 3 * H * I)
BITS = {"bf16": 16, "mxfp4": 4.25, "nvfp4": 4.5, "int4_g128": 4.25, "mxint8": 8.25, "mxfp6_e2m3": 6.25, "mxfp8": 8.25,
        "bfp4_b16": 4.5, "q4_0": 4.5}


FLAGS = {"fuse": "fused kernels", "pf": "next tile prefetched"}
# gpu_round2.sh's pieces variants (r21=A+B+...)
R21 = {"base": "level 1", "fuse2": "FUSE=2", "fuse2-nopieces": "FUSE=2 without pieces", "vec": "attention vec",
       "pf": "next tile prefetched", "pfu": "next tile prefetched where unsplit", "tab": "4-bit ints by tables (I8_OFF=0)",
       "l2": "L2 prefetch (L2PF=1)", "f6tab": "MXFP6 by table (F6=table)", "deep": "attention vec, 16 keys in flight (ATTN=deep)", "ring": "cp.async ring, 4 CTAs", "ring3": "cp.async ring, 3 CTAs"}  # (the cp.async ring: commits 907cae6..33255d7, not kept; bench/gpu/round24; the L2 prefetch: round26, taken out)


def label_of(p):
    """gemv=fp16|int8[+fuse][+pf] -> 'int8 GEMV, fused kernels'; r21=fuse2-nopieces+vec+tab -> 'FUSE=2 without pieces, ...'"""
    if p.startswith("r21="):
        return ", ".join(R21[f] for f in p[4:].split("+"))
    gemv, *flags = p.replace("gemv=", "").split("+")
    return ", ".join([f"{gemv} GEMV"] + [FLAGS[f] for f in flags])


def bound_tok_s(fmt, prompt, gen, copy_gbps):
    pos = prompt + gen / 2.0  # mean cache length over the generated tokens
    bytes_ = LINEAR * BITS[fmt] / 8 + V * H * 2 + 2 * LAYERS * pos * H * 4
    return copy_gbps * 1e9 / bytes_


def main():
    path, copy = sys.argv[1], float(sys.argv[2])
    runs = {}
    for line in open(path):
        r = json.loads(line)
        name = r["command"].split()
        if len(name) != 3 or name[0] != "decode" or r["exit"] != 0:
            continue
        g = json.loads(r["stdout_last"]) if r["stdout_last"].startswith("{") and r["stdout_last"].endswith("}") else None
        tok = g["gen_tokens_per_second"] if g else float(r["stderr_last"].split("(")[-1].split()[0])
        runs.setdefault((name[1], name[2]), []).append((tok, g))
    bf16 = {p: statistics.median(t for t, _ in v) for (f, p), v in runs.items() if f == "bf16"}
    print(f"device copy {copy:.0f} GB/s; 128 tokens after a 5-token prompt, greedy, CUDA graphs\n")
    print("| weights | launch | tokens/s (runs) | bound tokens/s | of bound | x bf16 (same launch) |")
    print("|---|---|---|---|---|---|")
    for (f, p), v in sorted(runs.items(), key=lambda kv: (list(BITS).index(kv[0][0]) if kv[0][0] in BITS else 99, kv[0][1])):
        toks = [t for t, _ in v]
        med = statistics.median(toks)
        b = bound_tok_s(f, 5, 128, copy) if f in BITS else float("nan")
        ref = bf16.get(p, bf16.get(p.replace("int8", "fp16").replace("+pf", ""), float("nan")))  # bf16 has no packed GEMV: its fp16 runs
        x = med / ref
        launch = {"pdl=0": "graph", "pdl=1": "graph + PDL", "r21=base": "defaults", "r21=fuse2": "BQ_CUDA_FUSE=2",
                  "r21=vec": "attention vec", "r21=fuse2+vec": "FUSE=2 + attention vec",
                  "r21=fuse2-nopieces+vec": "FUSE=2 without pieces + attention vec"}.get(p) or label_of(p)
        print(f"| {f} | {launch} | {med:.1f} ({', '.join(f'{t:.1f}' for t in toks)}) | {b:.0f} | {100 * med / b:.0f}% | {x:.2f} |")


if __name__ == "__main__":
    main()
