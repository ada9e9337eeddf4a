#!/bin/sh
# The fine-tuning experiment of docs/finetune.md (issue #20): fine-tune the bundled
# model on the WikiText-2 validation text, score the test text.
#   float32 fine-tuned                      -> the baseline (the domain shift alone moves ppl)
#   RTN: that float model, quantised         -> what quantising after fine-tuning gives
#   QAT full / QAT LoRA: the same budget with the format's quantisers in training
# recovery = (ppl_RTN - ppl_QAT) / (ppl_RTN - ppl_float-FT): the share of the gap closed.
#   sh bench/qat_table.sh [STEPS] [CHUNKS]    -> bench/qat.jsonl, a Markdown table on stdout
#   DEVICE=cuda: training and scoring on the GPU; J=FILE: the JSON lines elsewhere;
#   QX="--attn F --kv F": more quantisers on every row (RTN and QAT alike);
#   NO_LORA=1: the full fine-tuning column only; NO_FULL=1: the LoRA column only, against a
#   float32 LoRA run of the same budget (its baseline)
B=${B:-build/blockq}
M=${M:-models/llama-19m-en}
STEPS=${1:-100}
C=${2:-60}
OUT=${OUT:-build/qat}
TR="--text data/wikitext-2-valid-tokenized.txt --steps $STEPS --ctx 256 --accum 4 --seed 1 --save-every 0"
FULL="--lr ${LR_FULL:-1e-4}"
LORA="--lora 16 --lr ${LR_LORA:-1e-3}"
J=${J:-bench/qat.jsonl}
DEV="--device ${DEVICE:-cpu}"
SET=${SET:-"mxfp4/mxfp4 bfp4_b16/bfp4_b16 bfp4_b32/bfp4_b32 nvfp4/nvfp4 int4_b32_sfp16/mxint8"}
mkdir -p "$OUT"
: >"$J"
ppl() {  # model, quantisation flags -> ppl
    $B ppl --model "$1" --text data/wikitext-2-test.txt --ctx 512 --chunks "$C" $2 $DEV --json 2>/dev/null | tail -1 |
        python3 -c "import json,sys; print('%.4f' % json.load(sys.stdin)['ppl'])"
}
train() {  # out, flags -> seconds, tokens/s (training on the validation text)
    rm -rf "$1" "$1.ckpt"
    $B finetune --model $M $TR $2 $DEV --out "$1" --json 2>/dev/null | tail -1 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('%.1f %.0f %d' % (r['seconds'], r['tokens_per_second'], r['tokens']))"
}
f0=$(ppl $M "")
set -- $(train "$OUT/float" "$([ -n "$NO_FULL" ] && echo "$LORA" || echo "$FULL")"); fs=$1; ftps=$2; tok=$3
ff=$(ppl "$OUT/float" "")
printf '{"config": "float32", "untuned": %s, "finetuned": %s, "seconds": %s, "tokens_per_second": %s, "tokens": %s}\n' "$f0" "$ff" "$fs" "$ftps" "$tok" >>"$J"
echo "Fine-tuned $STEPS steps x 4 windows x 257 tokens ($tok tokens) of the validation text; test text ctx 512, first $C windows."
echo "float32: untuned $f0, fine-tuned $ff ($fs s, $ftps tokens/s)${NO_FULL:+ (LoRA-16: the LoRA column's baseline)}"
echo
echo "| W / A | untuned RTN | RTN of float FT | QAT full | QAT LoRA-16 | recovery full | recovery LoRA | QAT s (full / LoRA) |"
echo "|---|---|---|---|---|---|---|---|"
for wa in $SET; do
    w=${wa%/*} a=${wa#*/}
    Q="--wq $w --aq $a $QX"
    r0=$(ppl $M "$Q")
    rf=$(ppl "$OUT/float" "$Q")
    n=$(echo "$wa" | tr / _)
    qs=0 qf=0
    if [ -z "$NO_FULL" ]; then
        set -- $(train "$OUT/$n-full" "$FULL $Q"); qs=$1
        qf=$(ppl "$OUT/$n-full" "$Q")
    fi
    ls=0 ql=0
    if [ -z "$NO_LORA" ]; then
        set -- $(train "$OUT/$n-lora" "$LORA $Q"); ls=$1
        ql=$(ppl "$OUT/$n-lora" "$Q")
    fi
    printf '{"w": "%s", "a": "%s", "untuned_rtn": %s, "rtn": %s, "qat_full": %s, "qat_lora": %s, "float_ft": %s, "seconds_full": %s, "seconds_lora": %s}\n' \
        $w $a "$r0" "$rf" "$qf" "$ql" "$ff" "$qs" "$ls" >>"$J"
    python3 -c "
r0,rf,qf,ql,ff=$r0,$rf,$qf,$ql,$ff
rec=lambda q: '-' if not q else '%.0f%%' % (100*(rf-q)/(rf-ff)) if rf>ff else 'n/a'
f=lambda q: '%.2f' % q if q else '-'
print('| $wa | %.2f | %.2f | %s | %s | %s | %s | $qs / $ls |' % (r0, rf, f(qf), f(ql), rec(qf), rec(ql)))"
done
