/* emu_sched.cpp -- runs a kernel launch: its blocks one after another, each block's threads as fibers.
 *
 * Test code (tests/cuda-emu/). A block's threads are fibers on one host thread, each with
 * its own stack; a fiber runs until it waits (__syncthreads, a warp collective) or exits,
 * then the next runnable one runs, in thread-index order. So barriers really synchronise:
 * nobody passes __syncthreads before every live thread of the block reached it, and a lane
 * leaves __shfl_xor_sync only with the values its partners passed in. Warp collectives
 * follow the PTX lane rules (segments of `width`, out-of-range sources return the caller's
 * own value); every lane named in the mask must reach the same collective, else the block
 * deadlocks, and that is reported with each lane's whereabouts. Threads of a warp do not
 * run in lockstep, so code that needs __syncwarp and lacks it reads stale shared data, which
 * emu_check.cpp's race checker reports. Static __shared__ variables and the dynamic part
 * live in one arena per block, with guard gaps, poisoned (0xff) at every block's start.
 * Context switches are a few instructions of assembly on x86-64, ucontext elsewhere.
 */
#include "emu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cel_emu {

enum { STACK_BYTES = 128 * 1024, GUARD_BYTES = 4096, SLOT = STACK_BYTES + GUARD_BYTES };

static char *stacks; /* MAX_THREADS slots, a guard page below each stack */
static thread_t threads[MAX_THREADS];
static warp_t warps[MAX_THREADS / 32];
static int queue[MAX_THREADS], q_head, q_len;
static block_t blk;
static uint32_t block_serial;

/* ---------------------------------------------------------------- context switching */

#if defined(__x86_64__)
/* cel_emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control
 * word on the current stack, stores rsp in *save, and resumes the context at `to`. A new
 * context's frame returns into cel_emu_start, which calls r13(r12). */
asm(R"(
    .text
    .p2align 4
    .type cel_emu_switch, @function
cel_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cel_emu_switch, .-cel_emu_switch
    .p2align 4
    .type cel_emu_start, @function
cel_emu_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cel_emu_start, .-cel_emu_start
)");
extern "C" void cel_emu_switch(void **save, void *to) asm("cel_emu_switch");
extern "C" void cel_emu_start(void) asm("cel_emu_start");

static void *sched_sp; /* the scheduler's context while a fiber runs */

/* A fresh context on the stack whose top is `top` (16-aligned) that calls fn(arg). */
static void *make_context(char *top, void (*fn)(thread_t *), thread_t *arg) {
    uint64_t *f = (uint64_t *)(top - 64);
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    memset(f, 0, 64);
    memcpy(&f[0], &mxcsr, 4);
    memcpy((char *)&f[0] + 4, &fpcw, 2);
    f[3] = (uint64_t)(uintptr_t)fn;  /* r13 */
    f[4] = (uint64_t)(uintptr_t)arg; /* r12 */
    f[7] = (uint64_t)(uintptr_t)&cel_emu_start;
    return f;
}
static inline void to_fiber(thread_t *t) { cel_emu_switch(&sched_sp, t->sp); }
static inline void to_scheduler(thread_t *t) { cel_emu_switch(&t->sp, sched_sp); }
#else
static ucontext_t sched_ctx, fiber_ctx[MAX_THREADS];
static void (*start_fn)(thread_t *);
static void uc_entry(int lo, int hi) {
    thread_t *t = (thread_t *)(((uintptr_t)(unsigned)hi << 32) | (unsigned)lo);
    start_fn(t);
}
static void *make_context(char *top, void (*fn)(thread_t *), thread_t *arg) {
    ucontext_t *uc = &fiber_ctx[arg->lin];
    getcontext(uc);
    uc->uc_stack.ss_sp = top - STACK_BYTES;
    uc->uc_stack.ss_size = STACK_BYTES;
    uc->uc_link = NULL;
    start_fn = fn;
    uintptr_t p = (uintptr_t)arg;
    makecontext(uc, (void (*)())uc_entry, 2, (int)(p & 0xffffffffu), (int)(p >> 32));
    return uc;
}
static inline void to_fiber(thread_t *t) { swapcontext(&sched_ctx, (ucontext_t *)t->sp); }
static inline void to_scheduler(thread_t *t) {
    swapcontext(&fiber_ctx[t->lin], &sched_ctx);
    t->sp = &fiber_ctx[t->lin];
}
#endif

