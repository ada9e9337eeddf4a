"""Writes the fuzz seeds for the shapes of issue 14 (hostile inputs, round 2):
hostile tokenizers for the export target, a long word for the tokenizer, many
added tokens, a pathological glob, and a TOML file of many entries. Run from the
repository root: python3 fuzz/tools/hostile_seeds.py. Each seed stays under the
fuzzers' 64 KiB input limit, so a super-linear path hits the per-input timeout."""
import copy, json, os

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data if isinstance(data, bytes) else data.encode())

# the micro model's tokenizer (fuzz/tools/micro_model.py): 16 ids
vocab = {chr(c): i for i, c in enumerate(range(ord("a"), ord("a") + 14))}
vocab["ab"] = 14
base = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "added_tokens": [{"id": 15, "content": "<|e|>", "special": True}]}

def variant(name, change):
    t = copy.deepcopy(base)
    change(t)
    write("fuzz/seeds/export/" + name, json.dumps(t))

variant("valid", lambda t: None)
variant("negative_id", lambda t: t["model"]["vocab"].update({"z": -3}))
variant("huge_id", lambda t: t["model"]["vocab"].update({"z": 10000000}))
variant("id_past_embedding", lambda t: t["model"]["vocab"].update({"z": 40}))
variant("added_no_id", lambda t: t["added_tokens"].append({"content": "<x>"}))
variant("added_no_content", lambda t: t["added_tokens"].append({"id": 3}))
variant("no_vocab", lambda t: t["model"].pop("vocab"))
variant("empty_merge", lambda t: t["model"]["merges"].append([]))
variant("numeric_merge", lambda t: t["model"]["merges"].append([1, 2]))
variant("merge_not_in_vocab", lambda t: t["model"]["merges"].append("b c"))
variant("duplicate_merge", lambda t: t["model"]["merges"].append("a b"))
variant("added_other_string", lambda t: t["added_tokens"].append({"id": 2, "content": "<c>", "special": True}))
variant("ignore_merges", lambda t: t["model"].update({"ignore_merges": True}))
variant("dropout", lambda t: t["model"].update({"dropout": 0.1}))
variant("subword_prefix", lambda t: t["model"].update({"continuing_subword_prefix": "##"}))
write("fuzz/seeds/export/duplicate_key", json.dumps(base)[:-1] + ', "model": {}}')

# one long word (quadratic BPE took 12 s at 100k characters)
write("fuzz/seeds/tokenize/long_word", "a" * 60000)
write("fuzz/seeds/tokenize/long_mixed_word", ("abcdefgh" * 7500))

# many added tokens over a text that holds them (the fuzzer tokenizes its own input)
t = copy.deepcopy(base)
t["added_tokens"] = [{"id": 15, "content": "<|e|>", "special": True}]
big = {"model": {"type": "BPE", "vocab": dict(vocab), "merges": ["a b"]}, "normalizer": None,
       "pre_tokenizer": base["pre_tokenizer"], "added_tokens": []}
for i in range(255):
    big["added_tokens"].append({"id": 16 + i, "content": "<t%d%s>" % (i, "a" * (i % 40)), "special": True})
write("fuzz/seeds/tokenizer_json/many_added", json.dumps(big))

# a glob that backtracked exponentially, and many entries (the duplicate check was quadratic)
write("fuzz/seeds/toml/many_stars", '"%sZ" = { w = "mxfp4" }\n' % ("*" * 100))
write("fuzz/seeds/toml/many_entries", "".join('"layers.%d.*" = { w = "int8" }\n' % i for i in range(1500)))
