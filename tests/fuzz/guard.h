/* guard.h -- puts a test input flush against an unreadable page.
 *
 * AddressSanitizer flags a read past a heap buffer only in code it instrumented; libc's
 * own reads are not checked (sscanf first runs strlen over its input, strtod and the
 * %s of printf read to a NUL). Copying each input to the end of an mmap'd region whose
 * next page is PROT_NONE makes any read past the input fault, whoever does it. Used by
 * every tests/fuzz/fuzz_*.c harness (so by `make fuzz` and the corpus replay) and by
 * unit tests that pin such a bug. Header-only, static: each program has one region,
 * grown when an input does not fit, reused otherwise; single-threaded.
 * CEL_FUZZ_GUARD=0 in the environment turns the copy off (the input is used where it
 * lies), for comparing speed; anything else, or unset, leaves it on.
 */
#ifndef CEL_FUZZ_GUARD_H
#define CEL_FUZZ_GUARD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint8_t *guard_base; /* readable bytes, then one PROT_NONE page */
static size_t guard_cap;    /* readable bytes (a whole number of pages) */
static int guard_mode = -1; /* -1 not yet read from the environment */

/* 1 when inputs are placed before a guard page (the default). */
static inline int guard_enabled(void) {
    if (guard_mode < 0) {
        const char *e = getenv("CEL_FUZZ_GUARD");
        guard_mode = !(e && strcmp(e, "0") == 0);
    }
    return guard_mode;
}

/* Makes room for size readable bytes before the guard page. Exits the test program
 * (this is test code, not the library) when the kernel refuses the mapping. */
static inline void guard_reserve(size_t size) {
    if (guard_base && size <= guard_cap) return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t cap = (size + page - 1) / page * page;
    if (cap == 0) cap = page;
    if (guard_base) munmap(guard_base, guard_cap + page);
    void *p = mmap(NULL, cap + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect((uint8_t *)p + cap, page, PROT_NONE) != 0) {
        perror("guard.h: mmap/mprotect");
        exit(2);
    }
    guard_base = p;
    guard_cap = cap;
}

/* Returns a copy of data[0..size) whose last byte is the last readable byte before
 * the guard page: reading data[size] faults. The copy stays valid until the next
 * call. With the guard off, returns data itself. */
static inline const uint8_t *guard_place(const uint8_t *data, size_t size) {
    if (!guard_enabled()) return data;
    guard_reserve(size);
    uint8_t *dst = guard_base + guard_cap - size;
    if (size) memcpy(dst, data, size);
    return dst;
}

#endif
