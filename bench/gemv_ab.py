"""The int8 GEMV's rows of two gpu_bench --gemv runs side by side (an A/B of one switch).
    python3 bench/gemv_ab.py A.jsonl B.jsonl "label of B"
Each row: the matrix, its weight bytes, GB/s and share of copy in A and in B, and B / A."""
import json, sys


def int8_rows(path):
    return [(r["name"], r["size"], r["rate"], r["ratio"]) for r in map(json.loads, open(path)) if r["kind"] == "gemv_int8"]


def main():
    a, b, label = sys.argv[1], sys.argv[2], sys.argv[3]
    print(f"| int8 GEMV | weights | GB/s | {label} | ratio |\n|---|---|---|---|---|")
    for (n, s, ra, pa), (_, _, rb, pb) in zip(int8_rows(a), int8_rows(b)):
        print(f"| {n} | {s:.0f} | {ra:.0f} ({100 * pa:.0f}%) | {rb:.0f} ({100 * pb:.0f}%) | {rb / ra:.2f} |")


if __name__ == "__main__":
    main()
