/* emu_report.cpp -- how the CUDA emulator reports what its checks find.
 *
 * Test code (tests/cuda-emu/). Each report is one "cuda-emu: ERROR ..." paragraph on
 * stderr: what happened, in which kernel, block and thread (or which API operation), and
 * the source line, from the access's return address through addr2line (-g builds). The
 * first three reports of a kind per kernel are printed, the rest counted. A fatal report
 * inside a kernel ends that kernel: the launch fails with cudaErrorIllegalAddress (memory)
 * or cudaErrorLaunchFailure (synchronisation), a sticky error as on a device. At exit a
 * process that saw any error prints "cuda-emu: ERROR SUMMARY: N errors" and exits 97 (as
 * compute-sanitizer --error-exitcode does), so no test can pass over a report;
 * CELERIAC_CUDA_EMU_VERBOSE=1 prints the summary line with 0 errors too, and
 * CELERIAC_CUDA_EMU_FATAL=1 exits (97) at the first report, for processes whose exit
 * status nobody reads (a worker's executors: their task then fails).
 */
#include "emu_internal.h"

#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <map>
#include <string>
#include <utility>

namespace cel_emu {

static const char *const kind_names[E_KINDS] = { "out-of-bounds device access",
                                                 "use after free",
                                                 "uninitialised device read",
                                                 "out-of-bounds shared access",
                                                 "uninitialised shared read",
                                                 "shared-memory race",
                                                 "host memory from a kernel",
                                                 "device memory from the host",
                                                 "host read before sync",
                                                 "misused synchronisation",
                                                 "deadlock",
                                                 "device limit" };

static uint64_t counts[E_KINDS], total;
static bool quiet;
static unsigned kinds_seen;
static std::map<std::pair<int, std::string>, int> seen;
static std::map<void *, std::string> lines;

/* "file:line (function)" for a code address, via addr2line; "pc 0x..." when it cannot. */
static std::string symbolize(void *pc) {
    if (!pc) return "";
    auto it = lines.find(pc);
    if (it != lines.end()) return it->second;
    char out[512];
    snprintf(out, sizeof out, "pc %p", pc);
    Dl_info di;
    if (dladdr(pc, &di) && di.dli_fbase) {
        const char *file = di.dli_fname;
        char exe[4096];
        if (!file || !*file || !strchr(file, '/')) {
            ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
            if (k > 0) exe[k] = '\0', file = exe;
        }
        uintptr_t addr = (uintptr_t)pc - 1; /* inside the call, not after it */
        if (((const Elf64_Ehdr *)di.dli_fbase)->e_type == ET_DYN) addr -= (uintptr_t)di.dli_fbase;
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%llx 2>/dev/null", file,
                 (unsigned long long)addr);
        FILE *p = popen(cmd, "r");
        if (p) {
            char fn[512], loc[512];
            std::string s;
            while (fgets(fn, sizeof fn, p) && fgets(loc, sizeof loc, p)) {
                fn[strcspn(fn, "\n")] = loc[strcspn(loc, "\n")] = '\0';
                if (loc[0] == '?') continue;
                const char *base = strstr(loc, "model/")   ? strstr(loc, "model/")
                                   : strstr(loc, "tests/") ? strstr(loc, "tests/")
                                                           : loc;
                char one[1100];
                snprintf(one, sizeof one, "%s%s (%.300s)", s.empty() ? "" : "\n       inlined in ",
                         base, fn);
                s += one;
            }
            pclose(p);
            if (!s.empty()) snprintf(out, sizeof out, "%s", s.c_str());
        }
    }
    lines[pc] = out;
    return out;
}

std::string source_of(void *pc) { return symbolize(pc); }

bool same_source(void *a, void *b) {
    static std::map<std::pair<void *, void *>, bool> known;
    if (a == b) return true;
    auto it = known.find(std::make_pair(a, b));
    if (it != known.end()) return it->second;
    std::string x = symbolize(a), y = symbolize(b);
    bool same = x.compare(0, 3, "pc ") == 0 || y.compare(0, 3, "pc ") == 0 || /* cannot tell */
                x.substr(0, x.find(' ')) == y.substr(0, y.find(' '));         /* file:line */
    known[std::make_pair(a, b)] = same;
    return same;
}

