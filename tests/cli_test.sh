#!/bin/sh
# CLI behaviour: exit codes, error messages, no output left behind on failure.
B=${1:-build/blockq}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL cli: $*"; }

# expect_fail EXIT_CODE MESSAGE_SUBSTRING -- command...
expect_fail() {
    code=$1; msg=$2; shift 3
    "$@" >"$T/out" 2>"$T/err"; rc=$?
    [ $rc -eq "$code" ] && ok || bad "'$*' exited $rc, expected $code"
    grep -q -- "$msg" "$T/err" && ok || bad "'$*' said '$(cat "$T/err")', expected '$msg'"
}

V=tests/vectors
cp $V/mxfp4_rne_normal.in.f32 "$T/in.f32"

# happy paths
$B qdq mxfp4 --shape 8x96 "$T/in.f32" "$T/o.f32" && cmp -s "$T/o.f32" $V/mxfp4_rne_normal.out.f32 && ok || bad "qdq mxfp4 output differs from the vector"
$B qdq mxfp4 --shape 8x96 --stats "$T/in.f32" >"$T/s" && grep -q "SQNR" "$T/s" && ok || bad "--stats prints no SQNR"
$B pack mxfp4 --shape 8x96 "$T/in.f32" "$T/p.bin" && [ "$(wc -c <"$T/p.bin")" -eq $((8 * 3 * 17)) ] && ok || bad "pack size"
$B unpack mxfp4 --shape 8x96 "$T/p.bin" "$T/u.f32" && cmp -s "$T/u.f32" "$T/o.f32" && ok || bad "unpack differs from qdq"
$B formats | grep -q "^mxfp6_e2m3 " && ok || bad "formats lacks mxfp6_e2m3"
$B formats --json | grep -q '"name": "nvfp4"' && ok || bad "formats --json lacks nvfp4"
n=$($B formats | wc -l); [ "$n" -ge 40 ] && ok || bad "formats lists only $n lines"
$B qdq bfp6_b16 --shape 8x96 --round stochastic --seed 5 "$T/in.f32" "$T/s1.f32" &&
$B qdq bfp6_b16 --shape 8x96 --round stochastic --seed 5 --threads 2 "$T/in.f32" "$T/s2.f32" && cmp -s "$T/s1.f32" "$T/s2.f32" && ok || bad "stochastic not reproducible"

# every command describes itself (its options come from the table that parses them)
cmds=$($B 2>&1 | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }')
[ "$(echo $cmds | wc -w)" -ge 17 ] && ok || bad "the usage lists only: $cmds"
for c in $cmds; do
    $B $c --help >"$T/h" 2>"$T/err" && head -1 "$T/h" | grep -q "^usage: blockq $c" && ok || bad "'$c --help' printed no usage"
    grep -q "^  --help" "$T/h" && ok || bad "'$c --help' lists no options"
    expect_fail 2 "unknown option '--frobnicate'" -- $B $c --frobnicate 1
done
expect_fail 2 "needs a value" -- $B ppl --model models/llama-19m-en --ctx
expect_fail 2 "unknown option '--chunks'" -- $B generate --model models/llama-19m-en --prompt x --chunks 4
expect_fail 2 "bad --ctx '1'" -- $B ppl --model models/llama-19m-en --text x --ctx 1
expect_fail 2 "bad --lr 'nan'" -- $B finetune --model models/llama-19m-en --text x --out "$T/x" --lr nan
expect_fail 2 "unexpected argument" -- $B ppl --model models/llama-19m-en stray
$B ppl --help | grep -q -- "--protocol P" && ok || bad "ppl --help lacks --protocol"
$B generate --help | grep -q -- "--protocol" && bad "generate --help lists ppl's --protocol" || ok

