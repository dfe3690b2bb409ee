#!/usr/bin/python3
"""gen_messages.py -- test data for the protocol/ unit tests, from real captures
and from the real celery/kombu client.

Usage: /usr/bin/python3 tests/unit/gen_messages.py OUTDIR

Writes into OUTDIR:
  messages/<name>.json   kombu Redis envelopes, byte for byte as LPUSHed
  expect.json            {name: expected decode of that envelope}
  metas.json             result metas: inputs of cel_meta_encode + exact text
  dumps.json             [value-as-JSON, Python json.dumps(value)] pairs
  reprs.json             {value, as_tuple, repr} and exception reprs
  times.json             ISO-8601 strings -> unix seconds; seconds -> isoformat
  publish.json           kombu Producer.publish inputs -> the envelope kombu's Redis
                         transport LPUSHes (delivery tag fixed) and its priority key
  topic.json             bindings of a topic exchange and the queues kombu picks per key
Sources: /work/shared/celery-wire/redis-monitor-*.txt (LPUSH and SETEX lines)
and messages produced now by a Celery app on broker mem:// (kombu's virtual
transport, the same envelope code path as redis; serialized with
kombu.utils.json.dumps as kombu/transport/redis.py _put does).
"""
import base64
import datetime
import glob
import json
import math
import os
import re
import sys
import uuid

CAPTURES = os.environ.get('CEL_WIRE_DIR', '/work/shared/celery-wire')
TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unescape(s):
    """Undo redis-cli's sdscatrepr quoting; returns bytes."""
    out = bytearray()
    i = 0
    simple = {'n': 10, 'r': 13, 't': 9, 'a': 7, 'b': 8, '"': 34, '\\': 92}
    while i < len(s):
        c = s[i]
        if c == '\\' and i + 1 < len(s):
            n = s[i + 1]
            if n == 'x':
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            out.append(simple.get(n, ord(n)))
            i += 2
            continue
        out.extend(c.encode('utf-8'))
        i += 1
    return bytes(out)


