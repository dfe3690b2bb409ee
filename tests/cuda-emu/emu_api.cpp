/* emu_api.cpp -- the CUDA runtime API of the emulator: device, memory, streams, events, errors.
 *
 * Test code (tests/cuda-emu/). Streams are ordered queues of deferred operations: a
 * kernel launch, an asynchronous copy or memset, a cuBLAS GEMM only runs when something
 * waits for it (cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize, a
 * synchronous cudaMemcpy on the legacy stream, cudaFree), as late as CUDA allows. So a host
 * that reads results without synchronising sees the poison (0xff) that an asynchronous
 * device-to-host copy leaves in its destination until it runs, and emu_check.cpp reports
 * checked host code that touches it. This is strict: CUDA treats pageable host memory
 * synchronously in practice, pinned memory not, and code must be right for both. A
 * host-to-device copy takes its bytes when queued (what CUDA promises for pageable memory).
 * The legacy default stream orders against blocking streams, not against streams created
 * cudaStreamNonBlocking. Launch configurations are validated as the driver does (grid and
 * block limits, dynamic shared memory above 48 KB only after cudaFuncSetAttribute, never
 * above 99 KB); an execution error is sticky, as on a device.
 */
#include "emu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <deque>
#include <map>
#include <vector>

namespace cel_emu {

enum : uint32_t { STREAM_MAGIC = 0x5354524du, EVENT_MAGIC = 0x45564e54u };

struct stream_impl {
    uint32_t magic;
    unsigned flags;
    bool legacy;
    std::deque<op_t *> q;
};
struct event_impl {
    uint32_t magic;
    unsigned flags;
    stream_impl *s;
    uint64_t seq;
    bool recorded, done;
    double ms;
};

static stream_impl legacy_stream = { STREAM_MAGIC, 0, true, {} };
static std::vector<stream_impl *> streams;
static uint64_t next_seq;
static cudaError_t last_error;
static std::map<const void *, int> max_dynamic_smem;

void set_last_error(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
}

static cudaError_t fail(cudaError_t e) {
    set_last_error(e);
    return e;
}

static stream_impl *to_stream(cudaStream_t st) {
    if (!st || st == cudaStreamLegacy) return &legacy_stream;
    for (stream_impl *s : streams)
        if ((cudaStream_t)s == st) return s;
    return NULL;
}

bool stream_ok(cudaStream_t st) { return to_stream(st) != NULL; }

static double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void exec_op(op_t *o) {
    if (g.sticky != cudaSuccess) {
        o->discard();
    } else {
        g.op_name = o->name;
        o->exec();
        g.op_name = NULL;
    }
    delete o;
}

/* Runs s's queued operations up to seq, after whatever each depends on. */
static void run_until(stream_impl *s, uint64_t seq) {
    while (!s->q.empty() && s->q.front()->seq <= seq) {
        op_t *x = s->q.front();
        if (s->legacy) {
            for (stream_impl *t : streams)
                if (!(t->flags & cudaStreamNonBlocking)) run_until(t, x->seq - 1);
        } else if (!(s->flags & cudaStreamNonBlocking)) {
            run_until(&legacy_stream, x->seq - 1);
        }
        if (x->dep_stream) run_until((stream_impl *)x->dep_stream, x->dep_seq);
        s->q.pop_front();
        exec_op(x);
    }
}

static void device_sync() {
    for (;;) {
        stream_impl *best = legacy_stream.q.empty() ? NULL : &legacy_stream;
        for (stream_impl *s : streams)
            if (!s->q.empty() && (!best || s->q.front()->seq < best->q.front()->seq)) best = s;
        if (!best) return;
        run_until(best, best->q.front()->seq);
    }
}

cudaError_t enqueue(cudaStream_t st, op_t *op, bool sync) {
    stream_impl *s = to_stream(st);
    if (!s) {
        delete op;
        return fail(cudaErrorInvalidResourceHandle);
    }
    op->seq = ++next_seq;
    op->stream = s;
    s->q.push_back(op);
    if (sync) run_until(s, op->seq);
    return g.sticky;
}

/* ---------------------------------------------------------------- launches */

struct op_kernel : op_t {
    launch_t L;
    void exec() override { run_launch(&L); }
    ~op_kernel() override { delete L.job; }
};

static uint64_t launches;

void enqueue_launch(const char *name, const void *fn, const launch_cfg &c, kernel_job *job) {
    mem_init();
    cudaError_t e = cudaSuccess;
    dim3 gr = c.grid, bl = c.block;
    unsigned long long nt = (unsigned long long)bl.x * bl.y * bl.z;
    if (g.sticky != cudaSuccess) e = g.sticky;
    else if (gr.x < 1 || gr.x > 0x7fffffffu || gr.y < 1 || gr.y > 65535 || gr.z < 1 ||
             gr.z > 65535 || bl.x < 1 || bl.x > 1024 || bl.y < 1 || bl.y > 1024 || bl.z < 1 ||
             bl.z > 64 || nt > MAX_THREADS)
        e = cudaErrorInvalidConfiguration;
    else if (c.smem > SMEM_OPTIN ||
             (c.smem > SMEM_DEFAULT && (size_t)max_dynamic_smem[fn] < c.smem))
        e = cudaErrorInvalidValue;
    else if (!to_stream(c.st)) e = cudaErrorInvalidResourceHandle;
    if (e != cudaSuccess) {
        if (e != g.sticky && getenv("CELERIAC_CUDA_EMU_VERBOSE"))
            fprintf(stderr,
                    "cuda-emu: launch of %s <<<(%u,%u,%u), (%u,%u,%u), %zu>>> refused: "
                    "%s\n",
                    name, gr.x, gr.y, gr.z, bl.x, bl.y, bl.z, c.smem, cudaGetErrorString(e));
        delete job;
        set_last_error(e);
        return;
    }
    op_kernel *op = new op_kernel();
    op->name = name;
    op->L.name = name;
    op->L.fn = fn;
    op->L.grid = gr;
    op->L.block = bl;
    op->L.smem = c.smem;
    op->L.job = job;
    op->L.id = ++launches;
    enqueue(c.st, op, false);
}

/* ---------------------------------------------------------------- copies and memsets */

struct op_copy : op_t {
    void *dst;
    const void *src;
    size_t n;
    int dir;
    std::vector<char> snap; /* host bytes of a queued host-to-device copy */
    void exec() override {
        switch (dir) {
        case cudaMemcpyHostToDevice:
            if (dev_check(dst, n, ACC_WRITE, name))
                memcpy(dst, snap.empty() ? src : snap.data(), n);
            break;
        case cudaMemcpyDeviceToHost:
            if (dev_check(src, n, ACC_READ, name)) memcpy(dst, src, n);
            pending_remove(this);
            break;
        case cudaMemcpyDeviceToDevice:
            if (dev_range_ok(src, n) && dev_range_ok(dst, n)) {
                memmove(dst, src, n);
                dev_copy_shadow(dst, src, n);
            }
            break;
        default: memmove(dst, src, n);
        }
    }
    void discard() override { pending_remove(this); }
};

struct op_memset : op_t {
    void *p;
    int v;
    size_t n;
    void exec() override {
        if (dev_check(p, n, ACC_WRITE, name)) memset(p, v, n);
    }
};

/* The direction of a copy, or -1 when the pointers do not fit kind. */
static int copy_dir(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    bool dd = is_dev(dst), sd = is_dev(src);
    if (kind == cudaMemcpyDefault)
        kind = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                  : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    switch (kind) {
    case cudaMemcpyHostToDevice: return dd && !sd && dev_range_ok(dst, n) ? kind : -1;
    case cudaMemcpyDeviceToHost: return sd && !dd && dev_range_ok(src, n) ? kind : -1;
    case cudaMemcpyDeviceToDevice:
        return dd && sd && dev_range_ok(dst, n) && dev_range_ok(src, n) ? kind : -1;
    case cudaMemcpyHostToHost: return !dd && !sd ? kind : -1;
    default: return -2;
    }
}

static cudaError_t memcpy_common(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                                 cudaStream_t st, bool sync) {
    mem_init();
    if (g.sticky != cudaSuccess) return fail(g.sticky);
    if (!to_stream(st)) return fail(cudaErrorInvalidResourceHandle);
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue);
    int dir = copy_dir(dst, src, n, kind);
    if (dir == -2) return fail(cudaErrorInvalidMemcpyDirection);
    if (dir < 0) return fail(cudaErrorInvalidValue);
    op_copy *op = new op_copy();
    op->name = sync ? "cudaMemcpy" : "cudaMemcpyAsync";
    op->dst = dst;
    op->src = src;
    op->n = n;
    op->dir = dir;
    if (!sync && dir == cudaMemcpyHostToDevice)
        op->snap.assign((const char *)src, (const char *)src + n);
    if (!sync && dir == cudaMemcpyDeviceToHost) {
        memset(dst, 0xff, n); /* not there yet: whoever reads it early reads NaNs */
        pending_add(dst, n, op);
    }
    return enqueue(sync ? 0 : st, op, sync);
}

