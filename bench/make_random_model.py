"""Writes a random LLaMA-shaped Hugging Face folder (config.json, bf16 safetensors
shards of at most 2 GB, an index, the bundled tokenizer) for the scale benchmarks.
The default is LLaMA-2-7B's shape (6.7B parameters, 13.5 GB). Never committed.

    /usr/bin/python3 bench/make_random_model.py OUT_DIR [--layers 32] [--hidden 4096]
        [--inter 11008] [--heads 32] [--kv-heads 32] [--vocab 32000]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("out")
for k, v in (("layers", 32), ("hidden", 4096), ("inter", 11008), ("heads", 32), ("kv-heads", 32), ("vocab", 32000)):
    ap.add_argument("--" + k, type=int, default=v)
a = ap.parse_args()
H, I, L, V, nh, nkv = a.hidden, a.inter, a.layers, a.vocab, a.heads, a.kv_heads
hd = H // nh
os.makedirs(a.out, exist_ok=True)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
           "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv, "vocab_size": V,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2},
          open(os.path.join(a.out, "config.json"), "w"))
here = os.path.dirname(os.path.abspath(__file__))
shutil.copy(os.path.join(here, "..", "models", "llama-19m-en", "tokenizer.json"), a.out)

tensors = [("model.embed_tokens.weight", (V, H), 0.02)]
for i in range(L):
    p = f"model.layers.{i}."
    tensors += [(p + "input_layernorm.weight", (H,), None), (p + "post_attention_layernorm.weight", (H,), None),
                (p + "self_attn.q_proj.weight", (H, H), 0.02), (p + "self_attn.k_proj.weight", (nkv * hd, H), 0.02),
                (p + "self_attn.v_proj.weight", (nkv * hd, H), 0.02), (p + "self_attn.o_proj.weight", (H, H), 0.02),
                (p + "mlp.gate_proj.weight", (I, H), 0.02), (p + "mlp.up_proj.weight", (I, H), 0.02),
                (p + "mlp.down_proj.weight", (H, I), 0.02)]
tensors += [("model.norm.weight", (H,), None), ("lm_head.weight", (V, H), 0.02)]

rng = np.random.default_rng(0)


def bf16(shape, std):
    if std is None:
        return np.full(shape, 0x3F80, dtype=np.uint16)  # 1.0
    x = (rng.standard_normal(shape, dtype=np.float32) * std).view(np.uint32)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


shards, cur, size = [], [], 0
for t in tensors:
    n = 2 * int(np.prod(t[1]))
    if cur and size + n > 2 << 30:
        shards.append(cur)
        cur, size = [], 0
    cur.append(t)
    size += n
shards.append(cur)
wmap = {}
for k, group in enumerate(shards):
    name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    hdr, off = {}, 0
    for tn, shape, _ in group:
        n = 2 * int(np.prod(shape))
        hdr[tn] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
        wmap[tn] = name
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(a.out, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for tn, shape, std in group:
            f.write(bf16(shape, std).tobytes())
    print(f"{name}: {len(group)} tensors, {off / 1e9:.2f} GB", flush=True)
json.dump({"metadata": {}, "weight_map": wmap}, open(os.path.join(a.out, "model.safetensors.index.json"), "w"))
