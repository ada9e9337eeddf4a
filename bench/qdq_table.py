"""Fake quantisation on the GPU, the kernels before and after (BQ_CUDA_QDQ=0 / 1).
    python3 bench/qdq_table.py DIR/qdq_Q_R.jsonl ...
Each file is one `gpu_bench --qdq --json` run (Q: the BQ_CUDA_QDQ value, R: the round);
rounds are interleaved by bench/gpu_round2.sh (STAGES=qdq). Prints, per format, the
median over rounds of its rate as a share of the copy bandwidth measured in the same
run, for each Q, and the ratio of the medians."""
import json, os, re, statistics, sys

runs = {}  # (format, q) -> [ratio of copy]
order = []
for path in sys.argv[1:]:
    m = re.match(r"qdq_(\d)_(\d+)\.jsonl$", os.path.basename(path))
    if not m:
        sys.exit(f"{path}: expected qdq_Q_R.jsonl")
    q = int(m.group(1))
    for line in open(path):
        r = json.loads(line)
        if r["kind"] != "qdq":
            continue
        if r["name"] not in order:
            order.append(r["name"])
        runs.setdefault((r["name"], q), []).append(r["ratio"])

print("| format | before (BQ_CUDA_QDQ=0), of copy | after, of copy | after / before | rounds |")
print("|---|---|---|---|---|")
for name in order:
    a, b = runs.get((name, 0), []), runs.get((name, 1), [])
    ma = statistics.median(a) if a else float("nan")
    mb = statistics.median(b) if b else float("nan")
    print(f"| {name} | {100 * ma:.0f}% | {100 * mb:.0f}% | {mb / ma:.2f}x | {min(len(a), len(b))} |")