static cudaError_t memset_common(void *p, int v, size_t n, cudaStream_t st, bool sync) {
    mem_init();
    if (g.sticky != cudaSuccess) return fail(g.sticky);
    if (!to_stream(st)) return fail(cudaErrorInvalidResourceHandle);
    if (n == 0) return cudaSuccess;
    if (!is_dev(p) || !dev_range_ok(p, n)) return fail(cudaErrorInvalidValue);
    op_memset *op = new op_memset();
    op->name = sync ? "cudaMemset" : "cudaMemsetAsync";
    op->p = p;
    op->v = v;
    op->n = n;
    return enqueue(st, op, false);
}

/* ---------------------------------------------------------------- events */

struct op_event : op_t {
    event_impl *ev;
    void exec() override {
        ev->done = true;
        ev->ms = now_ms();
    }
    void discard() override { ev->done = true; }
};

static event_impl *to_event(cudaEvent_t e) {
    event_impl *x = (event_impl *)e;
    return x && x->magic == EVENT_MAGIC ? x : NULL;
}

} /* namespace cel_emu */

using namespace cel_emu;

/* ---------------------------------------------------------------- the API */

extern "C" {

CEL_EMU_API cudaError_t cudaGetDeviceCount(int *count) {
    const char *e = getenv("CELERIAC_CUDA_EMU_DEVICES");
    *count = e && *e == '0' ? 0 : 1;
    return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

CEL_EMU_API cudaError_t cudaSetDevice(int device) {
    mem_init();
    return device == 0 ? g.sticky : fail(cudaErrorInvalidDevice);
}

CEL_EMU_API cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice);
    mem_init();
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof p->name, "celeriac cuda-emu (the host CPU)");
    p->totalGlobalMem = mem_capacity();
    p->sharedMemPerBlock = SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = SMEM_OPTIN;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = MAX_THREADS;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->major = 8;
    p->minor = 6;
    p->multiProcessorCount = 1;
    p->maxThreadsPerMultiProcessor = 1536;
    p->sharedMemPerMultiprocessor = 100 * 1024;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaDeviceSynchronize(void) {
    device_sync();
    return g.sticky;
}