# bad input: exit 2, a clear message, no output file
expect_fail 2 "unknown format 'mxfp3'" -- $B qdq mxfp3 --shape 8x96 "$T/in.f32" "$T/x.f32"
expect_fail 2 "expected a named format" -- $B qdq bfp6_b0 --shape 8x96 "$T/in.f32" "$T/x.f32"
expect_fail 2 "needs 3076 bytes" -- $B qdq mxfp4 --shape 1x769 "$T/in.f32" "$T/x.f32"
expect_fail 2 "cannot open" -- $B qdq mxfp4 --shape 8x96 "$T/missing.f32" "$T/x.f32"
expect_fail 2 "bad --shape" -- $B qdq mxfp4 --shape 8by96 "$T/in.f32" "$T/x.f32"
expect_fail 2 "bad --round" -- $B qdq mxfp4 --shape 8x96 --round up "$T/in.f32" "$T/x.f32"
expect_fail 2 "missing --shape" -- $B qdq mxfp4 "$T/in.f32" "$T/x.f32"
expect_fail 2 "unknown command" -- $B frobnicate
expect_fail 2 "takes 408" -- $B unpack mxfp4 --shape 8x96 "$T/in.f32" "$T/x.f32"
printf 'abc' >"$T/odd.f32"
expect_fail 2 "partial" -- $B qdq mxfp4 --shape 1x1 "$T/odd.f32" "$T/x.f32"
[ ! -e "$T/x.f32" ] && ok || bad "an output file was left behind after a failure"
ls "$T" | grep -q tmp && bad "temporary file left behind" || ok
# unwritable destination: error, exit 2
expect_fail 2 "cannot create" -- $B qdq mxfp4 --shape 8x96 "$T/in.f32" "$T/nodir/x.f32"

# model commands on the bundled default model
M=models/llama-19m-en
$B tokenize --model $M --text "Hello, world!" --json | grep -q '^\[40, 484, 79, 12, 1994, 1\]$' && ok || bad "tokenize ids"
$B ppl --model $M --text data/wikitext-2-test.txt --ctx 128 --chunks 2 --json >"$T/ppl.json" &&
    tail -1 "$T/ppl.json" | grep -q '"windows": 2, "tokens_scored": 254, "nll": [0-9.]*, "ppl": [0-9.]*, "seconds"' && ok || bad "ppl --json: $(cat "$T/ppl.json")"
$B generate --model $M --prompt "In the beginning" -n 4 >"$T/gen" 2>/dev/null && grep -q "^In the beginning" "$T/gen" && ok || bad "generate"
printf 'abc\377def' >"$T/bad.txt"
expect_fail 2 "not valid UTF-8 (byte offset 3)" -- $B ppl --model $M --text "$T/bad.txt"
expect_fail 2 "cannot open" -- $B ppl --model "$T/nomodel" --text data/wikitext-2-test.txt
expect_fail 2 "fewer than one window" -- $B ppl --model $M --text "$T/odd.f32" --ctx 64
expect_fail 2 "bad --protocol" -- $B ppl --model $M --text data/wikitext-2-test.txt --protocol half
# llama-perplexity's protocol scores S/2 - 1 tokens a window, the reference's second half S/2
for p in second-half:64 llama.cpp:63; do
    n=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 128 --chunks 2 --protocol ${p%%:*} --json 2>/dev/null |
        sed -n 's/.*"tokens_scored": \([0-9]*\).*/\1/p')
    [ "$n" = $((2 * ${p##*:})) ] && ok || bad "--protocol ${p%%:*}: $n tokens scored, expected $((2 * ${p##*:}))"
done
# --kld: zero against the unquantised model itself, positive with quantised weights
# pipeline stages: the same numbers and tokens as one stage; more stages than layers refused
s1=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 6 --wq mxfp4 --aq mxint8 2>/dev/null | tail -1)
s3=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 6 --wq mxfp4 --aq mxint8 --stages 3 2>"$T/stages.err" | tail -1)
[ -n "$s1" ] && [ "$s1" = "$s3" ] && grep -q "pipeline: 3 stages (cpu), layers 0-" "$T/stages.err" && ok || bad "ppl --stages 3 '$s3' vs one stage '$s1'"
g1=$($B generate --model $M --prompt "The river" -n 12 --json 2>/dev/null | sed 's/, "load_seconds.*//')
g2=$($B generate --model $M --prompt "The river" -n 12 --json --stages 2 2>/dev/null | sed 's/, "load_seconds.*//')
[ -n "$g1" ] && [ "$g1" = "$g2" ] && ok || bad "generate --stages 2 '$g2' vs one stage '$g1'"
expect_fail 2 "a stage holds at least one layer" -- $B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --stages 9
expect_fail 2 "bad --stages" -- $B generate --model $M --prompt x --stages 0
k0=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 2 --kld --json 2>/dev/null | sed -n 's/.*"kld_mean": \([0-9.e+-]*\).*/\1/p')
k1=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 2 --kld --wq mxfp4 --json 2>/dev/null | sed -n 's/.*"kld_mean": \([0-9.e+-]*\).*/\1/p')
awk -v a="$k0" -v b="$k1" 'BEGIN { exit !(a == 0 && b > 0) }' && ok || bad "--kld: '$k0' against itself, '$k1' after mxfp4"
expect_fail 2 "expected a non-empty list of int32" -- $B logits --model $M --ids "$T/odd.f32" --out "$T/x.f32"
printf '\377\377\377\177' >"$T/big.i32"
expect_fail 2 "outside the vocabulary" -- $B logits --model $M --ids "$T/big.i32" --out "$T/x.f32"
[ ! -e "$T/x.f32" ] && ok || bad "logits left an output behind after a failure"