static void stacks_init() {
    if (stacks) return;
    size_t total = (size_t)MAX_THREADS * SLOT;
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "cuda-emu: cannot map %zu MiB of fiber stacks\n", total >> 20);
        abort();
    }
    stacks = (char *)p;
    for (int i = 0; i < MAX_THREADS; i++)
        mprotect(stacks + (size_t)i * SLOT, GUARD_BYTES, PROT_NONE);
    g.stk_lo = (uintptr_t)stacks;
    g.stk_span = total;
}

/* ---------------------------------------------------------------- the running thread's view */

static thread_t *need_thread(const char *what) {
    thread_t *t = g.cur;
    if (!t) {
        fprintf(stderr, "cuda-emu: %s called outside a kernel\n", what);
        abort();
    }
    return t;
}

uint3 thread_idx() { return need_thread("threadIdx")->tid; }
uint3 block_idx() {
    need_thread("blockIdx");
    return blk.bid;
}
dim3 block_dim() {
    need_thread("blockDim");
    return blk.L->block;
}
dim3 grid_dim() {
    need_thread("gridDim");
    return blk.L->grid;
}

static void push(int lin) {
    queue[(q_head + q_len) % blk.n] = lin;
    q_len++;
}

/* t stops running (it waits, or it is done): the next runnable thread runs, directly
 * (one switch instead of two through the scheduler), or the scheduler when none is. */
static void switch_away(thread_t *t) {
#if defined(__x86_64__)
    if (q_len > 0) {
        thread_t *n = &threads[queue[q_head]];
        q_head = (q_head + 1) % blk.n;
        q_len--;
        g.cur = n;
        cel_emu_switch(&t->sp, n->sp);
        return;
    }
#endif
    to_scheduler(t);
}

static void yield(thread_t *t) {
    switch_away(t);
    g.cur = t; /* resumed */
}

/* ---------------------------------------------------------------- barriers */

void syncthreads() {
    thread_t *t = need_thread("__syncthreads");
    t->pc = __builtin_return_address(0);
    t->state = T_BAR;
    blk.nbar++;
    yield(t);
}

static const char *op_name(int op) {
    static const char *const names[] = { "__shfl_sync",     "__shfl_up_sync", "__shfl_down_sync",
                                         "__shfl_xor_sync", "__ballot_sync",  "__any_sync",
                                         "__all_sync",      "__syncwarp" };
    return op >= 0 && op <= W_SYNC ? names[op] : "?";
}

/* Results for every lane of a complete collective; wakes the lanes other than self. */
static void complete(warp_t *w, int gi, thread_t *self) {
    group_t *gr = &w->groups[gi];
    int base = (int)(self->warp * 32);
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        if ((gr->mask >> l) & 1u)
            if (threads[base + l].val) ballot |= 1u << l;
    for (int l = 0; l < 32; l++) {
        if (!((gr->mask >> l) & 1u)) continue;
        thread_t *x = &threads[base + l];
        int seg = l & ~(gr->width - 1), src = l;
        switch (gr->op) {
        case W_SHFL_IDX: src = seg + (x->arg & (gr->width - 1)); break;
        case W_SHFL_UP: src = l - x->arg >= seg ? l - x->arg : l; break;
        case W_SHFL_DOWN: src = l + x->arg < seg + gr->width ? l + x->arg : l; break;
        case W_SHFL_XOR: /* earlier segments are reachable, later ones are not (PTX bfly) */
            src = (l ^ x->arg) < seg + gr->width ? l ^ x->arg : l;
            break;
        default: break;
        }
        if (gr->op <= W_SHFL_XOR) {
            if (src < 0 || src > 31 || !((gr->mask >> src) & 1u)) {
                report(E_SYNC, false, gr->pc,
                       "%s: lane %d reads lane %d, which is not in the "
                       "mask 0x%08x (undefined value)",
                       op_name(gr->op), l, src, gr->mask);
                x->result = ~0ull;
            } else {
                x->result = threads[base + src].val;
            }
        } else if (gr->op == W_BALLOT) {
            x->result = ballot;
        } else if (gr->op == W_ANY) {
            x->result = ballot != 0;
        } else if (gr->op == W_ALL) {
            x->result = ballot == gr->mask;
        }
        if (x != self) {
            x->state = T_RUN;
            push(x->lin);
        }
    }
    if (gr->op == W_SYNC) w->epoch++;
    w->groups[gi] = w->groups[--w->ngroups];
}

