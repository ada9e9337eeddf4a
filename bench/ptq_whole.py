"""The Markdown table of bench/ptq_whole.sh's runs (JSON lines): perplexity, its change
from the float32 row of the same file, KL divergence from the float model and top-1
agreement on the whole WikiText-2 test text, and the seconds of loading + calibration +
quantisation.   python3 bench/ptq_whole.py FILE.jsonl [FILE.jsonl ...] [FLOAT32_PPL]
(the files' rows in one table; the float32 perplexity given when no file has an f32 row)"""
import json
import sys

files = [a for a in sys.argv[1:] if a.endswith(".jsonl")]
given = [a for a in sys.argv[1:] if not a.endswith(".jsonl")]
rows = [json.loads(l) for f in files for l in open(f) if l.strip()]
# grouped by format (float32 first), round-to-nearest first in each group
order = {}
for r in rows:
    order.setdefault((r["w"], r["a"], r["kv"]), len(order))
rows.sort(key=lambda r: (r["w"] != "f32", order[(r["w"], r["a"], r["kv"])], r["ptq"] != "none", len(r["ptq"]), r["ptq"]))
base = next((r["result"]["ppl"] for r in rows if r["w"] == "f32" and "result" in r),
            float(given[0]) if given else None)
print("| W / A / KV | ptq | ppl | vs float32 | KLD mean | KLD p99 | top-1 | load + calibrate + quantise (s) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    spec = " / ".join(x for x in (r["w"], r["a"], r["kv"]))
    if "error" in r:
        print(f"| {spec} | {r['ptq']} | refused: {r['error']} | | | | | |")
        continue
    x = r["result"]
    d = f"{100 * (x['ppl'] / base - 1):+.2f}%" if base else ""
    print(f"| {spec} | {r['ptq']} | {x['ppl']:.2f} | {d} | {x['kld_mean']:.4f} | {x['kld_p99']:.3f} | "
          f"{100 * x['top1_agreement']:.2f}% | {x['load_seconds']:.1f} |")
