"""Fake-quantise the linear layers of a small PyTorch model with blockq, then check
the result against blockq's CLI on the same weights (written as raw float32).

    /usr/bin/python3 python/examples/quantize_module.py   (from the repository root, after make)
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import blockq  # noqa: E402
import blockq.torch as bqt  # noqa: E402

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
x = torch.randn(32, 256)
ref = net(x).detach()
w0 = net[0].weight.detach().numpy().copy()
bqt.quantize_module(net, {"w": "mxfp4", "a": "mxint8"})
out = net(x).detach()
print(net)
print(f"relative output error, W4 (MXFP4) A8 (MXINT8): {float((out - ref).norm() / ref.norm()):.4f}")

# the same weight through the CLI: bit-identical
with tempfile.TemporaryDirectory() as d:
    w0.tofile(os.path.join(d, "w.f32"))
    cli = os.path.join(os.path.dirname(__file__), "..", "..", "build", "blockq")
    subprocess.run([cli, "qdq", "mxfp4", "--shape", "512x256", os.path.join(d, "w.f32"), os.path.join(d, "q.f32")], check=True)
    via_cli = np.fromfile(os.path.join(d, "q.f32"), dtype=np.float32).reshape(512, 256)
same = np.array_equal(via_cli.view(np.uint32), blockq.qdq(w0, "mxfp4").view(np.uint32))
print("weight quantised by the CLI and by Python: " + ("bit-identical" if same else "DIFFERENT"))
sys.exit(0 if same else 1)
