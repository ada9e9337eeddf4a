"""Perplexity of the bundled model over a list of weight/activation formats, and a
plot of it against bits per element if matplotlib is installed.

    /usr/bin/python3 python/examples/sweep_formats.py [CHUNKS]   (from the repository root)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import blockq  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..", "..")
text = open(os.path.join(root, "data", "wikitext-2-test.txt"), encoding="utf-8").read()
chunks = int(sys.argv[1]) if len(sys.argv) > 1 else 8
bits = {f["name"]: f["bits_per_element"] for f in blockq.formats()}
rows = []
for fmt in ["fp32", "bfp8_b16", "mxfp8_e4m3", "bfp6_b16", "mxfp6_e2m3", "bfp4_b16", "mxfp4", "nvfp4"]:
    m = blockq.Model(os.path.join(root, "models", "llama-19m-en"),
                     config=None if fmt == "fp32" else {"wq": fmt, "aq": fmt})
    r = m.perplexity(text, ctx=512, chunks=chunks)
    rows.append((fmt, bits.get(fmt, 32.0), r["ppl"]))
    print(f"{fmt:12s} {rows[-1][1]:6.2f} bits  ppl {r['ppl']:.3f}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.figure(figsize=(6, 4))
    plt.scatter([b for _, b, _ in rows], [p for _, _, p in rows])
    for f, b, p in rows:
        plt.annotate(f, (b, p), fontsize=7)
    plt.xlabel("bits per element (W and A)")
    plt.ylabel(f"perplexity ({chunks} windows of 512)")
    plt.yscale("log")
    plt.savefig("sweep_formats.png", dpi=120, bbox_inches="tight")
    print("plot: sweep_formats.png")
except ImportError:
    print("matplotlib is not installed: no plot")