void report(int kind, bool fatal, void *pc, const char *fmt, ...) {
    total++;
    counts[kind]++;
    kinds_seen |= 1u << kind;
    thread_t *t = g.cur;
    const char *ctx = t && g.blk ? g.blk->L->name : g.op_name ? g.op_name : "host code";
    int n = ++seen[std::make_pair(kind, std::string(ctx))];
    if (n <= 3 && !quiet) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "cuda-emu: ERROR (%s): %s\n", kind_names[kind], msg);
        if (t && g.blk) {
            uint3 b = g.blk->bid;
            fprintf(stderr,
                    "    kernel %s, block (%u,%u,%u), thread (%u,%u,%u) [warp %d lane %d]\n", ctx,
                    b.x, b.y, b.z, t->tid.x, t->tid.y, t->tid.z, t->warp, t->lane);
        } else {
            fprintf(stderr, "    in %s\n", ctx);
        }
        std::string where = symbolize(pc);
        if (!where.empty()) fprintf(stderr, "    at %s\n", where.c_str());
        if (n == 3)
            fprintf(stderr, "    (further \"%s\" reports in %s are counted, not printed)\n",
                    kind_names[kind], ctx);
        fflush(stderr);
    }
    static int die_now = -1; /* CELERIAC_CUDA_EMU_FATAL=1: the first report ends the process */
    if (die_now < 0) {
        const char *e = getenv("CELERIAC_CUDA_EMU_FATAL");
        die_now = e && *e && *e != '0';
    }
    if (die_now && !quiet) {
        fprintf(stderr, "cuda-emu: CELERIAC_CUDA_EMU_FATAL: exiting on the first report\n");
        fflush(NULL);
        _exit(97);
    }
    if (fatal && t)
        abort_kernel(kind == E_OOB_GLOBAL || kind == E_FREED || kind == E_OOB_SHARED ||
                             kind == E_HOST_FROM_KERNEL
                         ? cudaErrorIllegalAddress
                     : kind == E_LIMIT ? cudaErrorLaunchOutOfResources
                                       : cudaErrorLaunchFailure);
}

uint64_t error_count() { return total; }

uint64_t test_take_errors(unsigned *kinds) {
    uint64_t n = total;
    if (kinds) *kinds = kinds_seen;
    total = 0;
    kinds_seen = 0;
    for (int k = 0; k < E_KINDS; k++) counts[k] = 0;
    seen.clear();
    cudaDeviceReset();
    return n;
}

void test_quiet(bool q) { quiet = q; }

/* At exit: the summary, and exit status 97 when anything was reported. */
static struct summary_t {
    ~summary_t() {
        const char *v = getenv("CELERIAC_CUDA_EMU_VERBOSE");
        if (!total && !(v && *v && *v != '0')) return;
        char kinds[1024] = "";
        for (int k = 0; k < E_KINDS; k++)
            if (counts[k]) {
                size_t u = strlen(kinds);
                snprintf(kinds + u, sizeof kinds - u, "%s%llu %s", u ? ", " : "",
                         (unsigned long long)counts[k], kind_names[k]);
            }
        fflush(stdout);
        fprintf(stderr,
                "cuda-emu: ERROR SUMMARY: %llu error%s%s%s%s; ran %llu kernels (%llu "
                "blocks), %llu GEMMs\n",
                (unsigned long long)total, total == 1 ? "" : "s", *kinds ? " (" : "", kinds,
                *kinds ? ")" : "", (unsigned long long)g.n_launches, (unsigned long long)g.n_blocks,
                (unsigned long long)g.n_gemms);
        fflush(NULL);
        if (total) _exit(97);
    }
} summary;

} /* namespace cel_emu */
