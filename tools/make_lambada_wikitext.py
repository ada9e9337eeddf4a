"""Builds data/tasks/lambada-wikitext2-test.jsonl, a LAMBADA-style last-word task
from the bundled WikiText-2 *test* text (docs/tasks.md):

- a passage is a paragraph (not a heading) cut after one of its sentences, with at
  least 30 words before that sentence's final " ." (one paragraph can give several);
- the target is the last word before that period: alphabetic, at least 3 letters,
  and present earlier in the passage (LAMBADA's rule that the word is predictable
  from the broad context, here the cheap form of it: it occurs before);
- the context is every word before the target, joined by single spaces as in the
  file; the item is {"context": ..., "target": " " + word};
- at most 3,000 items, drawn in file order with random.Random(2026) when there are more.

    /usr/bin/python3 tools/make_lambada_wikitext.py [data/wikitext-2-test.txt] [OUT]
"""
import json
import random
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "data/wikitext-2-test.txt"
out = sys.argv[2] if len(sys.argv) > 2 else "data/tasks/lambada-wikitext2-test.jsonl"
items = []
for line in open(src, encoding="utf-8"):
    s = line.strip()
    if not s or s.startswith("="):
        continue
    w = s.split(" ")
    for i in range(31, len(w)):
        if w[i] != ".":
            continue
        target = w[i - 1]
        if target.isalpha() and len(target) >= 3 and target in w[:i - 1]:
            items.append({"context": " ".join(w[:i - 1]), "target": " " + target})
if len(items) > 3000:
    keep = sorted(random.Random(2026).sample(range(len(items)), 3000))
    items = [items[i] for i in keep]
with open(out, "w", encoding="utf-8") as f:
    for it in items:
        f.write(json.dumps(it, ensure_ascii=False) + "\n")
print(f"{out}: {len(items)} items")
