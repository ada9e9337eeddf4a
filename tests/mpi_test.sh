#!/bin/sh
# The CLI over MPI ranks (issue 21): `mpirun -np N blockq ppl|sweep|sensitivity|search|eval` gives the same
# bits as one process for N = 1, 2, 3 (more ranks than windows or formats too), a
# format that fails on one rank is reported by name, and a bad argument stops every
# rank before any work. SKIP where blockq was built without MPI or mpirun cannot start.
#   sh tests/mpi_test.sh [BLOCKQ]
B=${1:-build/blockq}
B=$(cd "$(dirname "$B")" && pwd)/$(basename "$B")
SH=${BQ_SHARED:-../shared}
TXT=$(cd "$SH/data" 2>/dev/null && pwd)/wikitext-2-test.txt  # absolute: the sweeps run in a temporary folder
M=$(pwd)/models/llama-19m-en
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL mpi: $*"; }
summary() { echo "mpi: $pass passed, $fail failed"; [ $fail -eq 0 ]; exit $?; }
if ! "$B" --version | grep -q "MPI: built in"; then echo "SKIP: blockq built without MPI (no mpicc at build time): ranks not tested"; summary; fi
if [ -n "$BQ_SAN_TIER" ]; then echo "SKIP: sanitizer tier: MPI runs are tested in the optimised tier"; summary; fi
[ -f "$TXT" ] || { echo "SKIP: $TXT absent: ranks not tested"; summary; }
RUN="mpirun --oversubscribe"
[ "$(id -u)" = 0 ] && RUN="$RUN --allow-run-as-root"
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers without ptrace rights
if ! $RUN -np 1 true >/dev/null 2>&1; then echo "SKIP: mpirun cannot start a process here: ranks not tested"; summary; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
ppl() { "$@" ppl --model $M --text $TXT --ctx 128 --chunks 5 --threads 1 --json 2>"$T/err" | sed -n 's/.*"nll": \([0-9.]*\), "ppl": \([0-9.]*\).*/\1 \2/p'; }
one=$(ppl "$B")
[ -n "$one" ] || bad "ppl without mpirun printed nothing: $(tail -1 "$T/err")"
for np in 1 2 3 7; do  # 7: more ranks than the 5 windows
    got=$(ppl $RUN -np $np "$B")
    [ -n "$got" ] && [ "$got" = "$one" ] && ok || bad "ppl -np $np: '$got' vs one process '$one' ($(tail -1 "$T/err"))"
done
got=$($RUN -np 2 "$B" ppl --model $M --text $TXT --ctx 128 --chunks 5 --threads 1 --stages 2 --json 2>"$T/err" |
      sed -n 's/.*"nll": \([0-9.]*\), "ppl": \([0-9.]*\).*/\1 \2/p')  # each rank's windows through its own 2 stages
[ -n "$got" ] && [ "$got" = "$one" ] && ok || bad "ppl -np 2 --stages 2: '$got' vs one process '$one' ($(tail -1 "$T/err"))"
echo "  ppl over 1, 2, 3, 7 ranks (and 2 ranks of 2 pipeline stages): nll ppl = $one"
# sweep: the table, JSON (less the timings) and plot, identical; int4_g4096 fails (blocks longer than a row)
F="fp32,mxfp4,bfp6_b16,int4_g4096,nvfp4"
for np in 1 2 3; do
    (cd "$T" && $RUN -np $np "$B" sweep --model $M --text $TXT --ctx 128 --chunks 2 --threads 1 --formats $F --out s$np >/dev/null 2>"$T/serr$np") ||
        bad "sweep -np $np failed: $(tail -1 "$T/serr$np")"
done
(cd "$T" && "$B" sweep --model $M --text $TXT --ctx 128 --chunks 2 --threads 1 --formats $F --out s0 >/dev/null 2>&1) || bad "sweep without mpirun failed"
for np in 1 2 3; do
    for ext in md svg; do cmp -s "$T/s0.$ext" "$T/s$np.$ext" && ok || bad "sweep -np $np: s$np.$ext differs from one process's"; done
    sed 's/"seconds": [0-9.]*//' "$T/s0.json" >"$T/a"; sed 's/"seconds": [0-9.]*//' "$T/s$np.json" >"$T/b"
    cmp -s "$T/a" "$T/b" && ok || bad "sweep -np $np: JSON differs from one process's"
