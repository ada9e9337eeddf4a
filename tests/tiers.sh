#!/bin/sh
# `make test`: the optimised tier in front, with the sanitizer tier and the fuzzers
# running beside it (on a machine of two cores each gets one most of the time: their
# builds are one make each, their tests mostly one thread), their output shown when
# they end; then llama.cpp's interop checks, alone. Scratch files are per process
# (harness.h's t_tmp, mktemp in the shell tests), so the tiers do not meet. Fails if
# any part failed.
M="${MAKE:-make} --no-print-directory"
mkdir -p build
$M test-san >build/test-san.log 2>&1 &
san=$!
$M fuzz-short >build/fuzz-short.log 2>&1 &
fz=$!
$M test-opt
opt=$?
wait $san
s=$?
echo "== sanitizer tier (ASan + UBSan; build/test-san.log)"
cat build/test-san.log
wait $fz
f=$?
echo "== fuzzers (build/fuzz-short.log)"
cat build/fuzz-short.log
$M interop
i=$?
echo "make test: optimised tier $opt, sanitizer tier $s, fuzzers $f, interop $i (0: passed)"
[ $opt -eq 0 ] && [ $s -eq 0 ] && [ $f -eq 0 ] && [ $i -eq 0 ]
