"""blockq.qdq from Python against (a) the same C call made directly through ctypes,
and (b) a straightforward numpy emulation of MXFP4 written the way the PyTorch
emulation libraries write it (per-block amax, shared exponent floor(log2 amax) -
emax, element rounding on the minifloat grid, saturation). Same 4096x4096 float32
tensor, best of REPS, one run; results checked equal before timing.

    /usr/bin/python3 bench/bench_python.py [--json bench/python.jsonl]   (after make)
"""
import ctypes
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import blockq  # noqa: E402
from blockq import _lib  # noqa: E402

REPS, N = 5, 4096


def best(fn):
    t = []
    for _ in range(REPS):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return min(t)


def mxfp4_numpy(x):
    """MXFP4 (E2M1 elements, E8M0 scale per 32) in numpy, round to nearest even."""
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(amax, where=amax > 0, out=np.full_like(amax, -127.0))) - 2  # emax of E2M1 = 2
    e = np.clip(e, -127, 127)
    v = b / np.exp2(e)
    a = np.abs(v)
    with np.errstate(divide="ignore"):
        pe = np.floor(np.log2(a, where=a > 0, out=np.zeros_like(a)))
    pe = np.clip(pe, 0, 2)  # emin 0 (subnormals below), emax 2
    step = np.exp2(pe - 1)  # one mantissa bit
    q = np.minimum(np.rint(a / step) * step, 6.0)
    return (np.copysign(q, v) * np.exp2(e)).astype(np.float32).reshape(x.shape)


def main():
    x = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
    y = np.empty_like(x)
    f = blockq._fmt("mxfp4")
    o = _lib.QOpts(0, 0, 0)
    direct = lambda: _lib.lib.bq_qdq(f.ptr, x.ctypes.data, y.ctypes.data, N, N, ctypes.byref(o))  # noqa: E731
    direct()
    got = blockq.qdq(x, "mxfp4")
    ref = mxfp4_numpy(x)
    same = np.array_equal(np.abs(got), np.abs(ref))  # the emulation's -0 handling differs; values agree
    t_c, t_out = best(direct), best(lambda: blockq.qdq(x, "mxfp4", out=y))
    t_py, t_np = best(lambda: blockq.qdq(x, "mxfp4")), best(lambda: mxfp4_numpy(x))
    rows = [("C library call (ctypes, preallocated output)", t_c), ("blockq.qdq(x, fmt, out=y)", t_out),
            ("blockq.qdq(x, fmt) (allocates the output: first touch of 64 MB)", t_py), ("numpy MXFP4 emulation", t_np)]
    print(f"MXFP4 fake quantisation of a {N}x{N} float32 tensor, best of {REPS}; numpy emulation equal in value: {same}\n")
    print("| path | seconds | GB/s of input | vs the C call |\n|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {x.nbytes / t / 1e9:.2f} | {t / t_c:.2f}x |")
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w") as fh:
            for name, t in rows:
                fh.write(json.dumps({"path": name, "seconds": t, "ratio_vs_c": t / t_c, "equal": same}) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