done
grep -q "int4_g4096.*failed: .*blocks of 4096" "$T/s3.md" && ok || bad "sweep -np 3: the failing format's error is not in the table"
echo "  sweep over 1, 2, 3 ranks: tables, JSON and plot identical to one process"
# sensitivity: the (linear, format) trials dealt over the ranks, the same tables
for np in 0 2 3; do
    pre=""; [ $np -gt 0 ] && pre="$RUN -np $np"
    (cd "$T" && $pre "$B" sensitivity --model $M --text $TXT --ctx 64 --chunks 1 --threads 1 --formats mxfp4,int4_g128 --out n$np >/dev/null 2>"$T/nerr$np") ||
        bad "sensitivity -np $np failed: $(tail -1 "$T/nerr$np")"
done
for np in 2 3; do
    cmp -s "$T/n0.md" "$T/n$np.md" && cmp -s "$T/n0.json" "$T/n$np.json" && ok || bad "sensitivity -np $np: tables differ from one process's"
done
echo "  sensitivity over 2, 3 ranks: tables identical to one process"
# search: the knapsack point, the uniform baselines and the trials dealt over the ranks, the same tables and
# configs; a rerun under another rank count resumes every trial from the log the ranks appended to
SR="--model $M --text $TXT --ctx 32 --chunks 1 --threads 1 --formats bfp4_b16,mxfp6_e2m3,bfp8_b16 --budget 6 --trials 5 --seed 3"
for np in 0 2 3; do
    pre=""; [ $np -gt 0 ] && pre="$RUN -np $np"
    (cd "$T" && $pre "$B" search $SR --out q$np >/dev/null 2>"$T/qerr$np") || bad "search -np $np failed: $(tail -1 "$T/qerr$np")"
done
for np in 2 3; do
    sed "s/q$np/q0/g" "$T/q$np.md" | cmp -s "$T/q0.md" - && cmp -s "$T/q0.json" "$T/q$np.json" && cmp -s "$T/q0-p0.toml" "$T/q$np-p0.toml" &&
        [ "$(sort "$T/q0-trials.txt")" = "$(sort "$T/q$np-trials.txt")" ] && ok || bad "search -np $np: results differ from one process's"
done
(cd "$T" && $RUN -np 2 "$B" search $SR --out q3 >/dev/null 2>"$T/qerr") && grep -q "5 trials resumed" "$T/qerr" &&
    cmp -s "$T/q0.json" "$T/q3.json" && ok || bad "search -np 2 after -np 3 did not resume its trials: $(cat "$T/qerr")"
echo "  search over 2, 3 ranks: tables, JSON, configs and trials identical to one process; resumed across rank counts"
# eval: items dealt over the ranks, scores gathered in item order: the same numbers as one process
TD=$(pwd)/tests/data
for np in 0 2 3; do
    pre=""; [ $np -gt 0 ] && pre="$RUN -np $np"
    $pre "$B" eval --model $M --tasks "$TD/mc_tiny.jsonl,$TD/cloze_tiny.jsonl" --threads 1 --json 2>"$T/eerr$np" |
        sed 's/"seconds": [0-9.]*, "tokens_per_second": [0-9.]*//' >"$T/e$np.json"
    grep -q '"kind": "multiple_choice"' "$T/e$np.json" && grep -q '"kind": "cloze"' "$T/e$np.json" || bad "eval -np $np: $(tail -1 "$T/eerr$np")"
done
for np in 2 3; do cmp -s "$T/e0.json" "$T/e$np.json" && ok || bad "eval -np $np differs: $(cat "$T/e0.json" "$T/e$np.json")"; done
echo "  eval over 2, 3 ranks: accuracies, errors, ppl and token counts identical to one process"
# bad input: every rank stops before any work, the same message, exit 2
$RUN -np 2 "$B" ppl --model $M --text $TXT --ctx 1 >/dev/null 2>"$T/e"; rc=$?
[ $rc -ne 0 ] && grep -q "bad --ctx" "$T/e" && ok || bad "ppl --ctx 1 under mpirun: exit $rc, $(tail -1 "$T/e")"
# --kld: each rank scores its windows against the float model; every per-token value added
kld() { "$@" ppl --model $M --text $TXT --ctx 64 --chunks 5 --threads 1 --wq mxfp4 --kld --json 2>"$T/err" | sed -n 's/.*\("nll".*\), "seconds".*\("kld_mean".*\)/\1 \2/p'; }
k1=$(kld "$B")
for np in 2 3; do
    got=$(kld $RUN -np $np "$B")
    [ -n "$k1" ] && [ "$got" = "$k1" ] && ok || bad "ppl --kld -np $np: '$got' vs one process '$k1' ($(tail -1 "$T/err"))"
done
$RUN -np 2 "$B" eval --tasks "$T/nosuch.jsonl" --model $M >/dev/null 2>"$T/e"; rc=$?
[ $rc -ne 0 ] && grep -q "nosuch.jsonl" "$T/e" && ok || bad "eval of a missing file under mpirun: exit $rc, $(tail -1 "$T/e")"
summary
