# blockq build. `make` -> build/blockq; `make test` runs the tests in an
# optimised build and again under AddressSanitizer + UndefinedBehaviorSanitizer.
CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
SAN     ?=
# Bit-exactness across ISAs: no FMA contraction, no fast-math.
CFLAGS_BASE = -std=c11 -g -Wall -Wextra -Wshadow -Wno-unused-parameter -D_GNU_SOURCE -pthread \
              -ffp-contract=off -fno-math-errno -fno-trapping-math \
              -Iinclude -Isrc/core -Isrc/formats -Isrc/model -Isrc/engine -Isrc/eval -Isrc/quant -Isrc/search -Isrc/kernels -Isrc/train -Isrc/rtl \
              -Isrc/cuda
# Position-independent with hidden visibility: the same objects make libblockq.a and
# libblockq.so, and the .so exports only what include/blockq.h marks BQ_API.
CFLAGS  = $(CFLAGS_BASE) $(OPT) $(SAN) -fPIC -fvisibility=hidden -DBQ_HAVE_X86 $(EXTRA_CFLAGS)
# CUDA: built in when nvcc is found (CUDA=0 turns it off); the runtime is linked
# statically, so a binary runs on machines without CUDA and says "no CUDA device".
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA    ?= $(if $(NVCC),1,0)
ifeq ($(CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_OBJ  = $(BUILD)/cuda/qdq.o $(BUILD)/cuda/gemv.o $(BUILD)/cuda/gemm.o $(BUILD)/cuda/engine.o $(BUILD)/cuda/libs.o \
            $(BUILD)/cuda/gptq.o $(BUILD)/cuda/train.o $(BUILD)/cuda/attn.o
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
else
CUDA_OBJ  = $(BUILD)/src/cuda/nocuda.o
CUDA_LIBS =
endif
# --fmad=false: no contraction, so the device computes the CPU's bits
NVFLAGS = -O3 -std=c++17 --fmad=false --default-stream per-thread -Xcompiler -fPIC,-fvisibility=hidden -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 \
          -Xcompiler -Wall -Iinclude -Isrc/core -Isrc/formats -Isrc/kernels -Isrc/cuda -Isrc/model -Isrc/engine -Isrc/train $(NVEXTRA)
# MPI: the CLI (only) is built with Open MPI when mpicc is found (MPI=0 turns it
# off); `mpirun -np N blockq ppl|sweep` then spreads the work (src/cli/mpi.c).
MPICC   ?= $(shell command -v mpicc 2>/dev/null)
MPI     ?= $(if $(MPICC),1,0)
ifeq ($(MPI),1)
MPI_CFLAGS = -DBQ_MPI $(shell $(MPICC) --showme:compile)
MPI_LIBS   = $(shell $(MPICC) --showme:link)
endif
LDLIBS  = $(EXTRA_LDFLAGS) -lopenblas -lpcre2-8 -lcjson -lz -lm -pthread $(CUDA_LIBS)

LIB_SRC = $(wildcard src/core/*.c src/model/*.c src/engine/*.c src/eval/*.c src/quant/*.c src/search/*.c src/train/*.c src/rtl/*.c) \
          $(filter-out src/formats/kernels.c,$(wildcard src/formats/*.c)) \
          $(filter-out src/kernels/pk_isa.c,$(wildcard src/kernels/*.c))
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/%.o) \
          $(BUILD)/kern/kernels_scalar.o $(BUILD)/kern/kernels_avx2.o $(BUILD)/kern/kernels_avx512.o \
          $(BUILD)/kern/pk_scalar.o $(BUILD)/kern/pk_avx2.o $(BUILD)/kern/pk_avx512.o $(CUDA_OBJ)
CLI_SRC = $(wildcard src/cli/*.c)
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)
TESTS   = $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES = $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/bench_*.c))

.PHONY: all test test-opt test-san bench clean fuzz fuzz-short gpu gpu-full interop rtl-check
all: $(BUILD)/blockq $(BUILD)/libblockq.so

$(BUILD)/%.o: %.c $(wildcard include/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The format kernels, once per ISA (chosen at run time).
$(BUILD)/kern/kernels_scalar.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h src/formats/isa.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fno-tree-vectorize -DBQ_ISA=scalar -c $< -o $@
$(BUILD)/kern/kernels_avx2.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx2 -mfma -mf16c -DBQ_ISA=avx2 -c $< -o $@
$(BUILD)/kern/kernels_avx512.o: src/formats/kernels.c src/formats/qkern.h src/formats/format.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mprefer-vector-width=512 \
	    -DBQ_ISA=avx512 -c $< -o $@

# L-Mul's matmul is its whole cost (it cannot use SGEMM): -O3 so its loops vectorise
# (its avx2 clone is chosen at run time, src/kernels/lmul.c).
$(BUILD)/src/kernels/lmul.o: src/kernels/lmul.c src/kernels/lmul.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -c $< -o $@

# The packed-weight matmuls, likewise (AVX-512 with VNNI; AVX2 otherwise).
PK_DEPS = src/kernels/pk_isa.c src/kernels/pmat.h src/formats/format.h src/formats/qkern.h src/formats/isa.h
$(BUILD)/kern/pk_scalar.o: $(PK_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fno-tree-vectorize -DBQ_ISA=scalar -c $< -o $@
$(BUILD)/kern/pk_avx2.o: $(PK_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx2 -mfma -mf16c -DBQ_ISA=avx2 -c $< -o $@
$(BUILD)/kern/pk_avx512.o: $(PK_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mfma -mprefer-vector-width=512 \
	    -DBQ_ISA=avx512 -c $< -o $@

$(BUILD)/cuda/%.o: src/cuda/%.cu src/cuda/bq_cuda.h src/cuda/cuda_libs.h src/cuda/launch.cuh src/cuda/norm.cuh src/cuda/block.cuh src/cuda/i8_layout.h src/cuda/knobs.h src/formats/qkern.h src/formats/format.h src/kernels/pmat.h src/model/model.h src/engine/backend.h src/train/tops.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

# The GPU subset (formats, packed kernels, CUDA; no OpenBLAS/PCRE2/cJSON), for a
# GPU machine that lacks those libraries: `make gpu` -> test_cuda and gpu_bench.
GPU_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard src/core/*.c) $(filter-out src/formats/kernels.c,$(wildcard src/formats/*.c)) \
              src/kernels/pmat.c) \
          $(BUILD)/kern/kernels_scalar.o $(BUILD)/kern/kernels_avx2.o $(BUILD)/kern/kernels_avx512.o \
          $(BUILD)/kern/pk_scalar.o $(BUILD)/kern/pk_avx2.o $(BUILD)/kern/pk_avx512.o $(CUDA_OBJ)
$(BUILD)/libbq_gpu.a: $(GPU_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/gpu/test_cuda: tests/test_cuda.c tests/harness.h tests/grid_points.h $(BUILD)/libbq_gpu.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libbq_gpu.a -o $@ -lm -pthread $(CUDA_LIBS)
$(BUILD)/gpu/gpu_bench: bench/gpu_bench.c $(BUILD)/libbq_gpu.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(CUDA_HOME)/include $< $(BUILD)/libbq_gpu.a -o $@ -lm -pthread -L$(CUDA_HOME)/lib64 -lcublasLt $(CUDA_LIBS)
gpu: $(BUILD)/gpu/test_cuda $(BUILD)/gpu/gpu_bench

# The GEMV and fake-quantisation kernels (src/cuda/gemv.cu, qdq.cu) on a CUDA simulator
# on the CPU (tests/cusim: C++20, fibers): test_cuda.c's tests of them run their code without a GPU
# (and under the sanitizers in that tier; -fno-strict-aliasing: the kernels pun
# pointers as CUDA allows).
CXX     ?= g++
SIM_OBJ  = $(filter-out $(CUDA_OBJ),$(GPU_OBJ))
SIM_WARN = -Wall -Wextra -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas -Wno-missing-field-initializers
$(BUILD)/tests/test_cusim: tests/test_cuda.c tests/cusim_kernels.cc $(wildcard tests/cusim/*.h) src/cuda/gemv.cu src/cuda/qdq.cu src/cuda/attn.cu $(wildcard src/cuda/*.cuh) src/engine/backend.h src/model/model.h \
                           $(wildcard src/cuda/*.h src/formats/*.h src/kernels/*.h include/*.h) tests/harness.h tests/grid_points.h $(SIM_OBJ)
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 $(OPT) -g $(SAN) $(SIM_WARN) -fno-strict-aliasing -D_GNU_SOURCE -Itests/cusim -Iinclude -Isrc/core -Isrc/formats -Isrc/kernels \
	    -Isrc/cuda -Isrc/model -Isrc/engine -Isrc/train -c tests/cusim_kernels.cc -o $@.sim.o
	$(CC) $(CFLAGS) -DBQ_CUDA_SIM -Itests -c tests/test_cuda.c -o $@.o
	$(CXX) $(SAN) -pthread $@.o $@.sim.o $(SIM_OBJ) -o $@ -lm
TESTS += $(BUILD)/tests/test_cusim
# With the full library (OpenBLAS, PCRE2, cJSON present): the engine benchmark too.
$(BUILD)/gpu/gpu_ppl_bench: bench/gpu_ppl_bench.c $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)
$(BUILD)/gpu/gpu_decode_ops: bench/gpu_decode_ops.c $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(CUDA_HOME)/include $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)
$(BUILD)/gpu/gpu_train_bench: bench/gpu_train_bench.c $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)
gpu-full: gpu $(BUILD)/gpu/gpu_ppl_bench $(BUILD)/gpu/gpu_decode_ops $(BUILD)/gpu/gpu_train_bench $(BUILD)/blockq \
          $(BUILD)/tests/test_engine $(BUILD)/tests/test_backend $(BUILD)/tests/test_train $(BUILD)/bench/bench_gptq

$(BUILD)/libblockq.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The shared library: static dependencies (the CUDA runtime) stay inside it.
$(BUILD)/libblockq.so: $(LIB_OBJ)
	$(CC) $(CFLAGS) -shared -Wl,--exclude-libs,ALL -Wl,-soname,libblockq.so $^ -o $@ $(LDLIBS)

$(BUILD)/src/cli/mpi.o: src/cli/mpi.c src/cli/cli.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -c $< -o $@

$(BUILD)/blockq: $(CLI_OBJ) $(BUILD)/libblockq.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS) $(MPI_LIBS)

$(BUILD)/tests/%: tests/%.c tests/harness.h tests/grid_points.h $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libblockq.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libblockq.a -o $@ $(LDLIBS)

# Run every test binary and the CLI tests; one summary line at the end.
test-opt: $(TESTS) $(BUILD)/blockq $(BUILD)/libblockq.so
	@BUILD=$(BUILD) sh tests/run_all.sh $(TESTS)

# The sanitizer tier skips the minutes-long full-text perplexity (BQ_TEST_FAST).
test-san:
	@BQ_TEST_FAST=1 BQ_SAN_TIER=1 $(MAKE) --no-print-directory BUILD=build/san OPT=-O1 CUDA=0 \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" test-opt

# The sanitizer tier and the fuzzers run beside the optimised tier (tests/tiers.sh).
test:
	@MAKE="$(MAKE)" sh tests/tiers.sh

# llama.cpp (../shared/peers, built once outside the repository) reading blockq's
# GGUF files: perplexity side by side, llama-quantize's Q4_0/Q8_0 byte for byte (SKIP without the source)
interop: $(BUILD)/blockq
	@sh tests/interop.sh $(BUILD)/blockq

# Every format through the Verilog generator and the simulator (refusals counted by name).
rtl-check: $(BUILD)/blockq
	@RTL_ALL=1 sh tests/rtl_test.sh $(BUILD)/blockq

bench: $(BENCHES) $(BUILD)/blockq

clean:
	rm -rf build

# ---- fuzzing (clang + libFuzzer, AddressSanitizer + UndefinedBehaviorSanitizer) ----
FUZZERS      = format safetensors config tokenizer_json tokenize toml bqfile gguf export
FUZZ_SECONDS ?= 60
FUZZ_BUILD   = build/fuzz
FUZZ_FLAGS   = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_BINS    = $(FUZZERS:%=$(FUZZ_BUILD)/fuzz_%)

# The library for the fuzzers is the ordinary build in build/fuzz, with clang's flags.
ifneq ($(BUILD),$(FUZZ_BUILD))
$(FUZZ_BUILD)/libblockq.a: $(LIB_SRC) src/formats/kernels.c src/kernels/pk_isa.c src/cuda/nocuda.c $(wildcard include/*.h src/*/*.h)
	@$(MAKE) --no-print-directory CC=clang CUDA=0 BUILD=$(FUZZ_BUILD) OPT="-O1 -fsanitize=fuzzer-no-link" SAN="$(FUZZ_FLAGS)" \
	    $(FUZZ_BUILD)/libblockq.a
endif

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/model_file.h $(FUZZ_BUILD)/libblockq.a
	clang $(CFLAGS_BASE) -O1 -fsanitize=fuzzer $(FUZZ_FLAGS) $< $(FUZZ_BUILD)/libblockq.a -o $@ $(LDLIBS)

# Each target for FUZZ_SECONDS on a corpus seeded from fuzz/seeds; crashes land in build/fuzz/.
# Past crashes (fuzz/regressions/TARGET/) are replayed first.
fuzz: $(FUZZ_BINS)
	@for t in $(FUZZERS); do \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$t fuzz/regressions/$$t; \
	    if [ -n "$$(ls fuzz/regressions/$$t)" ]; then $(FUZZ_BUILD)/fuzz_$$t fuzz/regressions/$$t/* >/dev/null 2>&1 || \
	        { echo "fuzz_$$t: a regression input fails again"; exit 1; }; fi; \
	    echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	        -artifact_prefix=$(FUZZ_BUILD)/crash-$$t- -print_final_stats=1 \
	        $(FUZZ_BUILD)/corpus/$$t fuzz/seeds/$$t 2>$(FUZZ_BUILD)/$$t.log || \
	        { tail -40 $(FUZZ_BUILD)/$$t.log; echo "fuzz_$$t FOUND A CRASH"; exit 1; }; \
	    grep -E "stat::number_of_executed_units" $(FUZZ_BUILD)/$$t.log | sed "s/^/  /"; \
	done

# The short pass CI runs as part of `make test`.
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=15