CEL_EMU_API cudaError_t cudaDeviceReset(void) {
    device_sync();
    g.sticky = cudaSuccess;
    last_error = cudaSuccess;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaGetLastError(void) {
    cudaError_t e = g.sticky != cudaSuccess ? g.sticky : last_error;
    last_error = cudaSuccess;
    return e;
}

CEL_EMU_API cudaError_t cudaPeekAtLastError(void) {
    return g.sticky != cudaSuccess ? g.sticky : last_error;
}

CEL_EMU_API const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
    }
}

CEL_EMU_API const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
    }
}

CEL_EMU_API cudaError_t cudaMalloc(void **p, size_t bytes) {
    mem_init();
    *p = NULL;
    if (g.sticky != cudaSuccess) return fail(g.sticky);
    if (bytes == 0) return cudaSuccess;
    *p = dev_alloc(bytes);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

CEL_EMU_API cudaError_t cudaFree(void *p) {
    mem_init();
    device_sync(); /* cudaFree waits for the device, as CUDA's does */
    if (!p) return g.sticky;
    if (!dev_free(p)) {
        report(E_FREED, false, __builtin_return_address(0),
               "cudaFree(%p): not a live "
               "allocation (freed twice, or never returned by cudaMalloc)",
               p);
        return fail(cudaErrorInvalidValue);
    }
    return g.sticky;
}

CEL_EMU_API cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = NULL;
    if (posix_memalign(p, 4096, bytes ? bytes : 1) != 0) return fail(cudaErrorMemoryAllocation);
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaFreeHost(void *p) {
    device_sync();
    free(p);
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    mem_init();
    if (free_bytes) *free_bytes = mem_capacity() - mem_used();
    if (total_bytes) *total_bytes = mem_capacity();
    return g.sticky;
}

CEL_EMU_API cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    return memcpy_common(dst, src, n, kind, 0, true);
}