# an interrupted run leaves no output behind, and a rerun succeeds
$B sweep --model $M --text data/wikitext-2-test.txt --ctx 256 --chunks 40 --formats fp32,bfp6_b16,mxfp4 --out "$T/sw" 2>/dev/null &
pid=$!
sleep 2
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
[ -z "$(ls "$T" | grep '^sw')" ] && ok || bad "killed sweep left: $(ls "$T" | grep '^sw')"
$B sweep --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --formats fp32,bfp6_b16 --out "$T/sw" 2>/dev/null &&
    [ -s "$T/sw.md" ] && [ -s "$T/sw.json" ] && grep -q "<svg" "$T/sw.svg" && ok || bad "sweep rerun after a kill"
# sweep and sensitivity read the tokenizer a GGUF (or .bq) file carries, as ppl does
$B quantize --model $M --wq f32 --out "$T/f32.gguf" >/dev/null 2>&1 &&
    a=$($B sweep --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --formats mxfp4 --out "$T/swf" 2>&1 | grep -o "ppl [0-9.]*") &&
    b=$($B sweep --model "$T/f32.gguf" --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --formats mxfp4 --out "$T/swg" 2>&1 | grep -o "ppl [0-9.]*") &&
    [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "sweep of the GGUF export: '$b', of the folder: '$a'"
$B sensitivity --model "$T/f32.gguf" --text data/wikitext-2-test.txt --formats mxfp4 --ctx 64 --chunks 1 --out "$T/sg" >/dev/null 2>&1 &&
    [ -s "$T/sg.json" ] && ok || bad "sensitivity of a GGUF file"
expect_fail 2 "bad setting" -- $B sweep --model $M --text data/wikitext-2-test.txt --formats "fp32,/x"
expect_fail 2 "unknown format 'nope'" -- $B sweep --model $M --text data/wikitext-2-test.txt --formats "fp32,nope"
expect_fail 2 "matches no tensor" -- $B ppl --model $M --text data/wikitext-2-test.txt --chunks 1 --config tests/data/unmatched.toml --strict
expect_fail 2 "bad.toml:2" -- $B ppl --model $M --text data/wikitext-2-test.txt --chunks 1 --config tests/data/bad.toml

# cost model and search
$B cost --formats fp32,bfp6_b16 --json | grep -q '"format": "bfp6_b16", "bits_per_element": 6.5000, "memory_density": 4.9231' && ok || bad "cost --json"
expect_fail 2 "impossible budget 3.000 bits" -- $B search --model $M --text data/wikitext-2-valid-tokenized.txt --formats bfp4_b16,bfp8_b16 --budget 3
expect_fail 2 "unknown format 'bfp1'" -- $B search --model $M --text data/wikitext-2-valid-tokenized.txt --formats bfp1,bfp8_b16 --budget 5
S="--model $M --text data/wikitext-2-valid-tokenized.txt --formats bfp4_b16,bfp8_b16 --budget 6 --ctx 16 --chunks 1 --trials 3 --seed 4"
$B search $S --out "$T/s1" >/dev/null 2>&1 && cp "$T/s1.json" "$T/first.json" &&
    $B search $S --out "$T/s1" >/dev/null 2>"$T/s1.err" && cmp -s "$T/s1.json" "$T/first.json" && grep -q "3 trials resumed" "$T/s1.err" &&
    ls "$T"/s1-p0.toml >/dev/null && ok || bad "search not deterministic, or did not resume its trials"
$B ppl --model $M --text data/wikitext-2-test.txt --ctx 16 --chunks 1 --config "$T/s1-p0.toml" --strict >/dev/null && ok || bad "ppl rejects the config search wrote"
# --cost synth: densities from the synthesised areas (a cache of Yosys statistics made here: bfp4 2, bfp8 8,
# fp32 64 area units a lane, so the uniform points have density 32x and 8x); a format without hardware is refused
C="$T/rtlcache"
for d in "bfp4_b16 bq_dot_bfp4_b16_bfp4_b16 32" "bfp8_b16 bq_dot_bfp8_b16_bfp8_b16 128" "fp32 bq_fma_fp32_fp32 64"; do
    set -- $d
    $B rtl $1 --out "$C/$2" >/dev/null && printf 'Number of cells: 1\n$_AND_ %s\n' "$3" >"$C/$2/$2_gates.txt" &&
        echo "(length=1)" >"$C/$2/$2_ltp.txt" && echo "SB_LUT4 1" >"$C/$2/$2_ice40.txt" || bad "rtl cache for $1"
done
BQ_RTL_CACHE="$C" $B search $S --out "$T/s3" --cost synth >/dev/null 2>"$T/s3.err" && grep -q "synthesised area per lane" "$T/s3.md" &&
    grep -q "| uniform bfp4_b16 | 4.500 | 32.00x |" "$T/s3.md" && grep -q "| uniform bfp8_b16 | 8.500 | 8.00x |" "$T/s3.md" &&
    grep -q "<svg" "$T/s3-density.svg" && ok || bad "search --cost synth: $(cat "$T/s3.err" "$T/s3.md")"
expect_fail 2 "has no generated hardware to synthesise" -- $B search --model $M --text data/wikitext-2-valid-tokenized.txt --formats int4_asym_g128,bfp8_b16 --budget 6 --cost synth
# a search killed midway leaves no result files (only its finished trials), and resumes
# to what an uninterrupted run writes (120 trials, about 7 s here: killed once its first
# trials are in the log, whatever the machine's speed)
SK="${S%--trials 3 --seed 4}--trials 120 --seed 4"
$B search $SK --out "$T/s2" >/dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ] && [ "$(cat "$T/s2-trials.txt" 2>/dev/null | wc -l)" -lt 3 ]; do sleep 0.1; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
[ -z "$(ls "$T" | grep -E '^s2\.(md|json|svg)|^s2-p|^s2-density|tmp')" ] && [ -s "$T/s2-trials.txt" ] && ok ||
    bad "killed search left: $(ls "$T" | grep -E '^s2|tmp') (or no trials: the kill came too early or too late)"
