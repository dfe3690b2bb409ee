/* emu_check.cpp -- the emulator's device memory and its checker, as compute-sanitizer would.
 *
 * Test code (tests/cuda-emu/). Device memory is one reserved region of the host's address
 * space with a shadow byte per byte: invalid (guard zones, never allocated), allocated but
 * never written, initialised, freed. cudaMalloc places each allocation between 256-byte
 * guard zones with its exact size in the shadow (one byte past the end is out of bounds),
 * fills it with 0xff (a NaN in every float type), and cudaFree quarantines the range so a
 * use after free is seen. Code compiled with -fsanitize=kernel-address (model/cuda's .cu
 * files under the emulator) calls __asan_{load,store}N_noabort before every memory access; those
 * land here: inside a kernel an access must hit device memory (in bounds, initialised when
 * read), the block's shared arena (in a live variable, initialised, no race), the thread's
 * stack or the launch's arguments; host code must not dereference device memory nor touch
 * the destination of a device-to-host copy that has not run yet. Shared memory keeps per
 * 4-byte word its last writer and readers in the current barrier interval: a second thread
 * touching a word another wrote (or one another read, for a write) with no __syncthreads
 * between, or no __syncwarp between for two lanes of one warp, is a race.
 */
#include "emu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <deque>
#include <map>
#include <vector>