def parse_iso(s):
    if s is None:
        return 0.0
    from celery.utils.iso8601 import parse_iso8601
    d = parse_iso8601(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def representable(v):
    """Whether jansson (int64, finite doubles) can hold v as Python decoded it."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return True
    if isinstance(v, int):
        return -2 ** 63 <= v < 2 ** 63
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(representable(x) for x in v)
    if isinstance(v, dict):
        return all(representable(x) for x in v.values())
    return False


def expectation(env_bytes):
    """What cel_task_decode_envelope must produce, computed with kombu/celery."""
    from kombu.serialization import loads
    env = json.loads(env_bytes)
    props = env.get('properties') or {}
    headers = env.get('headers') or {}
    body = env['body']
    if props.get('body_encoding') == 'base64':
        body = base64.b64decode(body)
    e = {'rc': 'OK'}
    try:
        payload = loads(body, env['content-type'], env['content-encoding'],
                        accept={'application/json', 'application/x-msgpack'})
    except Exception as exc:  # undecodable: C must say EBODY
        payload = None
        e['rc'] = 'EBODY'
        e['why'] = repr(exc)
    if payload is not None and not representable(payload):
        e['rc'] = 'EBODY'
        e['why'] = 'big integer or NaN/Infinity'
    if 'task' in headers:
        proto = 2
        h = headers
        if isinstance(payload, dict) and 'args' in payload:
            from celery.worker.strategy import hybrid_to_proto2
            class M:  # minimal message for hybrid_to_proto2
                pass
            m = M()
            m.headers = headers
            (args, kwargs, embed), h, _, _ = hybrid_to_proto2(m, payload)
        elif payload is not None:
            if not isinstance(payload, list) or len(payload) != 3:
                e['rc'] = 'EBODY'
                args = kwargs = embed = None
            else:
                args, kwargs, embed = payload
    else:
        proto = 1
        h = dict(payload)
        if 'taskset' in h:
            h['group'] = h['taskset']
        args, kwargs = payload.get('args', []), payload.get('kwargs', {})
        embed = {'callbacks': payload.get('callbacks'), 'errbacks': payload.get('errbacks'),
                 'chord': payload.get('chord'), 'chain': None}
        from celery.utils.saferepr import saferepr
        h['argsrepr'] = saferepr(args)
        h['kwargsrepr'] = saferepr(kwargs)
    di = props.get('delivery_info') or {}
    tl = h.get('timelimit') or [None, None]
    e.update({
        'proto': proto, 'id': h.get('id'), 'name': h.get('task'),
        'root_id': h.get('root_id'), 'parent_id': h.get('parent_id'),
        'group': h.get('group'), 'shadow': h.get('shadow'), 'origin': h.get('origin'),
        'argsrepr': h.get('argsrepr'), 'kwargsrepr': h.get('kwargsrepr'),
        'eta_str': h.get('eta'), 'expires_str': h.get('expires'),
        'eta': parse_iso(h.get('eta')), 'expires': parse_iso(h.get('expires')),
        'retries': h.get('retries') or 0,
        'time_limit': tl[0] or 0, 'soft_time_limit': tl[1] or 0,
        'ignore_result': bool(h.get('ignore_result')),
        'group_index': -1 if h.get('group_index') is None else h['group_index'],
        'content_type': env.get('content-type'), 'content_encoding': env.get('content-encoding'),
        'correlation_id': props.get('correlation_id'), 'reply_to': props.get('reply_to'),
        'priority': max(0, min(9, props.get('priority') or 0)),
        'redelivered': bool(headers.get('redelivered') or di.get('redelivered')),
        'delivery_tag': props.get('delivery_tag'),
        'exchange': di.get('exchange'), 'routing_key': di.get('routing_key'),
    })
    if e['rc'] == 'OK':
        e.update({'args': list(args), 'kwargs': kwargs, 'embed': embed})
    return e


def from_captures(msgs):
    for path in sorted(glob.glob(os.path.join(CAPTURES, 'redis-monitor-*.txt'))):
        base = os.path.basename(path)[len('redis-monitor-'):-4]
        n = 0
        for line in open(path, encoding='utf-8'):
            if '"LPUSH"' not in line:
                continue
            toks = TOKEN.findall(line)
            if len(toks) < 3 or toks[0] != 'LPUSH':
                continue
            env = unescape(toks[2])
            try:
                if 'task' not in json.loads(env).get('headers', {}):
                    continue  # pidbox replies and the like
            except ValueError:
                continue
            n += 1
            msgs['capture-%s-%02d' % (base, n)] = env


def metas_from_captures():
    out = []
    for path in sorted(glob.glob(os.path.join(CAPTURES, 'redis-monitor-*.txt'))):
        for line in open(path, encoding='utf-8'):
            if '"SETEX"' not in line:
                continue
            toks = TOKEN.findall(line)
            if len(toks) < 4 or not toks[1].startswith('celery-task-meta-'):
                continue
            raw = unescape(toks[3])
            if not raw.startswith(b'{'):
                continue  # msgpack result of the serializer-mismatch capture
            text = raw.decode('utf-8')
            m = json.loads(text)
            if 'name' in m or 'pid' in str(m.get('result')):
                continue  # result_extended / STARTED carry fields we do not write
            out.append(meta_case(m, text))
    return out


def meta_case(m, text):
    dd = m['date_done']
    when = -1.0
    if dd is not None:
        when = datetime.datetime.fromisoformat(dd).replace(
            tzinfo=datetime.timezone.utc).timestamp()
    return {'task_id': m['task_id'], 'status': m['status'], 'result': m['result'],
            'traceback': m['traceback'], 'children': m['children'], 'date_done': when,
            'group_id': m.get('group_id'), 'parent_id': m.get('parent_id'), 'expected': text}


def fresh_metas():
    """Metas built the way celery's backend builds them, for odd values."""
    out = []
    results = [5, 0.1, 1e100, 1.0, -0.0, 1e16, 1e-5, 123456789.123, 2 ** 63 - 1, -2 ** 63,
               'h\u00e9llo \u65e5\u672c \U0001f600 "q" \\ \n\t\x00\x7f', None, True, [],
               {'nested': [{'a': [1, 2.5, None]}], 'k\u00e9y': {}},
               {'exc_type': 'ValueError', 'exc_message': ['boom: bad value'],
                'exc_module': 'builtins'}]
    times = [1795382020.668855, 1795382020.0, 1795382020.5, 0.0, 1795382020.000001,
             1795382020.9999996, 951782400.25]
    for i, r in enumerate(results):
        t = times[i % len(times)]
        meta = {'status': 'SUCCESS' if i % 3 else 'FAILURE', 'result': r,
                'traceback': None if i % 2 else 'Traceback (most recent call last):\n  x\n',
                'children': [] if i % 4 else [[['c%d' % i, None], None]],
                'date_done': datetime.datetime.utcfromtimestamp(t).isoformat()}
        if i % 5 == 1:
            meta['group_id'] = 'g-%d' % i
        if i % 3 == 2:
            meta['parent_id'] = 'p-%d' % i
        meta['task_id'] = str(uuid.UUID(int=i))
        c = meta_case(meta, json.dumps(meta))
        c['date_done'] = t
        out.append(c)
    retry = {'status': 'RETRY', 'result': {'exc_type': 'KeyError', 'exc_message': ['again'],
                                           'exc_module': 'builtins'},
             'traceback': 'celery.exceptions.Retry: Retry in 1s\n', 'children': [[['x', None], None]],
             'date_done': None, 'parent_id': 'x', 'task_id': 'x'}
    out.append(meta_case(retry, json.dumps(retry)))
    return out


def dumps_cases():
    vals = [0.1, 0.2 + 0.1, 1e100, 1e+16, 1e15, 1e-5, 1e-4, 1.0, -0.0, 5e-324, 1.7976931348623157e308,
            2.5, 100.0, 123456789012345678.0, 0.000123, 1e22, 1.5e-7, -3.75, 2 ** 63 - 1, -2 ** 63,
            '', 'ascii', '\u00e9\u00e8', '\U0001f600\U00010000\U0010ffff', '\x00\x01\x1f\x7f\x80',
            '"\\/\b\f\n\r\t', '\u2028\ufeff',
            [], {}, [1, [2, [3, {}]]], {'a': 1, 'b': [True, False, None], '\u00e9': {'x': 'y'}},
            {'z': 1, 'a': 2, 'm': 3}]
    return [[json.dumps(v), json.dumps(v)] for v in vals]


def repr_cases():
    vals = [(None, 0), (True, 0), (False, 0), (42, 0), (-7, 0), (0.1, 0), (1e100, 0), (1.0, 0),
            ('plain', 0), ("it's", 0), ('say "hi"', 0), ('both \' and "', 0),
            ('back\\slash', 0), ('tab\tnl\ncr\r', 0), ('\x00\x07\x1f\x7f', 0),
            ('\u00e9\u65e5\U0001f600', 0), ('\x80\xa0\xad\u2028\ufeff', 0),
            ([], 0), ([1, 'a', None], 0), ({}, 0), ({'k': [1, 2]}, 0),
            ([], 1), ([1], 1), ([2, 3], 1), (['a', [1, 2], {'x': None}], 1),
            ({'k\u00e9': 'v', 'n': {'m': [True]}}, 0)]
    out = []
    for v, t in vals:
        out.append({'value': json.dumps(v), 'as_tuple': t, 'repr': repr(tuple(v) if t else v)})
    excs = [(ValueError('boom: bad value'), 'builtins'), (KeyError('again'), 'builtins'),
            (Exception(), 'builtins'), (TypeError('a', 2), 'builtins')]
    from billiard.exceptions import TimeLimitExceeded, SoftTimeLimitExceeded
    excs += [(TimeLimitExceeded(1.0), 'billiard.exceptions'),
             (SoftTimeLimitExceeded(), 'billiard.exceptions')]
    # NotRegistered has its own __repr__; the 5.2 worker's task-failed event
    # still showed "NotRegistered('tasks.nope')" (celery-wire.md 4.2), which is
    # what cel_exc_repr gives, so it is checked in test_meta.c, not here.
    exc_out = [{'exc': {'exc_type': type(e).__name__, 'exc_message': list(e.args),
                        'exc_module': m}, 'repr': repr(e)} for e, m in excs]
    return {'values': out, 'exceptions': exc_out}


def time_cases():
    parse = ['2026-11-22T21:14:16.013988+00:00', '2026-11-22T21:14:16Z', '2026-11-22T21:14:16',
             '2026-11-22T21:14:16.500000+02:00', '2026-11-22T21:14:16-05:30', '1970-01-01T00:00:00',
             '2000-02-29T23:59:59.999999+00:00', '2026-11-22 21:14:16.100000']
    bad = ['2026-11-22', 'garbage', '', '2026-13-01T00:00:00', '2026-02-30T00:00:00',
           '2026-11-22T25:00:00', '2026-11-22T21:14:16+00:00junk', '2026-11-22T21:14:16.']
    fmt = [1795382020.668855, 1795382020.0, 0.0, 1795382020.9999996, 1795382020.0000004,
           951782400.25, 1.5, 4102444799.999999, 1795382056.048165]
    return {'parse': [[s, parse_iso(s)] for s in parse], 'bad': bad,
            'format': [[t, datetime.datetime.utcfromtimestamp(t).isoformat()] for t in fmt]}


def fresh_messages(msgs):
    """Messages sent now by the real client through kombu's virtual transport."""
    from celery import Celery, chain, group, signature
    from kombu.transport import memory
    from kombu.utils.json import dumps
    app = Celery('gen', broker='memory://', backend='cache+memory://')
    app.conf.task_serializer = 'json'

    @app.task(name='tasks.add')
    def add(x, y):
        return x + y

    def take(name):
        q = memory.Channel.queues.get('celery')
        items = []
        while q is not None and not q.empty():
            items.append(q.get_nowait())
        assert items, name
        for i, m in enumerate(items):
            key = name if len(items) == 1 else '%s-%d' % (name, i)
            msgs[key] = dumps(m).encode('utf-8')

    now = datetime.datetime.now(datetime.timezone.utc)
    app.send_task('tasks.add', (2, 3))
    take('fresh-basic')
    app.send_task('tasks.add', (2, 3), {'k': [1.5, None]}, serializer='msgpack')
    take('fresh-msgpack')
    app.send_task('tasks.add', (1, 1), countdown=30)
    take('fresh-countdown')
    app.send_task('tasks.add', (1, 2), eta=now + datetime.timedelta(seconds=90), expires=120)
    take('fresh-eta-expires')
    app.send_task('tasks.add', (1, 3), expires=now + datetime.timedelta(minutes=5))
    take('fresh-expires-datetime')
    app.send_task('tasks.add', (1, 4), time_limit=10, soft_time_limit=5.5)
    take('fresh-timelimits')
    app.send_task('tasks.add', (1, 5), priority=5)
    take('fresh-priority5')
    app.send_task('tasks.add', (1, 6), priority=9, serializer='msgpack')
    take('fresh-priority9-msgpack')
    uni = ['h\u00e9llo', '\u65e5\u672c\u8a9e', '\U0001f600', 'nul\x00byte', 'q"\'\\', '\u2028']
    app.send_task('tasks.echo', uni, {'\u043a\u043b\u044e\u0447': [1, 2.5, None, True, {'x': []}]})
    take('fresh-unicode')
    app.send_task('tasks.echo', uni, {'k\u00e9': 'v\x00'}, serializer='msgpack')
    take('fresh-unicode-msgpack')
    app.send_task('tasks.add', (2, 2), link=add.s(10), link_error=signature('tasks.on_err'))
    take('fresh-link')
    chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    take('fresh-chain')
    group(add.s(i, i) for i in range(2)).apply_async()
    take('fresh-group')
    app.send_task('tasks.add', (1, 7), shadow='shadowname', ignore_result=True)
    take('fresh-shadow-ignore')
    app.send_task('tasks.add', (0.1, 1e100, -0.0, 2 ** 63 - 1), {'f': 1.0})
    take('fresh-floats')
    app.send_task('tasks.add', (2 ** 70, 1))
    take('fresh-bigint')
    app.send_task('tasks.add', (float('nan'), 1))
    take('fresh-nan')
    app.send_task('tasks.add', (float('inf'),), {})
    take('fresh-inf')


def hand_messages(msgs):
    """Protocol 1 and hybrid messages, per celery-wire.md 1.4 (no 5.2 client sends them)."""
    from kombu.utils.json import dumps

    def env(body_obj, headers, ct='application/json', raw=None):
        body = raw if raw is not None else json.dumps(body_obj).encode('utf-8')
        return dumps({'body': base64.b64encode(body).decode('ascii'),
                      'content-encoding': 'utf-8', 'content-type': ct, 'headers': headers,
                      'properties': {'correlation_id': 'v1-id', 'reply_to': 'r',
                                     'delivery_mode': 2,
                                     'delivery_info': {'exchange': '', 'routing_key': 'celery'},
                                     'priority': 0, 'body_encoding': 'base64',
                                     'delivery_tag': 'tag-v1'}}).encode('utf-8')
    v1 = {'task': 'tasks.add', 'id': 'v1-id', 'args': [4, 5], 'kwargs': {'z': 1},
          'eta': '2026-11-22T21:14:16.013988+00:00', 'expires': None, 'retries': 2,
          'taskset': 'ts-1', 'callbacks': [{'task': 'tasks.cb', 'args': [], 'kwargs': {},
                                            'options': {}, 'subtask_type': None,
                                            'immutable': False}],
          'errbacks': None, 'chord': None, 'utc': True, 'timelimit': [30, 20]}
    msgs['hand-proto1'] = env(v1, {})
    v1min = {'task': 'tasks.add', 'id': 'v1-min'}
    msgs['hand-proto1-minimal'] = env(v1min, {})
    hybrid_body = {'args': [1], 'kwargs': {}, 'id': 'from-body', 'retries': 3}
    msgs['hand-hybrid'] = env(hybrid_body, {'task': 'tasks.add', 'id': 'hyb-id',
                                            'timelimit': [None, 7]})


def publish_cases():
    """What kombu's Producer.publish makes of given inputs, on the virtual transport
    (memory://, the code path kombu/transport/redis.py shares), with the delivery tag fixed;
    the priority key is kombu.transport.redis.Channel._q_for_pri's."""
    from kombu import Connection, Exchange, Queue, Producer
    from kombu.transport import memory, redis as kredis, virtual
    from kombu.transport.virtual import base as vbase
    from kombu.utils.json import dumps

    class Pri:
        priority_steps = kredis.PRIORITY_STEPS
        sep = kredis.Channel.sep
        min_priority, max_priority, default_priority = 0, 9, 0
        priority = kredis.Channel.priority

    def queue_key(queue, message):
        pri = virtual.Channel._get_message_priority(Pri(), message)
        return kredis.Channel._q_for_pri(Pri(), queue, pri)

    saved_uuid = vbase.uuid
    cases = []
    with Connection('memory://') as conn:
        ch = conn.channel()
        # a direct exchange with one binding, so a named exchange delivers too
        Queue('pq-bound', Exchange('px', type='direct'), routing_key='pk')(ch).declare()
        inputs = [
            dict(body='[[2, 3], {}, {"callbacks": null}]', exchange='', routing_key='celery',
                 content_type='application/json', content_encoding='utf-8',
                 headers={'lang': 'py', 'task': 'tasks.add', 'id': 'id-1', 'eta': None},
                 correlation_id='id-1', reply_to='oid-1', priority=None, delivery_mode=2),
            dict(body='{}', exchange='', routing_key='q\u00e9', content_type='application/json',
                 content_encoding='utf-8', headers={'k': ['\u65e5', 1.5, True, {}]},
                 correlation_id=None, reply_to=None, priority=5, delivery_mode=1),
            dict(body='x', exchange='', routing_key='celery', content_type='application/json',
                 content_encoding='utf-8', headers={}, correlation_id='c', reply_to='r',
                 priority=9, delivery_mode=2, expiration=60.0),
            dict(body='\x00\xff\x80', exchange='', routing_key='celery',
                 content_type='application/x-msgpack', content_encoding='binary', headers=None,
                 correlation_id='c2', reply_to='r2', priority=7, delivery_mode=2,
                 extra={'replaced_task_nesting': 0, 'origin': 'gen1@vm'}),
            dict(body='', exchange='px', routing_key='pk', content_type='application/json',
                 content_encoding='utf-8', headers={'a': None}, correlation_id='c3',
                 reply_to='', priority=2, delivery_mode=2, expiration=0),
            dict(body='"\u2028"', exchange='', routing_key='celery', content_type=None,
                 content_encoding=None, headers={'n': 2 ** 63 - 1}, correlation_id='c4',
                 reply_to='r4', priority=3, delivery_mode=1),
        ]
        for i, inp in enumerate(inputs):
            tag = '00000000-0000-4000-8000-%012d' % i
            vbase.uuid = lambda tag=tag: tag
            body = inp['body'].encode('latin-1' if inp['content_encoding'] == 'binary' else 'utf-8')
            kw = dict(inp.get('extra') or {})
            if inp['correlation_id'] is not None:
                kw['correlation_id'] = inp['correlation_id']
            if inp['reply_to'] is not None:
                kw['reply_to'] = inp['reply_to']
            # kombu keeps the properties in the order given: correlation_id, reply_to, extra
            props = {}
            for k in ('correlation_id', 'reply_to'):
                if k in kw:
                    props[k] = kw.pop(k)
            props.update(kw)
            Producer(ch).publish(
                body, exchange=inp['exchange'], routing_key=inp['routing_key'],
                content_type=inp['content_type'] or 'application/data',
                content_encoding=inp['content_encoding'] or 'binary',
                headers=inp['headers'], priority=inp['priority'] or 0,
                delivery_mode=inp['delivery_mode'], expiration=inp.get('expiration'), **props)
            if inp['content_type'] is None:
                pass
            qname = inp['routing_key'] if not inp['exchange'] else 'pq-bound'
            q = memory.Channel.queues[qname]
            message = q.get_nowait()
            if inp['content_type'] is None:
                # Producer.publish always has a type; None is written as null when a
                # transport-level caller leaves them out (prepare_message as is)
                message['content-type'] = None
                message['content-encoding'] = None
            text = dumps(message)
            case = dict(inp)
            case['body_b64'] = base64.b64encode(body).decode('ascii')
            del case['body']
            case['delivery_tag'] = tag
            case['expiration_str'] = message['properties'].get('expiration')
            case['expected'] = text
            case['queue_key'] = queue_key(qname, message)
            case['queue'] = qname
            cases.append(case)
    vbase.uuid = saved_uuid
    return cases


def topic_cases():
    """Which bound queues kombu's topic exchange picks for a routing key."""
    from kombu.transport.virtual.exchange import TopicExchange
    topic = TopicExchange(None)
    keys = ['a.*', 'a.#', '#', '*.b', 'a.b', 'x.*.z', 'a+b.(c)', 'w%.$']
    table = [(k, topic.key_to_pattern(k), 'q:' + k) for k in keys]
    rks = ['a.b', 'a.b.c', 'a', 'a.', 'c.b', 'x.y.z', 'x.y.y.z', 'a+b.(c)', 'w%.$', '', 'ab']
    return {'bindings': [[k, p, q] for k, p, q in table],
            'cases': [[rk, sorted(topic.lookup(table, 'ex', rk, None))] for rk in rks]}


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: gen_messages.py OUTDIR')
    out = sys.argv[1]
    os.makedirs(os.path.join(out, 'messages'), exist_ok=True)
    msgs = {}
    from_captures(msgs)
    fresh_messages(msgs)
    hand_messages(msgs)
    expect = {}
    for name, env in sorted(msgs.items()):
        with open(os.path.join(out, 'messages', name + '.json'), 'wb') as f:
            f.write(env)
        expect[name] = expectation(env)
    files = {'expect.json': expect,
             'metas.json': metas_from_captures() + fresh_metas(),
             'dumps.json': dumps_cases(), 'reprs.json': repr_cases(), 'times.json': time_cases(),
             'publish.json': publish_cases(), 'topic.json': topic_cases()}
    for fn, data in files.items():
        with open(os.path.join(out, fn), 'w') as f:
            json.dump(data, f, indent=1, allow_nan=False)
    print('gen_messages: %d messages, %d metas into %s' % (len(msgs), len(files['metas.json']), out))


if __name__ == '__main__':
    main()