$B search $SK --out "$T/s2" >/dev/null 2>"$T/s2.err" && $B search $SK --out "$T/s2ref" >/dev/null 2>&1 &&
    cmp -s "$T/s2.json" "$T/s2ref.json" && grep -q "trials resumed" "$T/s2.err" && ok || bad "search rerun after a kill differs, or resumed nothing"

# packed models: .bq and GGUF files run like the folder they came from
$B quantize --model $M --wq mxfp4 --aq mxint8 --out "$T/m.bq" >/dev/null && ok || bad "quantize to .bq"
a=$($B ppl --model "$T/m.bq" --text data/wikitext-2-test.txt --ctx 64 --chunks 2 | tail -1)
b=$($B ppl --model $M --wq mxfp4 --aq mxint8 --packed --text data/wikitext-2-test.txt --ctx 64 --chunks 2 | tail -1)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad ".bq ppl '$a' vs in-memory packed '$b'"
$B tokenize --model "$T/m.bq" --text "Hello, world!" --json | grep -q '^\[40, 484, 79, 12, 1994, 1\]$' && ok || bad "tokenize from .bq"
$B quantize --model $M --wq int8_b32_sfp16 --out "$T/m.gguf" >/dev/null && $B generate --model "$T/m.gguf" --prompt "In the beginning" -n 4 >"$T/g1" 2>/dev/null &&
    $B generate --model $M --wq int8_b32_sfp16 --prompt "In the beginning" -n 4 >"$T/g2" 2>/dev/null && cmp -s "$T/g1" "$T/g2" && ok || bad "GGUF generate differs"
expect_fail 2 "no exact GGUF type" -- $B quantize --model $M --wq mxint8 --out "$T/x.gguf"
[ ! -e "$T/x.gguf" ] && ok || bad "a refused GGUF was written"
expect_fail 2 "stored packed as mxfp4" -- $B ppl --model "$T/m.bq" --wq bfp8_b16 --text data/wikitext-2-test.txt --chunks 1
head -c 5000 "$T/m.bq" >"$T/cut.bq"
expect_fail 2 "truncated" -- $B ppl --model "$T/cut.bq" --text data/wikitext-2-test.txt --chunks 1
expect_fail 2 "unknown magic" -- $B ppl --model "$T/odd.f32" --text data/wikitext-2-test.txt --chunks 1
expect_fail 2 "usage: blockq quantize" -- $B quantize --model $M --out "$T/y.bq"

