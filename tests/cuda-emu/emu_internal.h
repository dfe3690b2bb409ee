/* emu_internal.h -- what the CUDA emulator's runtime files share (test code, tests/cuda-emu/).
 *
 * emu_sched.cpp runs launches (blocks of fibers, barriers, warp collectives, the shared
 * arena), emu_check.cpp owns device memory and checks every access, emu_api.cpp is the
 * runtime API (streams as ordered queues of deferred operations, copies, events, errors),
 * emu_blas.cpp the cuBLAS subset. One host thread drives the emulator (as one drives a
 * model in the engine); kernels and GEMMs run inside the API calls that synchronise.
 * None of this is compiled with -fsanitize=kernel-address; the code it checks is.
 */
#ifndef CEL_EMU_INTERNAL_H
#define CEL_EMU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "include/cuda_emu.h"

#define CEL_EMU_API __attribute__((visibility("hidden")))

namespace cel_emu {

enum { ACC_READ = 1, ACC_WRITE = 2, ACC_ATOMIC = 3 };

/* Device limits the emulator enforces (an sm_86-class part: the smallest opt-in shared
 * memory of the architectures the Makefile builds for). */
enum {
    MAX_THREADS = 1024,
    SMEM_DEFAULT = 48 * 1024,
    SMEM_OPTIN = 99 * 1024,
    SMEM_STATIC_MAX = 48 * 1024,
};

/* ---------------------------------------------------------------- launches (emu_sched.cpp) */

enum { T_RUN, T_BAR, T_WARP, T_DONE };

struct thread_t {
    void *sp; /* saved stack pointer while switched out */
    uint3 tid;
    int lin, warp, lane;
    int state;
    void *pc; /* where it waits */
    uint64_t val, result;
    int arg;
};

enum { MAX_GROUPS = 4 };

struct group_t { /* a warp collective that not every lane of its mask reached yet */
    int op, width;
    unsigned mask, arrived;
    void *pc;
};

struct warp_t {
    unsigned exist; /* lanes of the block in this warp */
    uint32_t epoch; /* completed __syncwarp()s: orders shared accesses within the warp */
    group_t groups[MAX_GROUPS];
    int ngroups;
};

struct svar_t { /* a static __shared__ variable of the running kernel */
    const void *key;
    size_t off, size;
};

struct launch_t {
    const char *name;
    const void *fn;
    dim3 grid, block;
    size_t smem;
    kernel_job *job;
    svar_t vars[32];
    int nvars;
    size_t static_end, static_bytes;
    uint64_t id;
};

/* The block being run. */
struct block_t {
    launch_t *L;
    uint3 bid;
    int n, nwarps, ndone, nbar;
    thread_t *th;
    warp_t *w;
    uint32_t epoch;  /* completed __syncthreads()s */
    uint32_t serial; /* blocks run so far: stamps shared memory metadata */
    int aborted;
};

/* Runs every block of a launch; returns cudaSuccess or the error it ends with. */
cudaError_t run_launch(launch_t *L);

/* ---------------------------------------------------------------- global state */

struct state_t {
    /* read by every checked access: keep together */
    uintptr_t dev_lo, dev_span; /* device memory region */
    uint8_t *shadow;            /* one byte per device byte: SH_* */
    thread_t *cur;              /* the running CUDA thread, NULL on the host */
    uintptr_t stk_lo, stk_span; /* fiber stacks */
    uintptr_t smem_lo, smem_span;
    uintptr_t job_lo, job_span; /* the running launch's arguments */
    int npending;               /* host ranges of unfinished device-to-host copies */
    block_t *blk;
    const char *op_name; /* the operation running outside a kernel (cuBLAS, a copy) */
    cudaError_t sticky;  /* a failed kernel: every later call returns it */
    uint64_t n_launches, n_blocks, n_gemms; /* what ran, for CELERIAC_CUDA_EMU_VERBOSE */
};
extern state_t g;

/* Shadow states of device bytes. */
enum { SH_INVALID = 0, SH_UNINIT = 1, SH_INIT = 2, SH_FREED = 3 };

/* ---------------------------------------------------------------- memory (emu_check.cpp) */

void mem_init();
size_t mem_capacity();
size_t mem_used();
/* cudaMalloc/cudaFree's work; NULL / false when out of memory / not an allocation. */
void *dev_alloc(size_t bytes);
bool dev_free(void *p);
static inline bool is_dev(const void *p) { return (uintptr_t)p - g.dev_lo < g.dev_span; }
/* True when [p, p+n) lies inside one live allocation (n may be 0). */
bool dev_range_ok(const void *p, size_t n);
/* Checks [p, p+n) for an operation outside kernels (a copy, a GEMM operand) as kind;
 * reports and returns false when it is not inside a live allocation. Reads of
 * uninitialised bytes are reported (what names the operand) and go on. Writes mark the
 * bytes initialised. */
bool dev_check(const void *p, size_t n, int kind, const char *what);
/* Copies shadow states along with a device-to-device copy. */
void dev_copy_shadow(void *dst, const void *src, size_t n);
/* The kernel's own atomic access (checked as kind ACC_ATOMIC). */
void check_atomic(const void *p, size_t n, void *pc);

/* Host ranges that a queued device-to-host copy will write. */
void pending_add(const void *p, size_t n, const void *op);
void pending_remove(const void *op);

/* The block's shared arena (emu_check.cpp keeps its metadata). */
void smem_init();
uint8_t *smem_base(); /* start of the arena */
enum {
    SMEM_DYN_OFF = 256,
    SMEM_STATIC_OFF = SMEM_DYN_OFF + SMEM_OPTIN + 256,
    SMEM_ARENA = SMEM_STATIC_OFF + SMEM_STATIC_MAX + 64 * 256
};
/* Marks bytes [off, off+size) of the arena valid (false: invalid) for this launch. */
void smem_set_valid(size_t off, size_t size, bool valid);

/* ---------------------------------------------------------------- reports (emu_check.cpp) */

/* Prints one error with where it happened (kernel, block, thread, source line from pc)
 * and counts it; fatal ones inside a kernel end the kernel (the launch fails). */
void report(int kind, bool fatal, void *pc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Whether two code addresses are the same source line (an optimiser copies one barrier
 * into several places; true when it cannot tell). */
bool same_source(void *a, void *b);
/* The source line of a code address ("pc 0x..." when it cannot tell). */
std::string source_of(void *pc);
/* Ends the running kernel after a fatal error (switches back to the scheduler). */
[[noreturn]] void abort_kernel(cudaError_t e);
uint64_t error_count();

/* ---------------------------------------------------------------- API glue (emu_api.cpp) */

/* Queues op work on stream st (0 = the legacy default stream); runs it at once when
 * sync. name is used in reports. Returns cudaErrorInvalidResourceHandle for a bad stream. */
struct op_t;
cudaError_t enqueue(cudaStream_t st, op_t *op, bool sync);
struct op_t {
    uint64_t seq = 0;
    void *stream = nullptr;
    const char *name = "";
    void *dep_stream = nullptr; /* runs only after dep_stream's operations up to dep_seq */
    uint64_t dep_seq = 0;
    virtual ~op_t() {}
    virtual void exec() = 0;
    virtual void discard() {}
};
void set_last_error(cudaError_t e);
/* Accepts 0, cudaStreamLegacy and live streams. */
bool stream_ok(cudaStream_t st);

} /* namespace cel_emu */

#endif
