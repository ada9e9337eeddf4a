#!/usr/bin/python3
"""Reference loss and gradients for tests/test_train.c, computed independently with
PyTorch (Debian's python3-torch) from the safetensors file: a LLaMA forward pass
written from the Hugging Face modelling code's definitions, autograd for the rest.

usage: train_ref.py MODEL_DIR IDS.bin OUT.bin
OUT: the mean next-token loss (float64), then float32 gradients in the trainer's
order: embedding, the norms (per layer input then post-attention, then the final
one), per layer q k v o gate up down (each weight, then its bias), lm_head."""
import json, struct, sys
import numpy as np
import torch

def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", v["dtype"]
        b, e = v["data_offsets"]
        out[k] = torch.tensor(np.frombuffer(data[b:e], dtype=np.float32).reshape(v["shape"]).copy(), requires_grad=True)
    return out

def main():
    mdir, ids_path, out_path = sys.argv[1:4]
    cfg = json.load(open(mdir + "/config.json"))
    W = load_safetensors(mdir + "/model.safetensors")
    ids = torch.tensor(np.fromfile(ids_path, dtype=np.int32).astype(np.int64))
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    L, T = cfg["num_hidden_layers"], ids.shape[0]

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(x):  # x [heads, T, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    x = W["model.embed_tokens.weight"][ids]
    mask = torch.triu(torch.full((T, T), float("-inf")), 1)
    for l in range(L):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(T, nh, d).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj").view(T, nkv, d).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj").view(T, nkv, d).transpose(0, 1)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / d ** 0.5 + mask, -1) @ v
        x = x + lin(a.transpose(0, 1).reshape(T, nh * d), p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        x = x + lin(torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    logits = rms(x, W["model.norm.weight"]) @ head.T
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    loss.backward()

    order = ["model.embed_tokens.weight"]
    for l in range(L):
        order += ["model.layers.%d.input_layernorm.weight" % l, "model.layers.%d.post_attention_layernorm.weight" % l]
    order.append("model.norm.weight")
    for l in range(L):
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]:
            for s in [".weight", ".bias"]:
                if "model.layers.%d.%s%s" % (l, n, s) in W:
                    order.append("model.layers.%d.%s%s" % (l, n, s))
    if "lm_head.weight" in W:
        order.append("lm_head.weight")
    with open(out_path, "wb") as f:
        f.write(struct.pack("<d", loss.item()))
        for n in order:
            f.write(W[n].grad.detach().numpy().astype(np.float32).tobytes())

if __name__ == "__main__":
    main()