# hostile inputs (issue 14): destinations, stale temporaries, escaped JSON, empty lists, hostile tokenizers
ln -s "$T/target.f32" "$T/link.f32"
expect_fail 2 "symbolic link" -- $B qdq mxfp4 --shape 8x96 "$T/in.f32" "$T/link.f32"
[ -L "$T/link.f32" ] && [ ! -e "$T/target.f32" ] && ok || bad "--out onto a symlink replaced the link"
expect_fail 2 "not a regular file" -- $B qdq mxfp4 --shape 8x96 "$T/in.f32" /dev/null
printf 'x' >"$T/o.f32.tmp.999999"; printf 'y' >"$T/o.f32.tmp.$$"
$B qdq mxfp4 --shape 8x96 "$T/in.f32" "$T/o.f32" && [ ! -e "$T/o.f32.tmp.999999" ] && [ -e "$T/o.f32.tmp.$$" ] && ok ||
    bad "a dead run's temporary was not removed, or a live one's was"
rm -f "$T/o.f32.tmp.$$"
q="$T/a\"b\\c.txt"
cp data/wikitext-2-test.txt "$q"
$B ppl --model $M --text "$q" --ctx 16 --chunks 1 --json >"$T/q.json" &&
    /usr/bin/python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["text"] == sys.argv[2]' "$T/q.json" "$q" &&
    ok || bad "ppl --json with a quote and a backslash in a path: $(cat "$T/q.json")"