namespace cel_emu {

state_t g;

enum : size_t { REDZONE = 256, COMMIT_STEP = 64u << 20, QUARANTINE = 256u << 20 };

struct alloc_t {
    uintptr_t base, lo, hi; /* data at base; span [lo, hi) with the guard zones */
    size_t size;
    uint64_t id;
};

static uint8_t *region, *shadow_region;
static size_t reserve, committed, bump, capacity, used;
static uint64_t next_id;
static std::map<uintptr_t, alloc_t> live; /* by base */
static std::deque<alloc_t> quarantine;
static size_t quarantine_bytes;
static std::map<uintptr_t, size_t> free_spans; /* lo -> length */

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* CELERIAC_CUDA_EMU_MEM: the emulated device's memory, bytes with an optional K/M/G. */
static size_t env_capacity() {
    const char *e = getenv("CELERIAC_CUDA_EMU_MEM");
    if (!e || !*e) return (size_t)8 << 30;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    if (*end == 'K' || *end == 'k') v <<= 10;
    if (*end == 'M' || *end == 'm') v <<= 20;
    if (*end == 'G' || *end == 'g') v <<= 30;
    return v ? (size_t)v : (size_t)8 << 30;
}

void mem_init() {
    if (region) return;
    capacity = env_capacity();
    reserve = round_up(2 * capacity + (1u << 30), COMMIT_STEP);
    void *d = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *s = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (d == MAP_FAILED || s == MAP_FAILED) {
        fprintf(stderr, "cuda-emu: cannot reserve %zu GiB of address space\n", reserve >> 30);
        abort();
    }
    region = (uint8_t *)d;
    shadow_region = (uint8_t *)s;
    g.dev_lo = (uintptr_t)region;
    g.dev_span = 0;
    g.shadow = shadow_region;
    smem_init();
}

size_t mem_capacity() { return capacity; }
size_t mem_used() { return used; }

static bool commit(size_t upto) {
    upto += 4096; /* a checked access may read a few shadow bytes past the last span */
    if (upto <= committed) return true;
    size_t n = round_up(upto, COMMIT_STEP);
    if (n > reserve) return false;
    if (mprotect(region + committed, n - committed, PROT_READ | PROT_WRITE) != 0 ||
        mprotect(shadow_region + committed, n - committed, PROT_READ | PROT_WRITE) != 0)
        return false;
    committed = n;
    g.dev_span = committed;
    return true;
}

void *dev_alloc(size_t bytes) {
    size_t body = round_up(bytes, 256), span = REDZONE + body + REDZONE;
    if (used + body > capacity) return NULL;
    uintptr_t lo = 0;
    for (auto it = free_spans.begin(); it != free_spans.end(); ++it) {
        if (it->second < span) continue;
        lo = it->first;
        size_t rest = it->second - span;
        free_spans.erase(it);
        if (rest) free_spans[lo + span] = rest;
        break;
    }
    if (!lo) {
        if (!commit(bump + span)) return NULL;
        lo = (uintptr_t)region + bump;
        bump += span;
    }
    alloc_t a{ lo + REDZONE, lo, lo + span, bytes, ++next_id };
    uint8_t *sh = shadow_region + (lo - (uintptr_t)region);
    memset(sh, SH_INVALID, span);
    memset(sh + REDZONE, SH_UNINIT, bytes);
    memset((void *)a.base, 0xff, body); /* poison: NaN in every float format */
    live[a.base] = a;
    used += body;
    return (void *)a.base;
}

static void release(const alloc_t &a) {
    size_t off = a.lo - (uintptr_t)region, span = a.hi - a.lo;
    memset(shadow_region + off, SH_INVALID, span);
    size_t p0 = round_up(off, 4096), p1 = (off + span) / 4096 * 4096;
    if (p1 > p0) {
        madvise(region + p0, p1 - p0, MADV_DONTNEED);
        madvise(shadow_region + p0, p1 - p0, MADV_DONTNEED);
    }
    uintptr_t lo = a.lo;
    size_t len = span;
    auto next = free_spans.lower_bound(lo);
    if (next != free_spans.end() && next->first == lo + len) {
        len += next->second;
        free_spans.erase(next);
    }
    auto prev = free_spans.lower_bound(lo);
    if (prev != free_spans.begin()) {
        --prev;
        if (prev->first + prev->second == lo) {
            lo = prev->first;
            len += prev->second;
            free_spans.erase(prev);
        }
    }
    free_spans[lo] = len;
}

bool dev_free(void *p) {
    auto it = live.find((uintptr_t)p);
    if (it == live.end()) return false;
    alloc_t a = it->second;
    live.erase(it);
    memset(shadow_region + (a.base - (uintptr_t)region), SH_FREED, a.size);
    used -= round_up(a.size, 256);
    quarantine.push_back(a);
    quarantine_bytes += a.hi - a.lo;
    while (quarantine_bytes > QUARANTINE) {
        alloc_t old = quarantine.front();
        quarantine.pop_front();
        quarantine_bytes -= old.hi - old.lo;
        release(old);
    }
    return true;
}

/* The live allocation holding address a, or NULL. */
static const alloc_t *find_live(uintptr_t a) {
    auto it = live.upper_bound(a);
    if (it == live.begin()) return NULL;
    --it;
    return a >= it->second.base && a < it->second.base + it->second.size ? &it->second : NULL;
}

bool dev_range_ok(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = live.upper_bound(a);
    if (it == live.begin()) return false;
    --it;
    return a >= it->second.base && a + n <= it->second.base + it->second.size;
}

/* Where a device address is, in words, for a report. */
static void describe_dev(uintptr_t a, char *buf, size_t len) {
    if (const alloc_t *x = find_live(a)) {
        snprintf(buf, len, "byte %zu of allocation #%llu (%zu bytes at %p)", (size_t)(a - x->base),
                 (unsigned long long)x->id, x->size, (void *)x->base);
        return;
    }
    for (const alloc_t &q : quarantine)
        if (a >= q.base && a < q.base + q.size) {
            snprintf(buf, len, "byte %zu of freed allocation #%llu (%zu bytes at %p)",
                     (size_t)(a - q.base), (unsigned long long)q.id, q.size, (void *)q.base);
            return;
        }
    auto it = live.upper_bound(a);
    const alloc_t *after = it != live.end() ? &it->second : NULL, *before = NULL;
    if (it != live.begin()) before = &(--it)->second;
    if (before && (!after || a - (before->base + before->size) <= after->base - a))
        snprintf(buf, len, "%zu bytes past the end of allocation #%llu (%zu bytes at %p)",
                 (size_t)(a - (before->base + before->size)), (unsigned long long)before->id,
                 before->size, (void *)before->base);
    else if (after)
        snprintf(buf, len, "%zu bytes before allocation #%llu (%zu bytes at %p)",
                 (size_t)(after->base - a), (unsigned long long)after->id, after->size,
                 (void *)after->base);
    else snprintf(buf, len, "no allocation near it");
}

static const char *verb(int kind) {
    return kind == ACC_READ ? "reads" : kind == ACC_WRITE ? "writes" : "atomically updates";
}

/* Device access by code: the slow path (something is not plainly fine). */
static void dev_slow(uintptr_t a, size_t n, int kind, void *pc) {
    uint8_t *s = g.shadow + (a - g.dev_lo);
    char where[160];
    for (size_t i = 0; i < n; i++) {
        if (s[i] == SH_INVALID || s[i] == SH_FREED) {
            describe_dev(a + i, where, sizeof where);
            report(s[i] == SH_FREED ? E_FREED : E_OOB_GLOBAL, true, pc, "%s %zu bytes at %p: %s%s",
                   verb(kind), n, (void *)a, where,
                   s[i] == SH_FREED ? " (use after cudaFree)" : " (out of bounds)");
            return;
        }
    }
    if (kind != ACC_WRITE) {
        for (size_t i = 0; i < n; i++)
            if (s[i] == SH_UNINIT) {
                describe_dev(a + i, where, sizeof where);
                report(E_UNINIT_GLOBAL, false, pc,
                       "%s %zu bytes at %p: %s was never written "
                       "(uninitialised device memory)",
                       verb(kind), n, (void *)a, where);
                break;
            }
    }
    memset(s, SH_INIT, n); /* report an uninitialised byte once */
}

static inline void dev_access(uintptr_t a, size_t n, int kind, void *pc) {
    if (!g.cur) {
        char where[160];
        describe_dev(a, where, sizeof where);
        report(E_DEVICE_FROM_HOST, false, pc,
               "host code %s %zu bytes of device memory at %p "
               "(%s)",
               verb(kind), n, (void *)a, where);
        return;
    }
    uint8_t *s = g.shadow + (a - g.dev_lo);
    if (kind == ACC_READ) {
        if (n == 4) {
            uint32_t v;
            memcpy(&v, s, 4);
            if (v == 0x02020202u) return;
        } else if (n == 8 || n == 16) {
            uint64_t v, w = 0x0202020202020202ull;
            memcpy(&v, s, 8);
            if (n == 8 ? v == w : (v == w && (memcpy(&v, s + 8, 8), v == w))) return;
        } else {
            size_t i = 0;
            while (i < n && s[i] == SH_INIT) i++;
            if (i == n) return;
        }
    } else if (kind == ACC_WRITE) {
        size_t i = 0;
        while (i < n && (s[i] == SH_INIT || s[i] == SH_UNINIT)) i++;
        if (i == n) {
            memset(s, SH_INIT, n);
            return;
        }
    }
    dev_slow(a, n, kind, pc);
}

bool dev_check(const void *p, size_t n, int kind, const char *what) {
    if (n == 0) return true;
    uintptr_t a = (uintptr_t)p;
    char where[160];
    if (!is_dev(p) || !dev_range_ok(p, n)) {
        if (is_dev(p)) {
            uintptr_t bad = a;
            const alloc_t *x = find_live(a);
            if (x) bad = x->base + x->size;
            describe_dev(bad, where, sizeof where);
        } else {
            snprintf(where, sizeof where, "not device memory");
        }
        report(E_OOB_GLOBAL, true, NULL,
               "%s: %s bytes [%p, %p) reach outside their allocation: "
               "%s",
               what, verb(kind), p, (void *)(a + n), where);
        return false;
    }
    uint8_t *s = g.shadow + (a - g.dev_lo);
    if (kind != ACC_WRITE) {
        const uint8_t *q = (const uint8_t *)memchr(s, SH_UNINIT, n);
        if (!q) return true;
        describe_dev(a + (size_t)(q - s), where, sizeof where);
        report(E_UNINIT_GLOBAL, false, NULL,
               "%s reads %zu bytes at %p: %s was never "
               "written (uninitialised device memory)",
               what, n, p, where);
    }
    memset(s, SH_INIT, n); /* written, or reported once */
    return true;
}

void dev_copy_shadow(void *dst, const void *src, size_t n) {
    memmove(g.shadow + ((uintptr_t)dst - g.dev_lo), g.shadow + ((uintptr_t)src - g.dev_lo), n);
}

/* ---------------------------------------------------------------- host ranges awaiting a copy */

struct pending_t {
    uintptr_t lo, hi;
    const void *op;
};
static std::vector<pending_t> pending;

void pending_add(const void *p, size_t n, const void *op) {
    pending.push_back(pending_t{ (uintptr_t)p, (uintptr_t)p + n, op });
    g.npending = (int)pending.size();
}

void pending_remove(const void *op) {
    for (size_t i = 0; i < pending.size(); i++)
        if (pending[i].op == op) {
            pending[i] = pending.back();
            pending.pop_back();
            break;
        }
    g.npending = (int)pending.size();
}

static void pending_access(uintptr_t a, size_t n, int kind, void *pc) {
    for (const pending_t &p : pending)
        if (a < p.hi && a + n > p.lo) {
            report(E_UNSYNCED_HOST, false, pc,
                   "host code %s %zu bytes at %p, the destination of "
                   "a cudaMemcpyAsync that has not run yet: synchronise its stream first",
                   verb(kind), n, (void *)a);
            return;
        }
}

/* ---------------------------------------------------------------- shared memory */

struct smeta_t {
    uint32_t stamp; /* block serial; another block's entry counts as fresh */
    uint32_t epoch; /* barrier interval of the records below */
    uint16_t w_tid, r_tid, a_tid;
    uint8_t r_warp, init;  /* init: one bit per byte */
    uint32_t w_wep, r_wep; /* the warp's __syncwarp count at the write / the latest read */
    uint8_t valid;         /* part of a live variable of the running launch */
};
enum : uint16_t { NO_TID = 0xffff, MANY = 0xfffe };
enum : uint8_t { MANY_WARPS = 0xff };

static uint8_t *arena;
static smeta_t *meta;

void smem_init() {
    if (arena) return;
    arena = (uint8_t *)mmap(NULL, SMEM_ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                            -1, 0);
    meta = (smeta_t *)calloc(SMEM_ARENA / 4, sizeof(smeta_t));
    if (arena == MAP_FAILED || !meta) {
        fprintf(stderr, "cuda-emu: cannot allocate the shared-memory arena\n");
        abort();
    }
    g.smem_lo = (uintptr_t)arena;
    g.smem_span = SMEM_ARENA;
}

uint8_t *smem_base() { return arena; }

void smem_set_valid(size_t off, size_t size, bool v) {
    for (size_t w = off / 4; w < (off + size + 3) / 4; w++) meta[w].valid = v;
}

static void describe_smem(size_t off, char *buf, size_t len) {
    launch_t *L = g.blk->L;
    if (off >= SMEM_DYN_OFF && off < SMEM_DYN_OFF + L->smem) {
        snprintf(buf, len, "byte %zu of the dynamic shared memory (%zu bytes)", off - SMEM_DYN_OFF,
                 L->smem);
        return;
    }
    for (int i = 0; i < L->nvars; i++)
        if (off >= L->vars[i].off && off < L->vars[i].off + L->vars[i].size) {
            snprintf(buf, len, "byte %zu of static __shared__ variable #%d (%zu bytes)",
                     off - L->vars[i].off, i, L->vars[i].size);
            return;
        }
    if (off >= SMEM_DYN_OFF + L->smem && off < SMEM_STATIC_OFF)
        snprintf(buf, len, "%zu bytes past the end of the dynamic shared memory (%zu bytes)",
                 off - SMEM_DYN_OFF - L->smem, L->smem);
    else snprintf(buf, len, "arena offset %zu, outside every shared variable", off);
}

static void coords(int lin, char *buf, size_t len) {
    dim3 b = g.blk->L->block;
    snprintf(buf, len, "thread (%u,%u,%u) [warp %d lane %d]", (unsigned)lin % b.x,
             ((unsigned)lin / b.x) % b.y, (unsigned)lin / (b.x * b.y), lin / 32, lin % 32);
}

static void race(const char *now, const char *before, int other, size_t off, void *pc) {
    char who[96], where[128];
    if (other == MANY) snprintf(who, sizeof who, "other threads");
    else coords(other, who, sizeof who);
    describe_smem(off, where, sizeof where);
    report(E_RACE, false, pc,
           "shared-memory race: this thread %s %s after %s %s it, with no "
           "__syncthreads (nor __syncwarp, within a warp) between",
           now, where, who, before);
}

/* One word of a shared access, the general case. */
static void smem_word(size_t w, uint8_t bytes, size_t off, size_t n, int kind, void *pc) {
    thread_t *t = g.cur;
    block_t *b = g.blk;
    uint16_t tid = (uint16_t)t->lin;
    uint32_t wep = b->w[t->warp].epoch;
    smeta_t *m = &meta[w];
    if (!m->valid) {
        char where[128];
        describe_smem(w * 4 < off ? off : w * 4, where, sizeof where);
        report(E_OOB_SHARED, true, pc,
               "%s %zu bytes of shared memory at %p: %s (out of "
               "bounds)",
               verb(kind), n, (void *)(g.smem_lo + off), where);
        return;
    }
    if (m->stamp != b->serial) {
        *m = smeta_t{ b->serial, b->epoch, NO_TID, NO_TID, NO_TID, MANY_WARPS, 0, 0, 0, 1 };
    } else if (m->epoch != b->epoch) {
        m->epoch = b->epoch;
        m->w_tid = m->r_tid = m->a_tid = NO_TID;
        m->r_warp = MANY_WARPS;
    }
    /* a conflicting earlier access: another thread, and not ordered by a __syncwarp of
     * the same warp since */
    bool w_conf =
        m->w_tid != NO_TID && m->w_tid != tid && !(m->w_tid / 32 == t->warp && wep > m->w_wep);
    bool r_conf =
        m->r_tid != NO_TID && m->r_tid != tid && !(m->r_warp == t->warp && wep > m->r_wep);
    bool a_conf = m->a_tid != NO_TID && m->a_tid != tid;
    if (kind == ACC_READ) {
        if (w_conf) race("reads", "wrote", m->w_tid, w * 4, pc);
        else if (a_conf) race("reads", "atomically updated", m->a_tid, w * 4, pc);
        if (m->r_tid == NO_TID) {
            m->r_tid = tid;
            m->r_warp = (uint8_t)t->warp;
        } else if (m->r_tid != tid) {
            m->r_tid = MANY;
            if (m->r_warp != t->warp) m->r_warp = MANY_WARPS;
        }
        m->r_wep = wep;
    } else if (kind == ACC_WRITE) {
        if (w_conf) race("writes", "wrote", m->w_tid, w * 4, pc);
        else if (r_conf) race("writes", "read", m->r_tid, w * 4, pc);
        else if (a_conf) race("writes", "atomically updated", m->a_tid, w * 4, pc);
        m->w_tid = tid;
        m->w_wep = wep;
    } else {
        if (w_conf) race("atomically updates", "wrote", m->w_tid, w * 4, pc);
        else if (r_conf) race("atomically updates", "read", m->r_tid, w * 4, pc);
        m->a_tid = m->a_tid == NO_TID || m->a_tid == tid ? tid : (uint16_t)MANY;
    }
    if (kind != ACC_WRITE && (m->init & bytes) != bytes) {
        char where[128];
        describe_smem(w * 4 + (size_t)__builtin_ctz(bytes), where, sizeof where);
        report(E_UNINIT_SHARED, false, pc,
               "%s %s, which no thread of this block wrote "
               "(uninitialised shared memory)",
               verb(kind), where);
    }
    m->init |= bytes;
}

/* A shared access, word by word. An access that conflicts with nothing, to a word already
 * seen in this barrier interval (and, for a read, initialised), updates the records here;
 * anything else goes through smem_word. */
static inline void smem_access(uintptr_t a, size_t n, int kind, void *pc) {
    size_t off = a - g.smem_lo;
    const block_t *b = g.blk;
    const thread_t *t = g.cur;
    uint16_t tid = (uint16_t)t->lin;
    uint32_t wep = b->w[t->warp].epoch;
    for (size_t w = off / 4; w <= (off + n - 1) / 4; w++) {
        size_t b0 = w * 4 < off ? off - w * 4 : 0, b1 = (w + 1) * 4 > off + n ? off + n - w * 4 : 4;
        uint8_t bytes = (uint8_t)(((1u << b1) - 1u) & ~((1u << b0) - 1u));
        smeta_t *m = &meta[w];
        if (m->stamp == b->serial && m->epoch == b->epoch && m->a_tid == NO_TID &&
            (m->w_tid == NO_TID || m->w_tid == tid ||
             (m->w_tid / 32 == t->warp && wep > m->w_wep))) {
            if (kind == ACC_READ && (m->init & bytes) == bytes) {
                if (m->r_tid != tid) {
                    if (m->r_tid == NO_TID) {
                        m->r_tid = tid;
                        m->r_warp = (uint8_t)t->warp;
                    } else {
                        m->r_tid = MANY;
                        if (m->r_warp != t->warp) m->r_warp = MANY_WARPS;
                    }
                }
                m->r_wep = wep;
                continue;
            }
            if (kind == ACC_WRITE && (m->r_tid == NO_TID || m->r_tid == tid ||
                                      (m->r_warp == t->warp && wep > m->r_wep))) {
                m->w_tid = tid;
                m->w_wep = wep;
                m->init |= bytes;
                continue;
            }
        }
        smem_word(w, bytes, off, n, kind, pc);
    }
}

static void host_from_kernel(uintptr_t a, size_t n, int kind, void *pc) {
    if ((uintptr_t)a - (uintptr_t)region < reserve)
        report(E_OOB_GLOBAL, true, pc,
               "%s %zu bytes at %p: device address space never "
               "allocated (out of bounds)",
               verb(kind), n, (void *)a);
    else
        report(E_HOST_FROM_KERNEL, true, pc,
               "%s %zu bytes at %p, which is neither device, "
               "shared nor local memory (a host pointer passed to a kernel?)",
               verb(kind), n, (void *)a);
}

static inline __attribute__((always_inline)) void check(uintptr_t a, size_t n, int kind, void *pc) {
    if (a - g.dev_lo < g.dev_span) return dev_access(a, n, kind, pc);
    if (!g.cur) {
        if (g.npending) pending_access(a, n, kind, pc);
        return;
    }
    if (a - g.stk_lo < g.stk_span) return;
    if (a - g.smem_lo < g.smem_span) return smem_access(a, n, kind, pc);
    if (a - g.job_lo < g.job_span) return;
    host_from_kernel(a, n, kind, pc);
}

void check_atomic(const void *p, size_t n, void *pc) {
    if (!g.cur) {
        fprintf(stderr, "cuda-emu: an atomic called outside a kernel\n");
        abort();
    }
    check((uintptr_t)p, n, ACC_ATOMIC, pc);
}

} /* namespace cel_emu */

