/* fuzz_replay.c -- replays a fuzz corpus through one harness, as a unit test.
 *
 * Linked with one tests/fuzz/fuzz_<name>.c (its LLVMFuzzerTestOneInput, and
 * LLVMFuzzerInitialize where it has one) into build/asan/fuzz/replay_<name>, with the
 * ASan+UBSan build of the libraries and without libFuzzer: a plain main() that calls the
 * harness on every file of the corpus directories given, in guard-page mode (the
 * harness places each input before a PROT_NONE page). `make test` (scripts/run-tests)
 * runs it on tests/fuzz/corpus/<name>/.
 *
 * Inputs run in a child process so that a crash, a sanitizer report or a trap is pinned
 * on the file that caused it and the others still run: one child takes the files in
 * order, telling the parent which one it starts; when it dies, the file it was on
 * failed and a new child goes on after it. Leaks show only when a child exits, so a
 * child that ran its files but exits non-zero (LeakSanitizer) has each of those files
 * rerun alone to find the leaking ones. Each file counts as one test: the last line
 * is "replay <name>: N passed, N failed"; the exit status is 0 only when nothing
 * failed and something ran. Usage: replay_<name> DIR|FILE...
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#define REPLAY_MAX_FILES 100000
#define REPLAY_MAX_BYTES (64u * 1024 * 1024) /* one input */
#define REPLAY_TIMEOUT_S 20                  /* one child, per input */
#define REPLAY_DONE      UINT32_MAX          /* written when a child ran all it had */

static char **files;
static size_t nfiles;

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds path, or every regular file in it when it is a directory (not recursive). */
static int collect(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (nfiles >= REPLAY_MAX_FILES) return -1;
        files[nfiles++] = strdup(path);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct dirent *e;
    size_t first = nfiles;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (nfiles >= REPLAY_MAX_FILES) break;
        files[nfiles++] = strdup(p);
    }
    closedir(d);
    qsort(files + first, nfiles - first, sizeof(files[0]), by_name);
    return 0;
}

/* Runs one input in this process. Returns 0, or -1 when it cannot be read. */
static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) return -1;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 || st.st_size > REPLAY_MAX_BYTES) {
        fclose(f);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size ? size : 1); /* exact: ASan sees a read one past it */
    int bad = !buf || fread(buf, 1, size, f) != size;
    fclose(f);
    if (!bad) LLVMFuzzerTestOneInput(buf, size);
    free(buf);
    return bad ? -1 : 0;
}

/* Runs files[from..to) in one child; writes each index to fd before running it.
 * Never returns. */
static void child(size_t from, size_t to, int fd) {
    for (size_t i = from; i < to; i++) {
        uint32_t idx = (uint32_t)i;
        if (write(fd, &idx, sizeof(idx)) != (ssize_t)sizeof(idx)) _exit(3);
        alarm(REPLAY_TIMEOUT_S);
        if (run_file(files[i]) != 0) {
            fprintf(stderr, "replay: cannot read %s\n", files[i]);
            _exit(4);
        }
    }
    alarm(0);
    uint32_t done = REPLAY_DONE;
    if (write(fd, &done, sizeof(done)) != (ssize_t)sizeof(done)) _exit(3);
    exit(0); /* exit, not _exit: LeakSanitizer checks at exit */
}

/* Forks a child for files[from..to). Returns the child's wait status; *last is the
 * last index it started (from - 1 when none), *done 1 when it ran them all. */
static int run_batch(size_t from, size_t to, long *last, int *done) {
    int p[2];
    if (pipe(p) != 0) {
        perror("replay: pipe");
        exit(2);
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("replay: fork");
        exit(2);
    }
    if (pid == 0) {
        close(p[0]);
        child(from, to, p[1]);
    }
    close(p[1]);
    *last = (long)from - 1;
    *done = 0;
    uint32_t idx;
    while (read(p[0], &idx, sizeof(idx)) == (ssize_t)sizeof(idx)) {
        if (idx == REPLAY_DONE) *done = 1;
        else *last = (long)idx;
    }
    close(p[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

static void describe(const char *path, int status) {
    if (WIFSIGNALED(status))
        fprintf(stderr, "replay: FAILED %s (signal %d)\n", path, WTERMSIG(status));
    else fprintf(stderr, "replay: FAILED %s (exit status %d)\n", path, WEXITSTATUS(status));
}

static size_t passed, failed;

/* Runs files[from..to) and counts each file passed or failed. A child that dies on a
 * file fails that file; the files before it ran in the same child but were never
 * leak-checked (the child did not exit), so they run again, as do the ones after it.
 * A child that ran everything and still failed (a leak) has each file rerun alone. */
static void run_range(size_t from, size_t to) {
    if (from >= to) return;
    long last;
    int done;
    int status = run_batch(from, to, &last, &done);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && done) {
        passed += to - from;
        return;
    }
    if (done && to - from > 1) {
        for (size_t i = from; i < to; i++) run_range(i, i + 1);
        return;
    }
    if (last < (long)from) { /* died before starting a file: blame the first */
        last = (long)from;
    }
    describe(files[last], status);
    failed++;
    run_range(from, (size_t)last);
    run_range((size_t)last + 1, to);
}

int main(int argc, char **argv) {
    const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (strncmp(name, "replay_", 7) == 0) name += 7;
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR|FILE...\n", name);
        return 2;
    }
    files = calloc(REPLAY_MAX_FILES, sizeof(files[0]));
    if (!files) return 2;
    for (int i = 1; i < argc; i++)
        if (collect(argv[i]) != 0) return 2;
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    run_range(0, nfiles);
    printf("replay %s: %zu passed, %zu failed\n", name, passed, failed);
    for (size_t i = 0; i < nfiles; i++) free(files[i]);
    free(files);
    return failed == 0 && passed > 0 ? 0 : 1;
}
