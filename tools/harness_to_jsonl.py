"""Converts lm-evaluation-harness task documents (the datasets library's cached JSON
lines, one document a line) into blockq's task schema (docs/tasks.md), with each task's
prompt as the harness builds it.

    python3 tools/harness_to_jsonl.py hellaswag IN.jsonl OUT.jsonl

Tasks: hellaswag, arc_easy, arc_challenge, piqa, lambada_openai, boolq. (Winogrande is left
out: the harness scores the sentence's end after each option, i.e. a different context per
choice, which this schema's shared context cannot express.)
"""
import json
import re
import sys


def hellaswag(d):
    def pre(t):
        t = t.strip().replace(" [title]", ". ")
        t = re.sub("\\[.*?\\]", "", t)
        return t.replace("  ", " ")
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return {"context": pre(d["activity_label"] + ": " + ctx), "choices": [" " + pre(e) for e in d["endings"]],
            "gold": int(d["label"])}


def arc(d):
    labels = d["choices"]["label"]
    return {"context": "Question: " + d["question"] + "\nAnswer:", "choices": [" " + t for t in d["choices"]["text"]],
            "gold": labels.index(d["answerKey"])}


def piqa(d):
    return {"context": "Question: " + d["goal"] + "\nAnswer:", "choices": [" " + d["sol1"], " " + d["sol2"]],
            "gold": int(d["label"])}


def lambada(d):
    text = d["text"]
    cut = text.rfind(" ")
    return {"context": text[:cut], "target": text[cut:]}


def boolq(d):
    return {"context": d["passage"] + "\nQuestion: " + d["question"] + "?\nAnswer:", "choices": [" no", " yes"],
            "gold": int(bool(d["label"]))}


TASKS = {"hellaswag": hellaswag, "arc_easy": arc, "arc_challenge": arc, "piqa": piqa,
         "lambada_openai": lambada, "boolq": boolq}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in TASKS:
        sys.exit("usage: harness_to_jsonl.py {" + ",".join(TASKS) + "} IN.jsonl OUT.jsonl")
    conv = TASKS[sys.argv[1]]
    n = 0
    with open(sys.argv[2], encoding="utf-8") as fin, open(sys.argv[3], "w", encoding="utf-8") as fout:
        for line in fin:
            if line.strip():
                fout.write(json.dumps(conv(json.loads(line)), ensure_ascii=False) + "\n")
                n += 1
    print(f"{sys.argv[3]}: {n} items")