/* ---------------------------------------------------------------- the compiler's hooks */

using cel_emu::ACC_READ;
using cel_emu::ACC_WRITE;

#define CEL_EMU_HOOKS(N)                                                 \
    extern "C" CEL_EMU_API void __asan_load##N##_noabort(uintptr_t a) {  \
        cel_emu::check(a, N, ACC_READ, __builtin_return_address(0));     \
    }                                                                    \
    extern "C" CEL_EMU_API void __asan_store##N##_noabort(uintptr_t a) { \
        cel_emu::check(a, N, ACC_WRITE, __builtin_return_address(0));    \
    }                                                                    \
    extern "C" CEL_EMU_API void __asan_load##N(uintptr_t a) {            \
        cel_emu::check(a, N, ACC_READ, __builtin_return_address(0));     \
    }                                                                    \
    extern "C" CEL_EMU_API void __asan_store##N(uintptr_t a) {           \
        cel_emu::check(a, N, ACC_WRITE, __builtin_return_address(0));    \
    }
CEL_EMU_HOOKS(1)
CEL_EMU_HOOKS(2)
CEL_EMU_HOOKS(4)
CEL_EMU_HOOKS(8)
CEL_EMU_HOOKS(16)

extern "C" CEL_EMU_API void __asan_loadN_noabort(uintptr_t a, size_t n) {
    if (n) cel_emu::check(a, n, ACC_READ, __builtin_return_address(0));
}
extern "C" CEL_EMU_API void __asan_storeN_noabort(uintptr_t a, size_t n) {
    if (n) cel_emu::check(a, n, ACC_WRITE, __builtin_return_address(0));
}
extern "C" CEL_EMU_API void __asan_loadN(uintptr_t a, size_t n) {
    if (n) cel_emu::check(a, n, ACC_READ, __builtin_return_address(0));
}
extern "C" CEL_EMU_API void __asan_storeN(uintptr_t a, size_t n) {
    if (n) cel_emu::check(a, n, ACC_WRITE, __builtin_return_address(0));
}
extern "C" CEL_EMU_API void __asan_handle_no_return(void) {}
