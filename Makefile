# Makefile -- builds celeriac; `make test` and `make run` do all set-up.
#
#   make            install missing Debian packages, build bin/celeriac, bin/celeriac-executor
#   make asan       the same programs with AddressSanitizer+UBSan under build/asan/bin/
#   make test       deps, both builds, C unit tests (asan), the CUDA backend on the CUDA
#                   emulator (tests/cuda-emu), integration tests (pytest)
#   make run        deps, build, then Redis + worker + Gunicorn, see scripts/run
#   make bench      throughput/latency benchmark against the stock Python worker
#   make chaos      kill -9 of main, executors, Redis under 3,000 mixed tasks, 5 rounds
#   make soak       20 minutes of mixed load; RSS and open fds must not grow (scripts/soak)
#   make wait-race  15,000 HTTP waits for tasks ending as they subscribe: none may be missed
#   make restart-stress  example-client sessions while Gunicorn restarts its web workers
#   make cuda       the CUDA backend (bin/libceleriac-cuda.so) and its GPU tests (build/gpu/),
#                   also part of `make` whenever nvcc is found
#   make cuda-emu   the same backend and tests against the CUDA emulator (build/cuda-emu/),
#                   part of `make test` (no GPU needed)
#   make fuzz       each libFuzzer harness in tests/fuzz/ for FUZZ_SECONDS (see tests/fuzz/README.md)
#   make format     clang-format the C, CUDA and C++ sources (.clang-format)
#   make clean

CC      ?= cc
PKGS    := libuv hiredis jansson msgpack librabbitmq
# message compression (protocol/compress.c); libbz2 ships no .pc file
ZIP_PKGS := zlib liblzma libzstd libbrotlienc libbrotlidec
MODEL_PKGS := openblas libxxhash
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
           -Wshadow -Wstrict-prototypes -fno-strict-aliasing
DEPCFLAGS = $(shell pkg-config --cflags $(PKGS) $(ZIP_PKGS) 2>/dev/null)
DEPLIBS   = $(shell pkg-config --libs $(PKGS) $(ZIP_PKGS) 2>/dev/null) -lbz2 -lm
MODELCFLAGS = $(shell pkg-config --cflags $(MODEL_PKGS) 2>/dev/null)
MODELLIBS   = $(shell pkg-config --libs $(MODEL_PKGS) 2>/dev/null) -lm
ASANFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

