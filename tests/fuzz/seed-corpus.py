#!/usr/bin/python3
"""seed-corpus.py -- starting inputs for every fuzz harness, from real traffic.

Usage: /usr/bin/python3 tests/fuzz/seed-corpus.py TESTDATA OUTDIR

Writes OUTDIR/<harness>/<name> for each tests/fuzz/fuzz_<harness>.c. TESTDATA is what
tests/unit/gen_messages.py wrote (kombu envelopes from the captures and from the real
Celery client); the pidbox requests come from the MONITOR captures in
../shared/celery-wire beside the repository (CEL_WIRE_DIR); frames are built with python3-msgpack in the
shapes of protocol/frame.h; the model files are the bundled tiny model's config and a
small tokenizer.json in the same format. Seeds are a starting point: tests/fuzz/corpus/
holds them minimised together with what fuzzing found (tests/fuzz/README.md), so this
script is only rerun to reseed.
"""
import base64
import glob
import json
import os
import struct
import sys

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIRE = os.environ.get('CEL_WIRE_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'celery-wire'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'unit'))
from gen_messages import TOKEN, unescape  # noqa: E402  (redis-cli's quoting, undone once)


def put(out, harness, name, data):
    d = os.path.join(out, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def envelopes(testdata):
    for path in sorted(glob.glob(os.path.join(testdata, 'messages', '*.json'))):
        with open(path, 'rb') as f:
            yield os.path.basename(path)[:-5], f.read()


def raw_body(env):
    body = env['body'].encode('utf-8')
    if env.get('properties', {}).get('body_encoding') == 'base64':
        body = base64.b64decode(body)
    return body


def seed_envelope(out, testdata):
    for name, data in envelopes(testdata):
        put(out, 'envelope', name, data)
    # issue 20: a lone surrogate escape at the very end of the buffer
    put(out, 'envelope', 'issue20-lone-surrogate', bytes.fromhex('225c75643830305c753030343122'))


def seed_body_and_msgpack(out, testdata):
    for name, data in envelopes(testdata):
        env = json.loads(data)
        body = raw_body(env)
        msgpack_ct = 'msgpack' in env.get('content-type', '')
        mode = (1 if msgpack_ct else 0) | (2 if env.get('headers', {}).get('task') else 0) | 8
        put(out, 'body', name, bytes([mode]) + body)
        if msgpack_ct:
            put(out, 'msgpack', name, body)
    # protocol 1 and hybrid bodies as msgpack too (the captures have them as JSON)
    v1 = {'task': 'tasks.add', 'id': 'v1-id', 'args': [2, 2], 'kwargs': {'k': 1.5},
          'retries': 0, 'eta': '2026-11-22T21:14:16.013988+00:00', 'expires': None,
          'utc': True, 'callbacks': None, 'errbacks': None, 'timelimit': [10, 5],
          'taskset': 'g-1', 'chord': None}
    put(out, 'body', 'proto1-msgpack', bytes([1 | 8]) + msgpack.packb(v1))
    put(out, 'body', 'hybrid-msgpack', bytes([1 | 2]) + msgpack.packb({'args': [1], 'kwargs': {}}))
    values = [None, True, -1, 2 ** 63 - 1, -2 ** 63, 1.5, 'str', b'bin', [1, [2, [3]]],
              {'a': {'b': [None, 1.0]}}, 'é' * 40, list(range(20))]
    for i, v in enumerate(values):
        put(out, 'msgpack', 'value-%02d' % i, msgpack.packb(v, use_bin_type=True))


def frame(obj):
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack('>I', len(payload)) + payload


def seed_frame(out):
    ready = frame({'op': 'ready', 'pid': 4242, 'device': 'cpu'})
    run = frame({'op': 'run', 'id': 'f1e2', 'task': 'tasks.add', 'args': [1, 2],
                 'kwargs': {}, 'soft_time_limit': 0.0, 'retries': 0})
    ok = frame({'op': 'result', 'id': 'f1e2', 'status': 'SUCCESS', 'result': 3,
                'runtime': 0.001})
    fail = frame({'op': 'result', 'id': 'f1e2', 'status': 'FAILURE', 'exc_type': 'ValueError',
                  'exc_module': 'builtins', 'exc_message': ['bad'], 'traceback': None,
                  'runtime': 0.5})
    prog = frame({'op': 'progress', 'id': 'f1e2', 'state': 'PROGRESS', 'meta': {'step': 1}})
    # first byte: 0x80 fed whole, 0x00..0x3f chunks of 1..64, 0x40 a 64-byte limit
    put(out, 'frame', 'executor-to-main-whole', b'\x80' + ready + ok + prog + fail)
    put(out, 'frame', 'executor-to-main-bytewise', b'\x00' + ready + prog + ok)
    put(out, 'frame', 'main-to-executor-chunk7', b'\x06' + run + run)
    put(out, 'frame', 'over-limit', b'\x40' + ready + run)
    put(out, 'frame', 'truncated', b'\x80' + ok[:-3])


def seed_pidbox(out):
    n = 0
    for path in sorted(glob.glob(os.path.join(WIRE, 'redis-monitor-*.txt'))):
        with open(path, encoding='utf-8') as f:
            for line in f:
                if '"PUBLISH"' not in line or 'pidbox' not in line:
                    continue
                toks = [unescape(t) for t in TOKEN.findall(line)]
                if len(toks) >= 3 and toks[0] == b'PUBLISH':
                    put(out, 'pidbox', 'capture-%02d' % n, toks[2])
                    n += 1

    def request(body, ctype='application/json', b64=True):
        raw = msgpack.packb(body) if 'msgpack' in ctype else json.dumps(body).encode()
        env = {'body': base64.b64encode(raw).decode() if b64 else raw.decode(),
               'content-encoding': 'binary' if 'msgpack' in ctype else 'utf-8',
               'content-type': ctype, 'headers': {'clock': 7, 'expires': 1795382179.9},
               'properties': {'delivery_mode': 2, 'delivery_info':
                              {'exchange': 'celery.pidbox', 'routing_key': ''},
                              'priority': 0, 'body_encoding': 'base64' if b64 else None,
                              'delivery_tag': 'a3f1'}}
        return json.dumps(env).encode()

    reply_to = {'exchange': 'reply.celery.pidbox', 'routing_key': '7d9ee61a'}
    put(out, 'pidbox', 'dest-list', request(
        {'method': 'rate_limit', 'arguments': {'task_name': 't', 'rate_limit': '10/m'},
         'destination': ['other@h', 'celeriac@fuzz'], 'ticket': 't1', 'reply_to': reply_to}))
    put(out, 'pidbox', 'pattern-glob', request(
        {'method': 'ping', 'arguments': {}, 'pattern': 'celeriac@*', 'matcher': 'glob',
         'ticket': 't2', 'reply_to': reply_to}))
    put(out, 'pidbox', 'pattern-pcre', request(
        {'method': 'stats', 'arguments': {}, 'pattern': 'cel(eriac|ery)@.*', 'matcher': 'pcre',
         'ticket': 't3', 'reply_to': reply_to}))
    put(out, 'pidbox', 'msgpack', request(
        {'method': 'revoke', 'arguments': {'task_id': ['a', 'b'], 'terminate': True,
                                            'signal': 'SIGKILL'}, 'ticket': 't4',
         'reply_to': reply_to}, ctype='application/x-msgpack'))
    put(out, 'pidbox', 'plain-body', request(
        {'method': 'shutdown', 'arguments': {}}, b64=False))


def small_tokenizer():
    """A byte-level BPE tokenizer.json in the bundled model's format, a few KB."""
    with open(os.path.join(ROOT, 'model', 'tiny', 'tokenizer.json'), encoding='utf-8') as f:
        doc = json.load(f)
    vocab = doc['model']['vocab']
    keep = {k: v for k, v in vocab.items() if v < 300}
    merges = []
    for m in doc['model']['merges']:
        a, b = m.split(' ') if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
    doc['model']['vocab'] = keep
    doc['model']['merges'] = merges[:40]
    doc['added_tokens'] = doc['added_tokens'][:3]
    return json.dumps(doc, ensure_ascii=False).encode('utf-8')


def seed_model(out):
    with open(os.path.join(ROOT, 'model', 'tiny', 'config.json'), 'rb') as f:
        put(out, 'safetensors', 'config-tiny', b'\x01' + f.read())
    # first byte even: a safetensors image (8-byte header length, JSON header, data)
    header = {'__metadata__': {'format': 'pt'},
              'a': {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [0, 16]},
              'b': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [16, 22]},
              'c': {'dtype': 'F16', 'shape': [1], 'data_offsets': [22, 24]}}
    h = json.dumps(header).encode()
    data = struct.pack('<4f', 1, 2, 3, 4) + b'\x80\x3f\x00\x40\x40\x40' + b'\x00\x3c'
    put(out, 'safetensors', 'three-tensors', b'\x00' + struct.pack('<Q', len(h)) + h + data)
    tok = small_tokenizer()
    put(out, 'tokenizer', 'load-small', b'\x00' + tok)
    put(out, 'tokenizer', 'encode-gpt2', b'\x01' + "Hello, world! It's 2024\n\n café".encode())
    put(out, 'tokenizer', 'encode-llama3',
        b'\x02' + "I'll say: 123456 <|endoftext|>  ÿ\r\n".encode())
    put(out, 'tokenizer', 'decode-ids', b'\x03' + struct.pack('<8i', 0, 1, 72, 101, 300, 5, 9, -1))


def seed_metrics_http(out):
    """What clients send to the worker's /metrics port (worker/metrics_http.c)."""
    put(out, 'metrics_http', 'prometheus-scrape',
        b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9808\r\nUser-Agent: Prometheus/2.42.0\r\n'
        b'Accept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n'
        b'X-Prometheus-Scrape-Timeout-Seconds: 1\r\n\r\n')
    put(out, 'metrics_http', 'head-lf', b'HEAD /?x=1 HTTP/1.0\n\n')
    put(out, 'metrics_http', 'post-body', b'POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc')
    put(out, 'metrics_http', 'http2', b'GET /metrics HTTP/2.0\r\n\r\n')
    put(out, 'metrics_http', 'lower', b'get /metrics HTTP/1.1\r\n\r\n')
    put(out, 'metrics_http', 'head-too-long', b'GET /metrics HTTP/1.1\r\nX: ' + b'v' * 8200 +
        b'\r\n\r\n')


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    testdata, out = sys.argv[1], sys.argv[2]
    seed_envelope(out, testdata)
    seed_body_and_msgpack(out, testdata)
    seed_frame(out)
    seed_pidbox(out)
    seed_model(out)
    seed_metrics_http(out)


if __name__ == '__main__':
    main()
