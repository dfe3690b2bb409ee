/* private_state.c -- make and remove the worker's private adapter-state folders (see the header). */
#include "private_state.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

int cel_private_state_make(char *out, size_t size, cel_err_t *err) {
    if (snprintf(out, size, "/tmp/celeriac-state-XXXXXX") >= (int)size)
        return cel_err_set(err, CEL_ELIMIT, "private state path too long");
    if (!mkdtemp(out)) {
        int e = errno;
        out[0] = '\0';
        return cel_err_set(err, CEL_EIO, "cannot make a private state folder: %s", strerror(e));
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