expect_fail 2 "empty entry" -- $B sweep --model $M --text data/wikitext-2-test.txt --formats ""
expect_fail 2 "empty entry" -- $B sweep --model $M --text data/wikitext-2-test.txt --formats "fp32,,mxfp4"
mkdir "$T/hm" && cp $M/config.json $M/*.safetensors* "$T/hm/" &&
    /usr/bin/python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); t["model"]["merges"].append([1, 2]); json.dump(t, open(sys.argv[2], "w"))' \
        $M/tokenizer.json "$T/hm/tokenizer.json"
expect_fail 2 "merge 7935 is neither" -- $B quantize --model "$T/hm" --wq int8_b32_sfp16 --out "$T/h.gguf"
[ ! -e "$T/h.gguf" ] && ok || bad "a GGUF with a hostile tokenizer was written"
$B quantize --model $M --wq int8_b32_sfp16 --aq mxint8 --kv bfp8_b16 --out "$T/a.gguf" >/dev/null &&
    a=$($B ppl --model "$T/a.gguf" --text data/wikitext-2-test.txt --ctx 64 --chunks 2 | tail -1) &&
    b=$($B ppl --model $M --wq int8_b32_sfp16 --aq mxint8 --kv bfp8_b16 --packed --text data/wikitext-2-test.txt --ctx 64 --chunks 2 | tail -1) &&
    [ "$a" = "$b" ] && ok || bad "GGUF lost --aq/--kv: '$a' vs '$b'"

# downstream tasks
$B eval --model $M --tasks tests/data/mc_tiny.jsonl,tests/data/cloze_tiny.jsonl --json >"$T/ev.json" &&
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert [x["kind"] for x in d] == ["multiple_choice", "cloze"] and d[0]["items"] == 3' "$T/ev.json" &&
    ok || bad "eval --json: $(cat "$T/ev.json")"
$B sweep --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --formats fp32,mxfp4 --task tests/data/mc_tiny.jsonl --out "$T/swt" 2>/dev/null &&
    grep -q '| task acc |' "$T/swt.md" && grep -q '"task_acc": ' "$T/swt.json" && ok || bad "sweep --task: $(cat "$T/swt.md")"
printf '{"context": "a", "choices": [" b"], "gold": 0}\n{"context": "a", "choices": [" b"], "gold": 5}\n' >"$T/bad.jsonl"
expect_fail 2 "bad.jsonl:2: \"gold\" must be an index" -- $B eval --model $M --tasks "$T/bad.jsonl"

# --device: cuda without a GPU is an error (exit 2); auto falls back to the CPU and says so
if ! $B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --device cuda >/dev/null 2>"$T/dev.err"; then
    grep -q "CUDA" "$T/dev.err" && ok || bad "--device cuda without a GPU: $(cat "$T/dev.err")"
    $B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --device auto >/dev/null 2>"$T/auto.err" &&
        grep -q "running on the CPU" "$T/auto.err" && ok || bad "--device auto did not fall back"
    expect_fail 2 "finetune: --device cuda:" -- $B finetune --model $M --text data/wikitext-2-valid-tokenized.txt --out "$T/ftdev" --device cuda
else
    echo "SKIP: a CUDA device is present; the no-GPU fallback is not exercised here"
fi
expect_fail 2 "bad --device" -- $B ppl --model $M --text data/wikitext-2-test.txt --device tpu

# post-training algorithms: what they change (folded norms, rotated and updated weights, the
# online rotation) is in the saved .bq, which scores exactly as the packed model in memory;
# refusals by name
PQ="--wq q4_0 --aq int8 --kv int4_g64 --ptq rotate,hadamard,hadamard_kv,smoothquant,gptq --calib-chunks 1 --calib-ctx 256"
$B quantize --model $M $PQ --out "$T/ptq.bq" >/dev/null 2>&1 &&
a=$($B ppl --model "$T/ptq.bq" --text data/wikitext-2-test.txt --ctx 128 --chunks 2 2>/dev/null | grep "^ppl") &&
b=$($B ppl --model $M $PQ --packed --text data/wikitext-2-test.txt --ctx 128 --chunks 2 2>/dev/null | grep "^ppl") &&
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "--ptq rotate,hadamard,hadamard_kv,smoothquant,gptq: the .bq scores '$a', the model in memory '$b'"
head -c 24 "$T/ptq.bq" | od -An -tu4 -j8 -N4 | grep -qw 3 && ok || bad "a .bq with an online rotation is not version 3"
# GPTQ with a tensor scale held (nvfp4, int8): the packed file scores as the fake-quantised model
for f in nvfp4 int8 int4_row:actorder; do
    PQ="--wq ${f%:*} --ptq gptq$(case $f in *:*) echo ":${f#*:}" ;; esac) --calib-chunks 1 --calib-ctx 256"
    $B quantize --model $M $PQ --out "$T/gptq_${f%:*}.bq" >/dev/null 2>&1 &&
    a=$($B ppl --model "$T/gptq_${f%:*}.bq" --text data/wikitext-2-test.txt --ctx 128 --chunks 2 2>/dev/null | grep "^ppl") &&
    b=$($B ppl --model $M $PQ --text data/wikitext-2-test.txt --ctx 128 --chunks 2 2>/dev/null | grep "^ppl") &&
    [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "$PQ: the .bq scores '$a', the fake-quantised model '$b'"
done
expect_fail 2 "unknown post-training algorithm 'gptq:foo'" -- $B ppl --model $M --text data/wikitext-2-test.txt --wq q4_0 --ptq gptq:foo
expect_fail 2 "rotated online (ptq hadamard), which GGUF cannot express" -- $B quantize --model $M --wq q4_0 --ptq hadamard --out "$T/had.gguf"
[ ! -e "$T/had.gguf" ] && ok || bad "a refused GGUF export left a file behind"
# LoRC factors travel in a .bq (version 2): the file scores what the packed model in memory scores
$B quantize --model $M --wq int4_g128 --aq mxint8 --ptq lorc:4 --out "$T/lorc.bq" >/dev/null 2>&1 || bad "quantize --ptq lorc to .bq failed"
a=$($B ppl --model "$T/lorc.bq" --text data/wikitext-2-test.txt --ctx 64 --chunks 2 2>/dev/null | tail -1)
b=$($B ppl --model $M --wq int4_g128 --aq mxint8 --ptq lorc:4 --packed --text data/wikitext-2-test.txt --ctx 64 --chunks 2 2>/dev/null | tail -1)
c=$($B ppl --model $M --wq int4_g128 --aq mxint8 --packed --text data/wikitext-2-test.txt --ctx 64 --chunks 2 2>/dev/null | tail -1)
[ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" != "$c" ] && ok || bad "LoRC .bq '$a' vs in memory '$b' (without LoRC '$c')"
head -c 24 "$T/lorc.bq" | od -An -tu4 -j8 -N4 | grep -qw 2 && ok || bad "a .bq with LoRC factors is not version 2"
$B quantize --model $M --wq int4_g128 --out "$T/plain.bq" >/dev/null 2>&1 && head -c 24 "$T/plain.bq" | od -An -tu4 -j8 -N4 | grep -qw 1 &&
    ok || bad "a .bq without LoRC factors is not version 1"
expect_fail 2 "GGUF cannot express" -- $B quantize --model $M --wq int4_g128 --ptq lorc:4 --out "$T/lorc.gguf"
# the algorithms asked for in a config file calibrate like --ptq (they used to run on no statistics)
printf 'ptq = "gptq"\ndefault = { w = "int4_g128" }\n' >"$T/ptq.toml"
a=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --config "$T/ptq.toml" --calib-chunks 1 --calib-ctx 128 2>/dev/null | grep "^ppl")
b=$($B ppl --model $M --text data/wikitext-2-test.txt --ctx 64 --chunks 1 --wq int4_g128 --ptq gptq --calib-chunks 1 --calib-ctx 128 2>/dev/null | grep "^ppl")
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "ptq in a config: '$a', --ptq: '$b'"
expect_fail 2 "unknown post-training algorithm 'hqq'" -- $B ppl --model $M --text data/wikitext-2-test.txt --wq q4_0 --ptq hqq
expect_fail 2 "fewer than the 5000 asked" -- $B ppl --model $M --text data/wikitext-2-test.txt --wq q4_0 --ptq gptq --calib-chunks 5000 --calib-ctx 512

# finetune: a run cut in two (--stop-after, then --resume) writes the same model as one
# run; the folder it writes is a model every command reads; bad input refused by name
# a bf16 checkpoint with NaN/Inf in a weight: refused by name whether its 16 bits are held
# (views of the mapped file, scanned at load) or widened to float32
if [ -d ../shared/models/tiny/llama ] && /usr/bin/python3 -c "import numpy" 2>/dev/null; then
    for bad in 7fc0:NaN 7f80:Inf; do
        D="$T/bad16_${bad##*:}"; mkdir -p "$D" && cp ../shared/models/tiny/llama/config.json $M/tokenizer.json "$D/"
        /usr/bin/python3 - ../shared/models/tiny/llama/model.safetensors "$D/model.safetensors" "${bad%%:*}" <<'PY'
import json, struct, sys, numpy as np
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + hl]); data = b[8 + hl:]
out, blobs, off = {}, [], 0
for k, v in h.items():
    if k == "__metadata__": continue
    s, e = v["data_offsets"]
    a = np.frombuffer(data[s:e], dtype=np.float32 if v["dtype"] == "F32" else np.uint16)
    u = (a.view(np.uint32) >> 16).astype(np.uint16) if v["dtype"] == "F32" else a.copy()
    if k.endswith("layers.0.self_attn.q_proj.weight"): u[5] = int(sys.argv[3], 16)
    by = u.tobytes(); out[k] = {"dtype": "BF16", "shape": v["shape"], "data_offsets": [off, off + len(by)]}; blobs.append(by); off += len(by)
hj = json.dumps(out).encode(); hj += b" " * ((8 - len(hj) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
PY
        for h in native f32; do
            expect_fail 2 "q_proj.* holds ${bad##*:} at index 5" -- $B ppl --model "$D" --text data/wikitext-2-test.txt --ctx 16 --chunks 1 --hold $h
        done
    done
else
    echo "SKIP: non-finite bf16 weights: need ../shared/models/tiny/llama and numpy for /usr/bin/python3"
fi

if [ -d ../shared/models/tiny/llama ]; then
    S="$T/tinyllama"  # the tiny checkpoint with the bundled model's tokenizer (the same 8192 ids)
    mkdir -p "$S" && cp ../shared/models/tiny/llama/* "$S/" && cp $M/tokenizer.json "$S/"
    FT="--model $S --text data/wikitext-2-test.txt --steps 4 --ctx 32 --accum 2 --wq mxfp4 --aq mxint8 --lora 4 --train linears,norms --lr 1e-3"
    $B finetune $FT --out "$T/ft1" --val data/wikitext-2-valid-tokenized.txt --val-chunks 2 --json >"$T/ft1.json" 2>/dev/null &&
    /usr/bin/python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; assert r["val_windows"] == 2 and r["val_loss"] > 0, r' "$T/ft1.json" &&
    $B finetune $FT --out "$T/ft2" --stop-after 2 >/dev/null 2>"$T/ft.err" && [ -f "$T/ft2.ckpt" ] && [ ! -e "$T/ft2" ] &&
    $B finetune $FT --out "$T/ft2" --resume >/dev/null 2>>"$T/ft.err" && [ ! -e "$T/ft2.ckpt" ] &&
    cmp -s "$T/ft1/model.safetensors" "$T/ft2/model.safetensors" && ok || bad "finetune resumed differs from one run: $(cat "$T/ft.err")"
    $B ppl --model "$T/ft1" --text data/wikitext-2-test.txt --ctx 32 --chunks 1 --wq mxfp4 --aq mxint8 >/dev/null 2>&1 && ok || bad "ppl on the fine-tuned folder"
    $B finetune $FT --out "$T/ft3" --stop-after 1 >/dev/null 2>&1
    expect_fail 2 "exists from an earlier run" -- $B finetune $FT --out "$T/ft3"
    expect_fail 2 "a checkpoint of another run" -- $B finetune $FT --out "$T/ft3" --resume --lr 2e-3
    expect_fail 2 "exists: remove it" -- $B finetune $FT --out "$T/ft1"
    printf 'just a few words\n' >"$T/short.txt"
    expect_fail 2 "shorter than one window" -- $B finetune --model $S --text "$T/short.txt" --out "$T/ft4" --ctx 64
    expect_fail 2 "fine-tuning covers pre-norm decoders" -- $B finetune --model ../shared/models/tiny/opt-proj --text data/wikitext-2-test.txt --out "$T/ft5"
    # GPT-2 (LayerNorm, learned positions, GELU, Conv1D tensors): fine-tuned into a Hugging Face
    # folder and into a .bq by the same run; ppl reads both alike, lower than the untrained model's
    G="$T/tinygpt2"; mkdir -p "$G" && cp ../shared/models/tiny/gpt2/* "$G/" && cp $M/tokenizer.json "$G/"
    GQ="--text data/wikitext-2-test.txt --ctx 32 --chunks 4 --wq mxfp4 --aq mxfp4 --json"
    GT="--model $G --text data/wikitext-2-test.txt --steps 4 --ctx 32 --lr 3e-3 --wq mxfp4 --aq mxfp4"
    $B finetune $GT --out "$T/ftg.bq" >/dev/null 2>&1 && $B finetune $GT --out "$T/ftg" >/dev/null 2>&1 &&
        $B ppl --model "$G" $GQ >"$T/ftg0.json" 2>/dev/null && $B ppl --model "$T/ftg.bq" $GQ >"$T/ftg1.json" 2>/dev/null &&
        $B ppl --model "$T/ftg" $GQ >"$T/ftg2.json" 2>/dev/null &&
        /usr/bin/python3 -c 'import json,sys; p=[json.loads(open(f).read().splitlines()[-1])["ppl"] for f in sys.argv[1:]]; assert p[1] < 0.95 * p[0] and p[2] == p[1], p' "$T/ftg0.json" "$T/ftg1.json" "$T/ftg2.json" &&
        ok || bad "gpt2 finetune to .bq and a folder, then ppl of them: $(cat "$T/ftg0.json" "$T/ftg1.json" "$T/ftg2.json")"
    expect_fail 2 "attn mxint8: blocks of 32 exceed head_dim 16" -- $B finetune --model $S --text data/wikitext-2-test.txt --out "$T/ft6" --attn mxint8
    expect_fail 2 "which only a .bq file holds" -- $B finetune $FT --out "$T/ft7" --lora-beside
    [ ! -e "$T/ft4" ] && [ ! -e "$T/ft5" ] && [ ! -e "$T/ft6" ] && [ ! -e "$T/ft7" ] && ok || bad "a refused finetune left output behind"
    # LoRA beside the quantiser: a .bq with the adapters as low-rank factors, which ppl runs
    $B finetune $FT --out "$T/ft8.bq" --lora-beside >/dev/null 2>"$T/ft.err" &&
    $B ppl --model "$T/ft8.bq" --text data/wikitext-2-test.txt --ctx 32 --chunks 2 --wq mxfp4 --aq mxint8 >"$T/ft8.out" 2>&1 &&
    grep -q "ppl" "$T/ft8.out" && ok || bad "finetune --lora-beside: $(cat "$T/ft.err" "$T/ft8.out")"
else
    echo "SKIP: finetune CLI tests need ../shared/models/tiny/llama"
fi

# tools/williamson.c reproduces the Williamson quadruple src/quant/hadamard.c holds for 172 = 4 x 43
# (39's full search takes minutes: not here)
W=$(mktemp -d)
if ${CC:-cc} -std=c11 -O2 -D_GNU_SOURCE -o "$W/williamson" tools/williamson.c -lm 2>"$W/err"; then
    q=$("$W/williamson" 43 | tail -1)
    grep -qF "$q," src/quant/hadamard.c && ok || bad "williamson 43 printed '$q', not in src/quant/hadamard.c's table"
else bad "tools/williamson.c does not build: $(head -3 "$W/err")"; fi
rm -rf "$W"

echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
