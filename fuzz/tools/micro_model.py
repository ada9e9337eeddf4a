#!/usr/bin/env python3
"""Writes a 1-layer LLaMA-shaped checkpoint (hidden 32, vocab 16) into DIR, from
which the .bq and GGUF fuzz seeds were made:
    python3 fuzz/tools/micro_model.py /tmp/micro
    build/blockq quantize --model /tmp/micro --wq mxfp4 --aq mxint8 --out fuzz/seeds/bqfile/micro_mxfp4.bq
    build/blockq quantize --model /tmp/micro --wq nvfp4 --out fuzz/seeds/bqfile/micro_nvfp4.bq
    build/blockq quantize --model /tmp/micro --wq mxfp4 --out fuzz/seeds/gguf/micro_mxfp4.gguf
    build/blockq quantize --model /tmp/micro --wq int8_b32_sfp16 --out fuzz/seeds/gguf/micro_q8.gguf
"""
import json, os, random, struct, sys

d = sys.argv[1]
os.makedirs(d, exist_ok=True)
random.seed(1)
H, I, V, KV = 32, 64, 16, 16
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
       "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "num_hidden_layers": 1, "vocab_size": V,
       "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0}
json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
p = "model.layers.0."
tens = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], p + "input_layernorm.weight": [H],
        p + "post_attention_layernorm.weight": [H], p + "self_attn.q_proj.weight": [H, H],
        p + "self_attn.k_proj.weight": [KV, H], p + "self_attn.v_proj.weight": [KV, H],
        p + "self_attn.o_proj.weight": [H, H], p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H],
        p + "mlp.down_proj.weight": [H, I]}
hdr, data, off = {}, b"", 0
for k, sh in tens.items():
    n = 1
    for x in sh:
        n *= x
    b = b"".join(struct.pack("<e", 1.0 if len(sh) == 1 else random.gauss(0, 0.1)) for _ in range(n))
    hdr[k] = {"dtype": "F16", "shape": sh, "data_offsets": [off, off + len(b)]}
    data += b
    off += len(b)
h = json.dumps(hdr).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(os.path.join(d, "model.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + data)
vocab = {chr(c): i for i, c in enumerate(range(ord("a"), ord("a") + 14))}
vocab["ab"] = 14
tok = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}, "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
       "added_tokens": [{"id": 15, "content": "<|e|>", "special": True}]}
json.dump(tok, open(os.path.join(d, "tokenizer.json"), "w"))