CEL_EMU_API cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n,
                                        enum cudaMemcpyKind kind, cudaStream_t st) {
    return memcpy_common(dst, src, n, kind, st, false);
}

CEL_EMU_API cudaError_t cudaMemset(void *p, int value, size_t n) {
    return memset_common(p, value, n, 0, true);
}

CEL_EMU_API cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t st) {
    return memset_common(p, value, n, st, false);
}

CEL_EMU_API cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned int flags) {
    mem_init();
    if (g.sticky != cudaSuccess) return fail(g.sticky);
    if (flags & ~cudaStreamNonBlocking) return fail(cudaErrorInvalidValue);
    stream_impl *s = new stream_impl{ STREAM_MAGIC, flags, false, {} };
    streams.push_back(s);
    *st = (cudaStream_t)s;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaStreamCreate(cudaStream_t *st) {
    return cudaStreamCreateWithFlags(st, cudaStreamDefault);
}

CEL_EMU_API cudaError_t cudaStreamDestroy(cudaStream_t st) {
    stream_impl *s = to_stream(st);
    if (!s || s->legacy) return fail(cudaErrorInvalidResourceHandle);
    run_until(s, ~0ull); /* queued work still completes */
    for (size_t i = 0; i < streams.size(); i++)
        if (streams[i] == s) streams.erase(streams.begin() + (long)i);
    s->magic = 0;
    delete s;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaStreamSynchronize(cudaStream_t st) {
    stream_impl *s = to_stream(st);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    run_until(s, ~0ull);
    return g.sticky;
}

/* Polling never spins forever: a query runs what is queued, then reports it done. */
CEL_EMU_API cudaError_t cudaStreamQuery(cudaStream_t st) { return cudaStreamSynchronize(st); }

struct op_wait : cel_emu::op_t {
    void exec() override {}
};

CEL_EMU_API cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t ev, unsigned int flags) {
    event_impl *e = to_event(ev);
    if (!e || !to_stream(st)) return fail(cudaErrorInvalidResourceHandle);
    if (!e->recorded) return cudaSuccess;
    op_wait *op = new op_wait();
    op->name = "cudaStreamWaitEvent";
    op->dep_stream = e->s;
    op->dep_seq = e->seq;
    return enqueue(st, op, false);
}

CEL_EMU_API cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned int flags) {
    *ev = (cudaEvent_t) new event_impl{ EVENT_MAGIC, flags, NULL, 0, false, false, 0.0 };
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaEventCreate(cudaEvent_t *ev) {
    return cudaEventCreateWithFlags(ev, cudaEventDefault);
}

CEL_EMU_API cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    event_impl *e = to_event(ev);
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    if (e->recorded && !e->done) run_until(e->s, e->seq);
    e->magic = 0;
    delete e;
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st) {
    event_impl *e = to_event(ev);
    stream_impl *s = to_stream(st);
    if (!e || !s) return fail(cudaErrorInvalidResourceHandle);
    if (e->recorded && !e->done) run_until(e->s, e->seq);
    op_event *op = new op_event();
    op->name = "cudaEventRecord";
    op->ev = e;
    e->recorded = true;
    e->done = false;
    e->s = s;
    cudaError_t r = enqueue(st, op, false);
    e->seq = next_seq;
    return r;
}

CEL_EMU_API cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    event_impl *e = to_event(ev);
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    if (e->recorded) run_until(e->s, e->seq);
    return g.sticky;
}

CEL_EMU_API cudaError_t cudaEventQuery(cudaEvent_t ev) { return cudaEventSynchronize(ev); }

CEL_EMU_API cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    event_impl *a = to_event(start), *b = to_event(end);
    if (!a || !b || (a->flags & cudaEventDisableTiming) || (b->flags & cudaEventDisableTiming))
        return fail(cudaErrorInvalidResourceHandle);
    if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
    if (!a->done || !b->done) return fail(cudaErrorNotReady);
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}

CEL_EMU_API cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr,
                                             int value) {
    if (!func) return fail(cudaErrorInvalidDeviceFunction);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > SMEM_OPTIN) return fail(cudaErrorInvalidValue);
        max_dynamic_smem[func] = value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
        return value >= -1 && value <= 100 ? cudaSuccess : fail(cudaErrorInvalidValue);
    return fail(cudaErrorInvalidValue);
}

} /* extern "C" */