uint64_t warp_op(int op, unsigned mask, uint64_t bits, int arg, int width) {
    thread_t *t = need_thread(op_name(op));
    void *pc = __builtin_return_address(0);
    warp_t *w = &warps[t->warp];
    unsigned me = 1u << t->lane;
    if (width < 1 || width > 32 || (width & (width - 1)))
        report(E_SYNC, true, pc, "%s: width %d is not a power of two up to 32", op_name(op), width);
    if (!(mask & me))
        report(E_SYNC, true, pc, "%s: the calling lane %d is not in its mask 0x%08x", op_name(op),
               t->lane, mask);
    if (mask & ~w->exist)
        report(E_SYNC, true, pc,
               "%s: mask 0x%08x names lanes that do not exist (warp %d has "
               "lanes 0x%08x)",
               op_name(op), mask, t->warp, w->exist);
    int gi = -1;
    for (int i = 0; i < w->ngroups; i++) {
        group_t *gr = &w->groups[i];
        if (!(gr->mask & mask)) continue;
        if (gr->mask != mask || gr->op != op || gr->width != width)
            report(E_SYNC, true, pc,
                   "warp %d: lane %d calls %s(mask 0x%08x, width %d) while "
                   "lanes 0x%08x wait in %s(mask 0x%08x, width %d)",
                   t->warp, t->lane, op_name(op), mask, width, gr->arrived, op_name(gr->op),
                   gr->mask, gr->width);
        gi = i;
    }
    if (gi < 0) {
        if (w->ngroups == MAX_GROUPS)
            report(E_SYNC, true, pc, "warp %d: more than %d concurrent collectives", t->warp,
                   MAX_GROUPS);
        gi = w->ngroups++;
        w->groups[gi] = group_t{ op, width, mask, 0, pc };
    }
    t->val = bits;
    t->arg = arg;
    w->groups[gi].arrived |= me;
    if (w->groups[gi].arrived == mask) {
        complete(w, gi, t);
        return t->result;
    }
    t->state = T_WARP;
    t->pc = pc;
    yield(t);
    return t->result;
}

void syncwarp(unsigned mask) { (void)warp_op(W_SYNC, mask, 0, 0, 32); }

/* ---------------------------------------------------------------- shared memory */

void *shared_dynamic() {
    need_thread("extern __shared__");
    return smem_base() + SMEM_DYN_OFF;
}

void *shared_static(const void *key, size_t size, size_t align) {
    need_thread("__shared__");
    launch_t *L = blk.L;
    for (int i = 0; i < L->nvars; i++)
        if (L->vars[i].key == key) return smem_base() + L->vars[i].off;
    void *pc = __builtin_return_address(0);
    if (L->nvars == (int)(sizeof(L->vars) / sizeof(L->vars[0])))
        report(E_LIMIT, true, pc, "more than %zu static __shared__ variables",
               sizeof(L->vars) / sizeof(L->vars[0]));
    if (align < 16) align = 16;
    size_t off = (L->static_end + 64 + align - 1) & ~(align - 1);
    L->static_bytes += size;
    if (L->static_bytes > SMEM_STATIC_MAX || off + size > SMEM_ARENA ||
        L->static_bytes + L->smem > SMEM_OPTIN)
        report(E_LIMIT, true, pc,
               "static shared memory %zu bytes (+ %zu dynamic) is past the "
               "device's limits (%d static, %d in all)",
               L->static_bytes, L->smem, SMEM_STATIC_MAX, SMEM_OPTIN);
    L->vars[L->nvars++] = svar_t{ key, off, size };
    L->static_end = off + size;
    smem_set_valid(off, size, true);
    memset(smem_base() + off, 0xff, size); /* this block's first sight of it: garbage */
    return smem_base() + off;
}

/* ---------------------------------------------------------------- running blocks */

static void fiber_main(thread_t *t) {
    blk.L->job->run();
    t->state = T_DONE;
    blk.ndone++;
    switch_away(t);
    abort(); /* a finished fiber is never resumed */
}

[[noreturn]] void abort_kernel(cudaError_t e) {
    thread_t *t = g.cur;
    blk.aborted = 1;
    if (g.sticky == cudaSuccess) g.sticky = e;
    to_scheduler(t);
    abort();
}

