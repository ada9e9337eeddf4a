# blockq build. `make` -> build/blockq; `make test` runs the tests in an
# optimised build and again under AddressSanitizer + UndefinedBehaviorSanitizer.
CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
SAN     ?=
# Bit-exactness across ISAs: no FMA contraction, no fast-math.
CFLAGS_BASE = -std=c11 -g -Wall -Wextra -Wshadow -Wno-unused-parameter -D_GNU_SOURCE -pthread \
              -ffp-contract=off -fno-math-errno -fno-trapping-math \
              -Iinclude -Isrc/core -Isrc/formats -Isrc/model -Isrc/engine -Isrc/eval -Isrc/quant
CFLAGS  = $(CFLAGS_BASE) $(OPT) $(SAN) -DBQ_HAVE_X86
LDLIBS  = -lopenblas -lpcre2-8 -lcjson -lm -pthread

LIB_SRC = $(wildcard src/core/*.c src/model/*.c src/engine/*.c src/eval/*.c src/quant/*.c) \
          $(filter-out src/formats/kernels.c,$(wildcard src/formats/*.c))
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/%.o) \
          $(BUILD)/kern/kernels_scalar.o $(BUILD)/kern/kernels_avx2.o $(BUILD)/kern/kernels_avx512.o
CLI_SRC = $(wildcard src/cli/*.c)
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)
TESTS   = $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES = $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/bench_*.c))

.PHONY: all test test-opt test-san bench clean
all: $(BUILD)/blockq

$(BUILD)/%.o: %.c $(wildcard include/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The format kernels, once per ISA (chosen at run time).
$(BUILD)/kern/kernels_scalar.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fno-tree-vectorize -DBQ_ISA=scalar -c $< -o $@
$(BUILD)/kern/kernels_avx2.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx2 -mfma -mf16c -DBQ_ISA=avx2 -c $< -o $@
$(BUILD)/kern/kernels_avx512.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mprefer-vector-width=512 \
	    -DBQ_ISA=avx512 -c $< -o $@

$(BUILD)/libblockq.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/blockq: $(CLI_OBJ) $(BUILD)/libblockq.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/harness.h $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)

# Run every test binary and the CLI tests; one summary line at the end.
test-opt: $(TESTS) $(BUILD)/blockq
	@BUILD=$(BUILD) sh tests/run_all.sh $(TESTS)

# The sanitizer tier skips the minutes-long full-text perplexity (BQ_TEST_FAST).
test-san:
	@BQ_TEST_FAST=1 $(MAKE) --no-print-directory BUILD=build/san OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" test-opt

test: test-opt
	@$(MAKE) --no-print-directory test-san

bench: $(BENCHES) $(BUILD)/blockq

clean:
	rm -rf build
