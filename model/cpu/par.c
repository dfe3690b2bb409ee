/* par.c -- a small thread pool that splits the CPU ops' element-wise loops across the cores.
 *
 * OpenBLAS threads the matrix products; everything between them (norms,
 * rope, SwiGLU, softmax, cross-entropy, residual adds) ran on one core.
 * cel_cpu_par_for cuts [0, n) into chunks that the calling thread and the
 * pool's workers claim from one counter, so the caller alone finishes the
 * job when no worker gets a core (a loaded machine) and never waits for
 * more than the chunks a worker has already claimed. Workers spin briefly
 * after a job (the next op usually follows within microseconds), then sleep
 * on a condition variable, so they leave the cores to OpenBLAS between ops.
 * A chunk is claimed with a compare-and-swap on (generation, index), so a
 * worker that wakes late can never run a chunk of a newer job with an older
 * job's function. One job at a time: a second thread calling while a job runs
 * does its loop alone. The pool has cel_cpu_par_set_threads(n) - 1 workers
 * (default: OpenBLAS's thread count), started on first use. Each worker has
 * a slot (1, 2, ...; the caller's is 0), so a job can give each thread its
 * own scratch (attention.c); cel_cpu_par_for_slots leaves workers with a
 * slot past the job's out of it.
 */
#include "ops.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include <cblas.h>
#undef I

#define PAR_MAX_THREADS CEL_CPU_PAR_MAX
#define PAR_SPIN        4000 /* polls before a worker sleeps */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t busy; /* held by the thread running a job */
    int want, started;    /* threads wanted (caller included), workers started */
    int sleepers;
    _Atomic uint32_t gen;
    /* the job of generation gen, written under mu */
    cel_cpu_par_fn fn;
    void *ctx;
    int n, chunk, nchunks, max_slots;
    _Atomic uint64_t next; /* gen << 32 | next chunk */
    _Atomic int done;      /* chunks finished */
} P = { .mu = PTHREAD_MUTEX_INITIALIZER,
        .cv = PTHREAD_COND_INITIALIZER,
        .busy = PTHREAD_MUTEX_INITIALIZER };

static _Thread_local int par_slot; /* 0: not a worker */

int cel_cpu_par_slot(void) { return par_slot; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Runs chunks of generation gen until none is left. */
static void run_chunks(uint32_t gen, cel_cpu_par_fn fn, void *ctx, int n, int chunk, int nchunks) {
    uint64_t v = atomic_load_explicit(&P.next, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(v >> 32) != gen || (int)(uint32_t)v >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&P.next, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int c = (int)(uint32_t)v, i0 = c * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        fn(ctx, i0, i1);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        v = atomic_load_explicit(&P.next, memory_order_acquire);
    }
}

static void *worker(void *arg) {
    par_slot = (int)(intptr_t)arg;
    uint32_t seen = atomic_load(&P.gen);
    for (;;) {
        for (int i = 0; i < PAR_SPIN && atomic_load_explicit(&P.gen, memory_order_acquire) == seen;
             i++)
            cpu_relax();
        pthread_mutex_lock(&P.mu);
        while (atomic_load(&P.gen) == seen) {
            P.sleepers++;
            pthread_cond_wait(&P.cv, &P.mu);
            P.sleepers--;
        }
        seen = atomic_load(&P.gen);
        cel_cpu_par_fn fn = P.fn;
        void *ctx = P.ctx;
        int n = P.n, chunk = P.chunk, nchunks = P.nchunks, max_slots = P.max_slots;
        pthread_mutex_unlock(&P.mu);
        if (par_slot < max_slots) run_chunks(seen, fn, ctx, n, chunk, nchunks);
    }
    return NULL;
}

void cel_cpu_par_set_threads(int n) {
    if (n < 1) return;
    pthread_mutex_lock(&P.mu);
    P.want = n > PAR_MAX_THREADS ? PAR_MAX_THREADS : n;
    pthread_mutex_unlock(&P.mu);
}

int cel_cpu_par_threads(void) {
    pthread_mutex_lock(&P.mu);
    if (P.want < 1) {
        int n = openblas_get_num_threads();
        P.want = n < 1 ? 1 : n > PAR_MAX_THREADS ? PAR_MAX_THREADS : n;
    }
    int n = P.want;
    pthread_mutex_unlock(&P.mu);
    return n;
}

void cel_cpu_par_for(int n, int grain, cel_cpu_par_fn fn, void *ctx) {
    cel_cpu_par_for_slots(n, grain, fn, ctx, PAR_MAX_THREADS);
}

void cel_cpu_par_for_slots(int n, int grain, cel_cpu_par_fn fn, void *ctx, int max_slots) {
    if (n <= 0) return;
    int nt = cel_cpu_par_threads();
    if (grain < 1) grain = 1;
    if (nt < 2 || max_slots < 2 || n < 2 * grain || pthread_mutex_trylock(&P.busy) != 0) {
        fn(ctx, 0, n);
        return;
    }
    /* about 4 chunks a thread (balance on a shared machine), none under grain */
    int nchunks = 4 * nt, chunk = (n + nchunks - 1) / nchunks;
    if (chunk < grain) chunk = grain;
    nchunks = (n + chunk - 1) / chunk;
    pthread_mutex_lock(&P.mu);
    while (P.started < nt - 1) { /* workers are never stopped; a lower count leaves some idle */
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &at, worker, (void *)(intptr_t)(P.started + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        P.started++;
    }
    uint32_t gen = atomic_load(&P.gen) + 1;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.chunk = chunk;
    P.nchunks = nchunks;
    P.max_slots = max_slots;
    atomic_store(&P.done, 0);
    atomic_store(&P.next, (uint64_t)gen << 32);
    atomic_store_explicit(&P.gen, gen, memory_order_release);
    if (P.sleepers) pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    run_chunks(gen, fn, ctx, n, chunk, nchunks);
    for (long i = 0; atomic_load_explicit(&P.done, memory_order_acquire) < nchunks; i++)
        if (i < PAR_SPIN) cpu_relax();
        else sched_yield();
    pthread_mutex_unlock(&P.busy);
}