static const char *where(const thread_t *t, char *buf, size_t len) {
    if (t->state == T_DONE) return "has exited";
    if (t->state == T_BAR) {
        snprintf(buf, len, "waits at __syncthreads (pc %p)", t->pc);
        return buf;
    }
    if (t->state == T_WARP) {
        const warp_t *w = &warps[t->warp];
        for (int i = 0; i < w->ngroups; i++)
            if ((w->groups[i].arrived >> t->lane) & 1u) {
                snprintf(buf, len, "waits in %s(mask 0x%08x) (pc %p)", op_name(w->groups[i].op),
                         w->groups[i].mask, t->pc);
                return buf;
            }
    }
    return "is runnable";
}

/* Nothing can run: say why, per stuck warp collective, then per barrier. */
static void deadlock() {
    char a[128], b[128];
    for (int wi = 0; wi < blk.nwarps; wi++) {
        warp_t *w = &warps[wi];
        for (int i = 0; i < w->ngroups; i++) {
            group_t *gr = &w->groups[i];
            unsigned missing = gr->mask & ~gr->arrived;
            int l = __builtin_ctz(missing);
            thread_t *x = &threads[wi * 32 + l];
            g.cur = &threads[wi * 32 + __builtin_ctz(gr->arrived)];
            report(E_DEADLOCK, false, gr->pc,
                   "deadlock: warp %d lanes 0x%08x wait in %s(mask "
                   "0x%08x) for lanes 0x%08x; lane %d %s",
                   wi, gr->arrived, op_name(gr->op), gr->mask, missing, l, where(x, a, sizeof a));
        }
    }
    for (int i = 0; i < blk.n; i++) {
        if (threads[i].state != T_BAR) continue;
        for (int j = 0; j < blk.n; j++) {
            if (threads[j].state == T_BAR || threads[j].state == T_DONE) continue;
            g.cur = &threads[i];
            report(E_DEADLOCK, false, threads[i].pc,
                   "deadlock: thread %d waits at "
                   "__syncthreads while thread %d %s",
                   i, j, where(&threads[j], b, sizeof b));
            i = blk.n;
            break;
        }
    }
    g.cur = NULL;
    if (g.sticky == cudaSuccess) g.sticky = cudaErrorLaunchFailure;
    blk.aborted = 1;
}

/* Releases a barrier every live thread reached; all should be at the same __syncthreads. */
static void release_barrier() {
    void *pc = NULL;
    int first = -1;
    for (int i = 0; i < blk.n; i++) {
        thread_t *t = &threads[i];
        if (t->state != T_BAR) continue;
        if (first < 0) {
            first = i, pc = t->pc;
        } else if (t->pc != pc && !same_source(t->pc, pc)) {
            g.cur = t;
            report(E_SYNC, false, t->pc,
                   "divergent __syncthreads: thread %d waits at this "
                   "barrier, thread %d at another: %s",
                   i, first, source_of(pc).c_str());
            g.cur = NULL;
            pc = t->pc;
        }
        t->state = T_RUN;
        push(i);
    }
    blk.nbar = 0;
    blk.epoch++;
}

static void run_block(launch_t *L, uint3 bid) {
    dim3 bd = L->block;
    int n = (int)(bd.x * bd.y * bd.z);
    blk.L = L;
    blk.bid = bid;
    blk.n = n;
    blk.nwarps = (n + 31) / 32;
    blk.ndone = blk.nbar = 0;
    blk.th = threads;
    blk.w = warps;
    blk.epoch = 1;
    blk.serial = ++block_serial;
    blk.aborted = 0;
    g.blk = &blk;
    for (int i = 0; i < blk.nwarps; i++) {
        int lanes = n - i * 32 < 32 ? n - i * 32 : 32;
        warps[i].exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        warps[i].epoch = 1;
        warps[i].ngroups = 0;
    }
    q_head = q_len = 0;
    for (int i = 0; i < n; i++) {
        thread_t *t = &threads[i];
        t->tid =
            uint3{ (unsigned)i % bd.x, ((unsigned)i / bd.x) % bd.y, (unsigned)i / (bd.x * bd.y) };
        t->lin = i;
        t->warp = i / 32;
        t->lane = i % 32;
        t->state = T_RUN;
        t->sp = make_context(stacks + (size_t)(i + 1) * SLOT, fiber_main, t);
        push(i);
    }
    /* shared memory is garbage at every block's start */
    memset(smem_base() + SMEM_DYN_OFF, 0xff, L->smem);
    for (int i = 0; i < L->nvars; i++) memset(smem_base() + L->vars[i].off, 0xff, L->vars[i].size);
    for (;;) {
        while (q_len > 0) {
            thread_t *t = &threads[queue[q_head]];
            q_head = (q_head + 1) % n;
            q_len--;
            g.cur = t;
            to_fiber(t);
            g.cur = NULL;
            if (blk.aborted) return;
        }
        if (blk.ndone == n) return;
        if (blk.nbar > 0 && blk.nbar + blk.ndone == n) {
            release_barrier();
            continue;
        }
        deadlock();
        return;
    }
}