COMMON_SRC   := $(wildcard common/*.c)
PROTOCOL_SRC := $(wildcard protocol/*.c) $(COMMON_SRC)
# The main process (worker/) and the executor (executor/) share protocol/ and common/.
WORKER_SRC   := $(wildcard worker/*.c)
# The model engine (model/): a library linked into celeriac-lm and the executor
# (never into bin/celeriac: the main process has no model and no OpenBLAS).
# Its CLI's main lives in model/cli/.
MODEL_SRC    := $(wildcard model/*.c model/cpu/*.c)
EXEC_SRC     := $(wildcard executor/*.c) $(MODEL_SRC)
LM_SRC       := $(wildcard model/cli/*.c)
UNIT_SRC     := $(wildcard tests/unit/test_*.c)

OBJ      := build/obj
AOBJ     := build/asan/obj

# The CUDA backend: a shared library the executor and celeriac-lm dlopen when
# --device asks for a GPU (the main process never loads it). Built whenever
# nvcc is found; without it the build is CPU-only.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]
NVFLAGS   := -O2 -g -std=c++17 $(CUDA_ARCH) -Werror all-warnings \
             -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-Wno-unused-parameter -D_GNU_SOURCE
CUDA_SRC  := $(wildcard model/cuda/*.cu)
CUDA_OBJ  := $(patsubst %.cu,build/cuda/%.o,$(CUDA_SRC))
CUDA_LIB_OBJ := $(CUDA_OBJ) build/cuda/common/err.o
GPU_TEST_SRC := $(wildcard tests/gpu/test_*.cu)
GPU_TESTS := $(patsubst tests/gpu/%.cu,build/gpu/%,$(GPU_TEST_SRC))
CUDA_LIB  := $(if $(NVCC),$(if $(CUDA_SRC),bin/libceleriac-cuda.so))

BINS      := bin/celeriac bin/celeriac-executor $(if $(LM_SRC),bin/celeriac-lm) $(CUDA_LIB)
ASAN_BINS := build/asan/bin/celeriac build/asan/bin/celeriac-executor $(if $(LM_SRC),build/asan/bin/celeriac-lm)
UNIT_BINS := $(patsubst tests/unit/%.c,build/asan/tests/%,$(UNIT_SRC))

PY := /usr/bin/python3

.PHONY: all asan test unit integration run bench deps clean cuda cuda-emu fuzz fuzz-build fuzz-merge format \
        chaos soak wait-race restart-stress
all: deps
	@$(MAKE) --no-print-directory $(BINS)

deps:
	@scripts/install-deps

asan: deps
	@$(MAKE) --no-print-directory $(ASAN_BINS) $(UNIT_BINS) $(REPLAY_BINS)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -MMD -MP -c $< -o $@

$(AOBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -MMD -MP -c $< -o $@

bin/celeriac: $(patsubst %.c,$(OBJ)/%.o,$(WORKER_SRC) $(PROTOCOL_SRC))
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(DEPLIBS)

bin/celeriac-executor: $(patsubst %.c,$(OBJ)/%.o,$(EXEC_SRC) $(PROTOCOL_SRC))
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS)

build/asan/bin/celeriac: $(patsubst %.c,$(AOBJ)/%.o,$(WORKER_SRC) $(PROTOCOL_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) -o $@ $^ $(DEPLIBS)

build/asan/bin/celeriac-executor: $(patsubst %.c,$(AOBJ)/%.o,$(EXEC_SRC) $(PROTOCOL_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS)

bin/celeriac-lm: $(patsubst %.c,$(OBJ)/%.o,$(LM_SRC) $(MODEL_SRC) $(COMMON_SRC))
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS)

build/asan/bin/celeriac-lm: $(patsubst %.c,$(AOBJ)/%.o,$(LM_SRC) $(MODEL_SRC) $(COMMON_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS)

build/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -MMD -MP -c $< -o $@

# common/ (the error type) goes into the .so as position-independent code. The .so
# carries cudart statically; cuBLAS is a dynamic dependency of the .so only.
build/cuda/common/%.o: common/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -fvisibility=hidden -MMD -MP -c $< -o $@

bin/libceleriac-cuda.so: $(CUDA_LIB_OBJ)
	@mkdir -p bin
	$(NVCC) $(NVFLAGS) -shared -Xcompiler -fvisibility=hidden -o $@ $^ -lcublas -lcublasLt \
		-cudart static

# GPU tests: each links the CUDA objects and the CPU engine (its twin to compare
# with). They print "skipped: ..." and exit 0 where no GPU is visible.
GPU_HOST_OBJ := $(patsubst %.c,$(OBJ)/%.o,$(filter-out model/tokenizer%.c model/unicode%.c,$(wildcard model/*.c)) $(wildcard model/cpu/*.c) common/err.c)
build/gpu/%: tests/gpu/%.cu $(CUDA_OBJ) $(GPU_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -o $@ $^ -lcublas -lcublasLt -cudart static $(DEPLIBS) $(MODELLIBS) -ldl

# The oracle helper (tests/unit/model_oracle_helper.c): the engine driven by a JSON spec, for
# tests/integration/test_model_oracle.py, tests/gpu/ (scripts/gpu-bundle ships it) and
# tests/cuda-emu/. -ldl: model/device.c dlopens the CUDA backend.
ORACLE_HELPER := build/oracle/model_oracle_helper
$(ORACLE_HELPER): tests/unit/model_oracle_helper.c $(GPU_HOST_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS) -ldl
build/asan/oracle/model_oracle_helper: tests/unit/model_oracle_helper.c $(patsubst $(OBJ)/%,$(AOBJ)/%,$(GPU_HOST_OBJ))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -o $@ $^ $(DEPLIBS) $(MODELLIBS) -ldl

# The CUDA emulator (tests/cuda-emu/, test code only): model/cuda's kernels, engine and GPU
# tests built with the host C++ compiler against a host emulation of CUDA and cuBLAS, every
# memory access of the backend checked (-fsanitize=kernel-address hooks land in the
# emulator). build/cuda-emu/libceleriac-cuda.so is the backend the tests select with
# CELERIAC_CUDA_LIB; build/cuda-emu/test_* are tests/gpu's tests and the emulator's own.
EMU        := build/cuda-emu
EMU_CXX    ?= g++
EMU_FLAGS  := -O2 -g -std=c++17 -fPIC -Itests/cuda-emu/include -D_GNU_SOURCE -Wall -Wextra \
              -Werror -Wno-unused-parameter -Wno-unknown-pragmas -ffp-contract=off \
              -fno-strict-aliasing
EMU_CLANG  := $(shell $(EMU_CXX) --version 2>/dev/null | grep -q clang && echo 1)
EMU_CHECKED := -fsanitize=kernel-address $(if $(EMU_CLANG),-mllvm -asan-instrumentation-with-call-threshold=0 \
              -mllvm -asan-stack=0 -mllvm -asan-globals=0,--param asan-instrumentation-with-call-threshold=0 \
              --param asan-stack=0 --param asan-globals=0)
EMU_RT_OBJ := $(patsubst tests/cuda-emu/%.cpp,$(EMU)/rt/%.o,$(wildcard tests/cuda-emu/emu_*.cpp))
EMU_HDR    := $(patsubst %,$(EMU)/src/%,$(wildcard model/cuda/*.h))
EMU_CU_OBJ := $(patsubst %.cu,$(EMU)/obj/%.o,$(CUDA_SRC))
EMU_TEST_SRC := $(wildcard tests/cuda-emu/test_*.cu)
EMU_TESTS  := $(patsubst tests/gpu/%.cu,$(EMU)/%,$(GPU_TEST_SRC)) \
              $(patsubst tests/cuda-emu/%.cu,$(EMU)/%,$(EMU_TEST_SRC))
EMU_ALL    := $(EMU)/libceleriac-cuda.so $(EMU_TESTS)

# cu2cpp.py: <<<>>> launches and __shared__ declarations rewritten, lines kept.
$(EMU)/src/%.cpp: %.cu tests/cuda-emu/cu2cpp.py
	@mkdir -p $(dir $@)
	@$(PY) tests/cuda-emu/cu2cpp.py $< $@
$(EMU)/src/%.h: %.h tests/cuda-emu/cu2cpp.py
	@mkdir -p $(dir $@)
	@$(PY) tests/cuda-emu/cu2cpp.py $< $@
# the backend and the emulator's own tests: checked; tests/gpu's host code: plain
# (small head chunks and weight staging: the small test models run those loops many times)
EMU_ENGINE := -DCEL_GPU_HEAD_CHUNK_BYTES=65536 -DCEL_GPU_STAGE_FLOATS=100003
$(EMU)/obj/model/cuda/%.o: $(EMU)/src/model/cuda/%.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_FLAGS) $(EMU_CHECKED) $(EMU_ENGINE) -fvisibility=hidden -iquote model/cuda \
		-MMD -MP -c $< -o $@
$(EMU)/obj/tests/cuda-emu/%.o: $(EMU)/src/tests/cuda-emu/%.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_FLAGS) $(EMU_CHECKED) -iquote tests/cuda-emu -MMD -MP -c $< -o $@
$(EMU)/obj/tests/gpu/%.o: $(EMU)/src/tests/gpu/%.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_FLAGS) -iquote tests/gpu -iquote model/cuda -MMD -MP -c $< -o $@
$(EMU)/rt/%.o: tests/cuda-emu/%.cpp
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_FLAGS) -fvisibility=hidden -MMD -MP -c $< -o $@
$(EMU)/libceleriac-cuda.so: $(EMU_CU_OBJ) $(EMU_RT_OBJ) build/cuda/common/err.o
	$(EMU_CXX) -shared -Wl,--no-undefined -o $@ $^ -ldl -lm
$(EMU)/test_%: $(EMU)/obj/tests/gpu/test_%.o $(EMU_CU_OBJ) $(EMU_RT_OBJ) $(GPU_HOST_OBJ)
	$(EMU_CXX) -o $@ $^ $(DEPLIBS) $(MODELLIBS) -ldl
$(EMU)/test_emu_%: $(EMU)/obj/tests/cuda-emu/test_emu_%.o $(EMU_CU_OBJ) $(EMU_RT_OBJ) $(GPU_HOST_OBJ)
	$(EMU_CXX) -o $@ $^ $(DEPLIBS) $(MODELLIBS) -ldl
.SECONDARY: $(EMU_HDR) $(patsubst %.cu,$(EMU)/src/%.cpp,$(CUDA_SRC) $(GPU_TEST_SRC) $(EMU_TEST_SRC)) \
            $(patsubst %.cu,$(EMU)/obj/%.o,$(GPU_TEST_SRC) $(EMU_TEST_SRC))

# How the pieces above are built, for tests/cuda-emu/planted.py (it rebuilds one kernel file
# with a planted bug and relinks a test the same way). Rewritten when a host object is: a new
# model/ source joins host_obj.
$(EMU)/build.json: Makefile $(GPU_HOST_OBJ)
	@mkdir -p $(dir $@)
	@printf '{"cxx": "%s", "flags": "%s", "checked": "%s %s", "libs": "%s %s -ldl",\n "rt_obj": "%s",\n "cu_obj": "%s",\n "host_obj": "%s",\n "lib_obj": "%s"}\n' \
		'$(EMU_CXX)' '$(EMU_FLAGS)' '$(EMU_CHECKED)' '$(EMU_ENGINE)' '$(DEPLIBS)' '$(MODELLIBS)' '$(EMU_RT_OBJ)' \
		'$(EMU_CU_OBJ)' '$(GPU_HOST_OBJ)' 'build/cuda/common/err.o' > $@

cuda-emu: deps
	@$(MAKE) --no-print-directory $(EMU_ALL) $(EMU)/build.json $(ORACLE_HELPER)

cuda: deps
	@$(if $(NVCC),$(MAKE) --no-print-directory bin/libceleriac-cuda.so $(GPU_TESTS),echo "make cuda: nvcc not found; CPU-only build")

# Each unit test links the protocol library, the worker's pure modules, the executor's
# argument binder (executor/call.c: no model code) and the
# model engine (tests/unit/test_model_*.c use the latter).
UNIT_LIB := $(patsubst %.c,$(AOBJ)/%.o,$(PROTOCOL_SRC) $(MODEL_SRC) worker/limits.c \
            worker/revoked.c worker/affinity.c worker/autoscale.c worker/options.c worker/pidbox.c worker/redis.c \
            worker/events.c worker/broker.c worker/broker_redis.c worker/redis_wait.c worker/backend.c \
            worker/backend_redis.c worker/held.c worker/respcut.c worker/bus.c worker/bus_redis.c \
            worker/amqp_bus.c worker/amqp_acks.c worker/amqp_confirms.c worker/amqp_conn.c worker/amqp_thread.c worker/broker_amqp.c \
            worker/backend_rpc.c worker/metrics.c worker/metrics_http.c executor/call.c \
            executor/adapters.c executor/adapters_hold.c executor/adapters_file.c)
# (the header dependencies go beside the objects: the runner executes everything in tests/)
build/asan/tests/%: tests/unit/%.c $(UNIT_LIB)
	@mkdir -p $(dir $@) $(AOBJ)/tests
	$(CC) $(CFLAGS) $(ASANFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -MMD -MP -MT $@ -MF $(AOBJ)/tests/$*.d -o $@ $(filter %.c %.o,$^) $(DEPLIBS) $(MODELLIBS) -lcmocka

test: deps
	@$(MAKE) --no-print-directory $(BINS) $(ASAN_BINS) $(UNIT_BINS) $(REPLAY_BINS) \
		$(if $(CUDA_LIB),$(GPU_TESTS)) $(EMU_ALL) $(EMU)/build.json $(ORACLE_HELPER)
	@scripts/run-tests

unit: asan
	@scripts/run-tests --unit-only

integration: all asan
	@scripts/run-tests --integration-only

run: all
	@scripts/run

bench: all build/bench/amqp_designs build/bench/amqp_ceiling
	$(PY) bench/throughput.py
	$(PY) bench/rabbitmq.py

# bench/amqp_designs.c: librabbitmq on the loop (uv_poll) vs on a thread (worker/amqp_conn.c),
# measured by bench/rabbitmq.py against its own RabbitMQ node.
build/bench/amqp_designs: bench/amqp_designs.c $(patsubst %.c,$(OBJ)/%.o,worker/amqp_acks.c worker/amqp_confirms.c worker/amqp_conn.c \
                          worker/amqp_thread.c protocol/amqp_msg.c protocol/buf.c protocol/json.c protocol/pyfloat.c \
                          $(COMMON_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPCFLAGS) -o $@ $^ $(DEPLIBS) -lpthread

# bench/amqp_ceiling.c: a consumer that only acks, the broker's ceiling in bench/rabbitmq.py's race.
build/bench/amqp_ceiling: bench/amqp_ceiling.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ -lrabbitmq

# Robustness runs (issue 12), not part of `make test` (which runs one small chaos round,
# tests/integration/test_chaos.py, on each broker). CHAOS_ROUNDS/CHAOS_TASKS/CHAOS_BROKER
# (redis or amqp), SOAK_MINUTES and SOAK_BROKER override.
CHAOS_ROUNDS ?= 5
CHAOS_TASKS  ?= 3000
CHAOS_BROKER ?= redis
SOAK_MINUTES ?= 20
SOAK_BROKER  ?= redis
chaos: all
	$(PY) scripts/chaos --rounds $(CHAOS_ROUNDS) --tasks $(CHAOS_TASKS) --broker $(CHAOS_BROKER)

soak: all
	$(PY) scripts/soak --minutes $(SOAK_MINUTES) --broker $(SOAK_BROKER)

wait-race: all
	$(PY) scripts/wait-race

restart-stress: all
	$(PY) scripts/restart-stress

# ---- fuzzing (tests/fuzz/, see its README.md) ------------------------------------------
# Each tests/fuzz/fuzz_<name>.c is a libFuzzer harness for one parser; every input goes
# through guard.h (it ends right before a PROT_NONE page). Two builds of each:
#   build/fuzz/fuzz_<name>         clang -fsanitize=fuzzer,address,undefined (make fuzz)
#   build/asan/fuzz/replay_<name>  cc + ASan/UBSan with tests/unit/fuzz_replay.c's main(),
#                                  replaying tests/fuzz/corpus/<name>/ in `make test`
# `make fuzz` runs each harness (FUZZ=<names> to pick) FUZZ_SECONDS over its corpus; new
# inputs go to build/fuzz/corpus/<name>/, crashes to build/fuzz/crash-<name>-*.
# `make fuzz-merge` folds them into tests/fuzz/corpus/<name>/, keeping only what adds coverage.
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ         ?= $(FUZZ_NAMES)
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_MAX_LEN ?= 8192
FUZZ_FLAGS   := -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
                -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined
FOBJ         := build/fuzz/obj
# What the harnesses reach: protocol/, common/, the model's file parsers, and the worker
# modules fuzz_pidbox.c needs around pidbox.c (which it includes), and the metrics
# responder (fuzz_metrics_http.c).
FUZZ_LIB_SRC := $(PROTOCOL_SRC) model/safetensors.c model/config.c model/tokenizer.c \
                model/tokenizer_encode.c model/unicode_tables.c worker/redis.c worker/respcut.c \
                worker/events.c worker/bus.c worker/bus_redis.c worker/amqp_bus.c worker/amqp_acks.c worker/amqp_confirms.c worker/amqp_conn.c \
                worker/amqp_thread.c worker/metrics.c worker/metrics_http.c
REPLAY_BINS  := $(patsubst %,build/asan/fuzz/replay_%,$(FUZZ_NAMES))

$(FOBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(DEPCFLAGS) -MMD -MP -c $< -o $@

build/fuzz/libcel.a: $(patsubst %.c,$(FOBJ)/%.o,$(FUZZ_LIB_SRC))
	rm -f $@ && ar rcs $@ $^

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c build/fuzz/libcel.a
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $(DEPCFLAGS) -MMD -MP -o $@ $< \
		build/fuzz/libcel.a $(DEPLIBS)

# The replay links an archive, so a harness that includes a library .c (fuzz_pidbox.c)
# takes its symbols from the harness and that object stays out.
build/asan/libcel_test.a: $(UNIT_LIB)
	rm -f $@ && ar rcs $@ $^

build/asan/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/unit/fuzz_replay.c build/asan/libcel_test.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ASANFLAGS) $(DEPCFLAGS) $(MODELCFLAGS) -MMD -MP -o $@ $(filter %.c,$^) \
		build/asan/libcel_test.a $(DEPLIBS) $(MODELLIBS)

fuzz-build: deps
	@$(MAKE) --no-print-directory $(patsubst %,build/fuzz/fuzz_%,$(FUZZ))

fuzz: fuzz-build
	@set -e; for h in $(FUZZ); do \
		mkdir -p build/fuzz/corpus/$$h; \
		echo "== fuzz_$$h: $(FUZZ_SECONDS) s over tests/fuzz/corpus/$$h"; \
		build/fuzz/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) \
			-timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
			-artifact_prefix=build/fuzz/crash-$$h- build/fuzz/corpus/$$h tests/fuzz/corpus/$$h; \
	done

# Minimises afresh: the committed corpus plus build/fuzz/corpus/<name>/ into the smallest
# set with the same coverage (-merge=1); files not named by their SHA-1 (crash-*, issue*:
# regressions) are kept whatever their coverage.
fuzz-merge: fuzz-build
	@set -e; for h in $(FUZZ); do \
		m=build/fuzz/merged/$$h; rm -rf $$m; mkdir -p $$m build/fuzz/corpus/$$h; \
		build/fuzz/fuzz_$$h -merge=1 -max_len=$(FUZZ_MAX_LEN) $$m tests/fuzz/corpus/$$h \
			build/fuzz/corpus/$$h 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new' || true; \
		for f in tests/fuzz/corpus/$$h/*; do \
			case "$${f##*/}" in *[!0-9a-f]*) cp "$$f" $$m/; \
				rm -f $$m/$$(sha1sum "$$f" | cut -c1-40);; esac; \
		done; \
		rm -rf tests/fuzz/corpus/$$h && mv $$m tests/fuzz/corpus/$$h; \
		echo "fuzz-merge $$h: $$(ls tests/fuzz/corpus/$$h | wc -l) files"; \
	done

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)

# Formats every C, CUDA and C++ source with .clang-format (clang-format 14); generated
# files (model/unicode_tables.c) are left as their generator writes them.
FORMAT_SRC = $(filter-out model/unicode_tables.c,$(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp'))
format:
	clang-format -i --style=file $(FORMAT_SRC)
