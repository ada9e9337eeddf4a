#!/usr/bin/python3
"""Reference loss and gradients for tests/test_train.c, computed independently with
PyTorch (Debian's python3-torch) from the safetensors file: a LLaMA (or OPT) forward
pass written from the Hugging Face modelling code's definitions, autograd for the rest.

usage: train_ref.py MODEL_DIR IDS.bin OUT.bin
OUT: the mean next-token loss (float64), then float32 gradients in the trainer's
order: embedding (OPT: then positions), the norms (per layer input then
post-attention, then the final one; each weight, then its bias), per layer q k v o
gate up down (each weight, then its bias), lm_head."""
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
        assert v["dtype"] in ("F32", "F16"), v["dtype"]
        b, e = v["data_offsets"]
        a = np.frombuffer(data[b:e], dtype=np.float32 if v["dtype"] == "F32" else np.float16).astype(np.float32)
        out[k] = torch.tensor(a.reshape(v["shape"]).copy(), requires_grad=True)
    return out

def opt(cfg, W, ids):
    """OPT with the layer norms first (do_layer_norm_before), learned positions from row 2,
    ReLU, biases everywhere, the head tied to the embedding. Returns the loss and the
    gradients' order."""
    H, nh, L, T = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], ids.shape[0]
    d = H // nh
    P = "model.decoder."
    ln = lambda x, n: torch.nn.functional.layer_norm(x, (H,), W[n + ".weight"], W[n + ".bias"], 1e-5)
    lin = lambda x, n: x @ W[n + ".weight"].T + W[n + ".bias"]
    x = W[P + "embed_tokens.weight"][ids] + W[P + "embed_positions.weight"][torch.arange(T) + 2]
    mask = torch.triu(torch.full((T, T), float("-inf")), 1)
    for l in range(L):
        p = P + "layers.%d." % l
        h = ln(x, p + "self_attn_layer_norm")
        q, k, v = (lin(h, p + "self_attn.%s_proj" % r).view(T, nh, d).transpose(0, 1) for r in "qkv")
        a = torch.softmax(q @ k.transpose(1, 2) / d ** 0.5 + mask, -1) @ v
        x = x + lin(a.transpose(0, 1).reshape(T, H), p + "self_attn.out_proj")
        x = x + lin(torch.relu(lin(ln(x, p + "final_layer_norm"), p + "fc1")), p + "fc2")
    logits = ln(x, P + "final_layer_norm") @ W[P + "embed_tokens.weight"].T
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    order = [P + "embed_tokens.weight", P + "embed_positions.weight"]
    for l in range(L):
        for n in ["self_attn_layer_norm", "final_layer_norm"]:
            order += [P + "layers.%d.%s.weight" % (l, n), P + "layers.%d.%s.bias" % (l, n)]
    order += [P + "final_layer_norm.weight", P + "final_layer_norm.bias"]
    for l in range(L):
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]:
            order += [P + "layers.%d.%s.weight" % (l, n), P + "layers.%d.%s.bias" % (l, n)]
    return loss, order

def main():
    mdir, ids_path, out_path = sys.argv[1:4]
    cfg = json.load(open(mdir + "/config.json"))
    W = load_safetensors(mdir + "/model.safetensors")
    ids = torch.tensor(np.fromfile(ids_path, dtype=np.int32).astype(np.int64))
    if cfg["model_type"] == "opt":
        loss, order = opt(cfg, W, ids)
        loss.backward()
        return write(out_path, loss, W, order)
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
    write(out_path, loss, W, order)

def write(out_path, loss, W, order):
    with open(out_path, "wb") as f:
        f.write(struct.pack("<d", loss.item()))
        for n in order:
            f.write(W[n].grad.detach().numpy().astype(np.float32).tobytes())

if __name__ == "__main__":
    main()
