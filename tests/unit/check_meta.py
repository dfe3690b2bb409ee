#!/usr/bin/python3
"""check_meta.py -- does the stock Celery client read celeriac's result metas?

Usage: /usr/bin/python3 tests/unit/check_meta.py   (from the repository root)

Builds a tiny C helper against protocol/ (cc, jansson, msgpack-c), has it print
metas made by cel_meta_encode (SUCCESS, FAILURE ValueError, NotRegistered,
TimeLimitExceeded, REVOKED, RETRY), and feeds each to celery's own backend
decode (Backend.decode_result = meta_from_decoded(decode(...)), which calls
exception_to_python). Exits non-zero on the first mismatch.
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HELPER = r'''
#include <stdio.h>
#include <stdlib.h>
#include "protocol.h"
static void out(const char *id, const char *st, json_t *res, const char *tb, double when) {
    cel_err_t err;
    char *s = cel_meta_encode(id, st, res, tb, NULL, when, NULL, NULL, &err);
    if (!s) { fprintf(stderr, "%s\n", err.msg); exit(1); }
    puts(s);
    free(s);
    json_decref(res);
}
int main(void) {
    out("t1", "SUCCESS", json_pack("{s:[f, s, n]}", "x", 0.1, "h\xc3\xa9\xf0\x9f\x98\x80"), NULL,
        1795382020.668855);
    out("t2", "FAILURE", cel_exc_new("ValueError", "builtins", json_pack("[s]", "boom: bad value")),
        "Traceback (most recent call last):\nValueError: boom: bad value\n", 1795382030.261459);
    out("t3", "FAILURE", cel_exc_new("NotRegistered", "celery.exceptions",
        json_pack("[s]", "tasks.nope")), NULL, 1795382030.0);
    out("t4", "FAILURE", cel_exc_new("TimeLimitExceeded", "billiard.exceptions",
        json_pack("[f]", 1.0)), NULL, 1795382030.5);
    out("t5", "REVOKED", cel_exc_new("TaskRevokedError", "celery.exceptions",
        json_pack("[s]", "expired")), NULL, 1795382031.25);
    out("t6", "RETRY", cel_exc_new("KeyError", "builtins", json_pack("[s]", "again")), "tb", -1);
    return 0;
}
'''


def build_helper(tmp):
    src = os.path.join(tmp, 'meta_helper.c')
    exe = os.path.join(tmp, 'meta_helper')
    with open(src, 'w') as f:
        f.write(HELPER)
    # protocol/compress.c links the compression libraries (libbz2 has no .pc file)
    flags = subprocess.run(['pkg-config', '--cflags', '--libs', 'jansson', 'msgpack', 'zlib',
                            'liblzma', 'libzstd', 'libbrotlienc', 'libbrotlidec'],
                           capture_output=True, text=True, check=True).stdout.split() + ['-lbz2']
    protocol = os.path.join(ROOT, 'protocol')
    sources = [os.path.join(d, f) for d in (protocol, os.path.join(ROOT, 'common'))
               for f in sorted(os.listdir(d)) if f.endswith('.c')]
    subprocess.run(['cc', '-std=c11', '-D_GNU_SOURCE', '-I', protocol, src] + sources +
                   ['-o', exe] + flags + ['-lm'], check=True)
    return exe


def main():
    from celery import Celery
    from celery.exceptions import NotRegistered, TaskRevokedError
    from billiard.exceptions import TimeLimitExceeded
    with tempfile.TemporaryDirectory() as tmp:
        lines = subprocess.run([build_helper(tmp)], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    backend = Celery('check', backend='cache+memory://').backend
    metas = [backend.decode_result(line) for line in lines]
    ok = True

    def check(cond, what):
        nonlocal ok
        print('%-4s %s' % ('ok' if cond else 'FAIL', what))
        ok = ok and cond

    m = metas[0]
    check(m['status'] == 'SUCCESS' and m['result'] == {'x': [0.1, 'h\u00e9\U0001f600', None]},
          'SUCCESS result round-trips')
    check(m['date_done'] == '2026-11-22T21:13:40.668855', 'date_done as Celery 5.2 writes it')
    r = metas[1]['result']
    check(type(r) is ValueError and r.args == ('boom: bad value',), 'FAILURE -> ValueError: %r' % r)
    check(metas[1]['traceback'].endswith('ValueError: boom: bad value\n'), 'traceback kept')
    r = metas[2]['result']
    check(isinstance(r, NotRegistered) and r.args == ('tasks.nope',), 'NotRegistered: %r' % (r,))
    r = metas[3]['result']
    check(isinstance(r, TimeLimitExceeded) and r.args == (1.0,), 'TimeLimitExceeded: %r' % (r,))
    r = metas[4]['result']
    check(isinstance(r, TaskRevokedError) and r.args == ('expired',), 'REVOKED: %r' % (r,))
    r = metas[5]['result']
    check(type(r) is KeyError and metas[5]['date_done'] is None, 'RETRY KeyError, no date_done')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
