"""The pipeline-stage table of bench/gpu_round2.sh (STAGES=pipeline): for each stage
count, ppl and its time on the bundled model and the 7B shape, and greedy decoding
on the 7B shape; whether every number and token equals the one-stage run's.
    python3 bench/pipeline_table.py DIR"""
import json, os, sys

d = sys.argv[1]
rows = []
bundled = [json.loads(l) for l in open(os.path.join(d, "r6_bundled.jsonl")) if l.strip()]
scale = [json.loads(l) for l in open(os.path.join(d, "r6_pipeline.jsonl")) if l.strip()]
print("| model | stages | ppl | same as 1 stage | seconds | tokens/s | vs 1 stage |")
print("|---|---|---|---|---|---|---|")
for name, recs in (("bundled, ctx 512 x 32", bundled), ("7B shape bf16, ctx 2048 x 8", scale)):
    base = None
    for i, r in enumerate(recs):
        if "stdout_last" in r:
            if r["exit"] != 0:
                print(f"| {name} | {r['command']} | FAILED: {r['stderr_last']} | | | | |")
                continue
            r = json.loads(r["stdout_last"])
        k = [1, 2, 8][i] if name.startswith("bundled") else [1, 2, 4][i]
        base = base or r
        print(f"| {name} | {k} | {r['ppl']:.6f} | {'yes' if r['nll'] == base['nll'] else 'NO'} | {r['seconds']:.2f} | "
              f"{r['tokens_per_second']:.0f} | {r['tokens_per_second'] / base['tokens_per_second']:.2f}x |")
print()
print("| 7B shape, greedy 64 tokens | stages | tokens same as 1 stage | gen tokens/s | vs 1 stage |")
print("|---|---|---|---|---|")
base = None
for k in (1, 2, 4):
    p = os.path.join(d, f"r6_gen_{k}.json")
    try:
        g = json.loads(open(p).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        print(f"| | {k} | FAILED (no output) | | |")
        continue
    base = base or g
    print(f"| | {k} | {'yes' if g['ids'] == base['ids'] else 'NO'} | {g['gen_tokens_per_second']:.1f} | "
          f"{g['gen_tokens_per_second'] / base['gen_tokens_per_second']:.2f}x |")
