"""PyTorch layer for blockq's fake quantisation: a straight-through estimator (the
forward pass quantises, the backward pass lets the gradient through unchanged, as
the seed paper's and microxcaling's emulations train), QuantLinear, and
quantize_module to fake-quantise a model's linear layers in place.

    import blockq.torch as bqt
    bqt.quantize_module(model, {"w": "mxfp4", "a": "mxint8", "skip": ["lm_head"]})
"""
import fnmatch
from typing import Dict, Optional

import torch

import blockq


class _QDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt, axis, round, seed):
        return blockq.qdq(x.contiguous(), fmt, axis=axis, round=round, seed=seed)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def fake_quant(x: torch.Tensor, fmt: Optional[str], axis: int = -1, round: str = "rne",
               seed: Optional[int] = None) -> torch.Tensor:
    """qdq with a straight-through gradient; fmt None or "fp32" returns x."""
    if not fmt or fmt == "fp32":
        return x
    return _QDQ.apply(x, fmt, axis, round, seed)


class QuantLinear(torch.nn.Module):
    """y = q_a(x) q_w(W)^T + b: the weight quantised in blocks along its input
    dimension, the input along its last dimension (blockq's linear, as the engine
    computes it). The float weight stays the master copy."""

    def __init__(self, linear: torch.nn.Linear, w: Optional[str], a: Optional[str], round: str = "rne"):
        super().__init__()
        self.linear, self.w_fmt, self.a_fmt, self.round = linear, w, a, round

    def forward(self, x):
        w = fake_quant(self.linear.weight, self.w_fmt, -1, self.round)
        return torch.nn.functional.linear(fake_quant(x, self.a_fmt, -1, self.round), w, self.linear.bias)

    def extra_repr(self):
        return f"w={self.w_fmt}, a={self.a_fmt}"


def quantize_module(model: torch.nn.Module, config: Dict) -> torch.nn.Module:
    """Replace every nn.Linear of model (in place) by a QuantLinear.

    config: {"w": fmt, "a": fmt} for every linear; "rules": {glob over module names:
    {"w": ..., "a": ...}} (later rules win, as in blockq's TOML); "skip": [globs]
    left in float; "round": rounding mode. Returns model."""
    rules = list(config.get("rules", {}).items())
    skip = config.get("skip", [])
    targets = []
    for name, mod in model.named_modules():
        for cname, child in mod.named_children():
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, torch.nn.Linear) and not any(fnmatch.fnmatchcase(full, s) for s in skip):
                w, a = config.get("w"), config.get("a")
                for pat, r in rules:
                    if fnmatch.fnmatchcase(full, pat):
                        w, a = r.get("w", w), r.get("a", a)
                targets.append((mod, cname, child, w, a))
    for mod, cname, child, w, a in targets:
        setattr(mod, cname, QuantLinear(child, w, a, config.get("round", "rne")))
    return model
