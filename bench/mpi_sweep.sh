#!/bin/sh
# issue 21's CPU target: the seed grid's sweep on the bundled model over 2 MPI
# ranks of 1 thread against 1 rank of 1 thread, the same tables required.
#   sh bench/mpi_sweep.sh [CHUNKS]    -> bench/mpi_sweep.jsonl (appended) and a table line
C=${1:-4}
B=$(pwd)/build/blockq
TXT=$(cd "${BQ_SHARED:-../shared}/data" && pwd)/wikitext-2-test.txt
M=$(pwd)/models/llama-19m-en
RUN="mpirun --oversubscribe"; [ "$(id -u)" = 0 ] && RUN="$RUN --allow-run-as-root"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
for np in 1 2; do
    t0=$(date +%s.%N)
    (cd "$T" && $RUN -np $np "$B" sweep --model $M --text $TXT --ctx 512 --chunks $C --threads 1 --out s$np >/dev/null 2>&1) || { echo "sweep -np $np failed"; exit 1; }
    t1=$(date +%s.%N)
    eval "s$np=$(echo "$t1 - $t0" | bc)"
done
same=no; cmp -s "$T/s1.md" "$T/s2.md" && same=yes
sp=$(echo "scale=2; $s1 / $s2" | bc)
line="{\"bench\": \"mpi_sweep\", \"chunks\": $C, \"np1_seconds\": $s1, \"np2_seconds\": $s2, \"speedup\": $sp, \"tables_identical\": \"$same\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\"}"
echo "$line" | tee -a bench/mpi_sweep.jsonl
echo "| seed grid (20 settings), ctx 512 x $C windows, 1 thread a rank | -np 1: $s1 s | -np 2: $s2 s | ${sp}x | tables identical: $same |"