cudaError_t run_launch(launch_t *L) {
    stacks_init();
    g.n_launches++;
    g.job_lo = (uintptr_t)L->job;
    g.job_span = L->job->size();
    smem_set_valid(SMEM_DYN_OFF, L->smem, true);
    dim3 gd = L->grid;
    uint64_t n = (uint64_t)gd.x * gd.y * gd.z, step = 1, first = 0;
    /* A device runs blocks in no promised order: the emulator walks them in a scrambled but
     * reproducible one (i -> first + i * step mod n, step coprime with n), so a kernel that
     * relies on block order gets another one than the natural. CELERIAC_CUDA_EMU_ORDER=linear
     * turns it off. */
    static int linear = -1;
    if (linear < 0) {
        const char *e = getenv("CELERIAC_CUDA_EMU_ORDER");
        linear = e && strcmp(e, "linear") == 0;
    }
    if (!linear && n > 1) {
        const uint64_t primes[] = { 7919, 104729, 1299709, 15485863 };
        for (uint64_t p : primes)
            if (n % p) {
                step = p % n ? p % n : 1;
                break;
            }
        first = (L->id * 2654435761ull) % n;
    }
    for (uint64_t i = 0; i < n && g.sticky == cudaSuccess; i++) {
        uint64_t b = (first + i * step) % n;
        run_block(L, uint3{ (unsigned)(b % gd.x), (unsigned)(b / gd.x % gd.y),
                            (unsigned)(b / ((uint64_t)gd.x * gd.y)) });
        g.n_blocks++;
        if (blk.aborted) break;
    }
    smem_set_valid(SMEM_DYN_OFF, L->smem, false);
    for (int i = 0; i < L->nvars; i++) smem_set_valid(L->vars[i].off, L->vars[i].size, false);
    g.job_lo = g.job_span = 0;
    g.blk = NULL;
    return g.sticky;
}

/* ---------------------------------------------------------------- atomics */

/* Fibers never interleave inside one of these, so each is atomic by construction; the
 * access is checked first (bounds, initialisation, races with plain accesses). */
float atomic_add_f32(float *p, float v) {
    check_atomic(p, 4, __builtin_return_address(0));
    float old = *p;
    *p = old + v;
    return old;
}

double atomic_add_f64(double *p, double v) {
    check_atomic(p, 8, __builtin_return_address(0));
    double old = *p;
    *p = old + v;
    return old;
}

template <typename T> static T atomic_apply(T *p, int op, T v, T cmp) {
    T old = *p;
    switch (op) {
    case A_ADD: *p = (T)(old + v); break;
    case A_MIN: *p = v < old ? v : old; break;
    case A_MAX: *p = v > old ? v : old; break;
    case A_EXCH: *p = v; break;
    case A_CAS: *p = old == cmp ? v : old; break;
    case A_AND: *p = old & v; break;
    case A_OR: *p = old | v; break;
    case A_XOR: *p = old ^ v; break;
    }
    return old;
}

uint32_t atomic_op_u32(uint32_t *p, int op, uint32_t v, uint32_t cmp) {
    check_atomic(p, 4, __builtin_return_address(0));
    return atomic_apply(p, op, v, cmp);
}

uint64_t atomic_op_u64(uint64_t *p, int op, uint64_t v, uint64_t cmp) {
    check_atomic(p, 8, __builtin_return_address(0));
    return atomic_apply(p, op, v, cmp);
}

int32_t atomic_op_i32(int32_t *p, int op, int32_t v, int32_t cmp) {
    check_atomic(p, 4, __builtin_return_address(0));
    return atomic_apply(p, op, v, cmp);
}

} /* namespace cel_emu */
