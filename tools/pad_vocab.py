"""Copy a Hugging Face folder with its vocabulary padded: the embedding (and an
untied LM head) get zero rows up to N and config.json says vocab_size = N, as
real checkpoints do (Qwen2: 151936 rows for 151646 tokens). A tokenizer.json may
be given for folders without one. Single-file safetensors; standard library only.
    python3 tools/pad_vocab.py SRC DST N [TOKENIZER.json]"""
import json
import os
import shutil
import struct
import sys

src, dst, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
buf = open(os.path.join(src, "model.safetensors"), "rb").read()
n = struct.unpack("<Q", buf[:8])[0]
head = json.loads(buf[8:8 + n])
body = buf[8 + n:]
width = {"F32": 4, "F16": 2, "BF16": 2}
out_head, parts, off = {}, [], 0
for name, t in head.items():
    if name == "__metadata__":
        out_head[name] = t
        continue
    b0, b1 = t["data_offsets"]
    data = body[b0:b1]
    shape = list(t["shape"])
    if name in ("model.embed_tokens.weight", "lm_head.weight") and shape[0] < rows:
        data += bytes((rows - shape[0]) * shape[1] * width[t["dtype"]])
        shape[0] = rows
    out_head[name] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [off, off + len(data)]}
    parts.append(data)
    off += len(data)
hj = json.dumps(out_head).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hj)) + hj)
    for p in parts:
        f.write(p)
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["vocab_size"] = rows
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=1)
tok = sys.argv[4] if len(sys.argv) > 4 else os.path.join(src, "tokenizer.json")
if os.path.exists(tok):
    shutil.copy(tok, os.path.join(dst, "tokenizer.json"))
