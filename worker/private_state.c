/* private_state.c -- make and remove the worker's private adapter-state folders (see the header). */
#include "private_state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"

#define PARENT_DIR    "/tmp"
#define PARENT_PREFIX "celeriac-state-"

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

/* Removes the parents of workers that died without removing theirs: a folder
 * whose `owner` file nobody holds locked (the lock goes with its holder's
 * life, whatever its pid namespace). One whose owner file is not there yet
 * (it appears already locked) or is not ours is left alone. */
static void remove_stale(void) {
    DIR *d = opendir(PARENT_DIR);
    if (!d) return;
    struct dirent *e;
    int removed = 0;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, PARENT_PREFIX, sizeof(PARENT_PREFIX) - 1) != 0) continue;
        char dir[512], owner[600];
        snprintf(dir, sizeof(dir), "%s/%s", PARENT_DIR, e->d_name);
        snprintf(owner, sizeof(owner), "%s/owner", dir);
        struct stat st;
        if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) continue;
        int fd = open(owner, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
            removed++;
        }
        close(fd);
    }
    closedir(d);
    if (removed)
        cel_info("removed %d private state folder(s) of workers that were killed", removed);
}

int cel_private_state_make(char *out, size_t size, cel_err_t *err) {
    remove_stale();
    if (snprintf(out, size, PARENT_DIR "/" PARENT_PREFIX "XXXXXX") >= (int)size)
        return cel_err_set(err, CEL_ELIMIT, "private state path too long");
    if (!mkdtemp(out)) {
        int e = errno;
        out[0] = '\0';
        return cel_err_set(err, CEL_EIO, "cannot make a private state folder: %s", strerror(e));
    }
    /* The owner file is locked under a temporary name, then renamed: under its
     * own name it is always locked while this process lives. The descriptor
     * stays open (not inherited by the executors) until the process ends. */
    char tmp[600], owner[600];
    snprintf(tmp, sizeof(tmp), "%s/owner.tmp", out);
    snprintf(owner, sizeof(owner), "%s/owner", out);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, owner) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        cel_private_state_remove(out);
        out[0] = '\0';
        return cel_err_set(err, CEL_EIO, "cannot lock a private state folder: %s", strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (write(fd, pid, (size_t)n) != n) { /* for people: the lock is what counts */
    }
    return CEL_OK;
}

void cel_private_state_drop(const char *parent, int pid) {
    char path[1200];
    if (!parent || !parent[0] || pid <= 0) return;
    snprintf(path, sizeof(path), "%s/executor-%d", parent, pid);
    if (access(path, F_OK) == 0) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void cel_private_state_remove(const char *parent) {
    if (parent && parent[0]) nftw(parent, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
