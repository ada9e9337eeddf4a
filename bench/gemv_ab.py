"""The GEMV rows of two gpu_bench --gemv runs side by side (an A/B of one switch).
    python3 bench/gemv_ab.py A.jsonl B.jsonl "label of B" [all]
Each row: the matrix, its weight bytes, GB/s and share of copy in A and in B, and B / A.
The int8 path's rows only, or with `all` the fp16 path's too (the path named in each row)."""
import json, sys


def rows(path, kinds):
    return [(r["name"] + ("" if r["kind"] == "gemv_int8" else " (fp16 path)"), r["size"], r["rate"], r["ratio"])
            for r in map(json.loads, open(path)) if r["kind"] in kinds]


def main():
    a, b, label = sys.argv[1], sys.argv[2], sys.argv[3]
    kinds = ("gemv_int8", "gemv") if sys.argv[4:] == ["all"] else ("gemv_int8",)
    print(f"| {'GEMV' if len(kinds) > 1 else 'int8 GEMV'} | weights | GB/s | {label} | ratio |\n|---|---|---|---|---|")
    for (n, s, ra, pa), (_, _, rb, pb) in zip(rows(a, kinds), rows(b, kinds)):
        print(f"| {n} | {s:.0f} | {ra:.0f} ({100 * pa:.0f}%) | {rb:.0f} ({100 * pb:.0f}%) | {rb / ra:.2f} |")


if __name__ == "__main__":
    main()
