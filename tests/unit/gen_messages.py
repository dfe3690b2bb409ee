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
  saferepr.json          celery's saferepr of values at various maxlen
  plans.json             worker canvas steps (trace.py callbacks/chain, mark_as_failure,
                         on_chord_part_return's callback or ChordError) on client-made
                         messages -> every publish, chord size, store and chord part, in order
  apply.json             Signature.apply_async inputs (as the 5.2 worker calls it for a task
                         it has not registered) -> the envelope published, with now, ids,
                         origin, reply_to and delivery tags fixed
Sources: ../shared/celery-wire/redis-monitor-*.txt (LPUSH and SETEX lines)
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

# ../shared/celery-wire beside the repository (as CI lays it out), or CEL_WIRE_DIR.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURES = os.environ.get('CEL_WIRE_DIR',
                          os.path.join(os.path.dirname(REPO), 'shared', 'celery-wire'))
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


def saferepr_cases():
    from celery.utils.saferepr import saferepr
    vals = [(2, 3), (), (1,), [], {}, [1, 'a', None, True, 2.5], {'k': [1, 2], 'x\u00e9': 'v'},
            ('it\'s', 'a\nb', '\u65e5\U0001f600', '"q"', '\\'), ([[[[1]]]],), {'a': {'b': {'c': {}}}},
            [[[[[]]]]], ('word ' * 60,), (list(range(300)),), ({'key %d' % i: i for i in range(80)},),
            ('x' * 2000,), ('x' * 1023,), ('x' * 1022,), (1e100, -0.0, 0.1, 2 ** 63 - 1),
            ({'k': 'v' * 1100},), ([1, 2, [3, [4, [5, [6]]]]],), ('abc', 'def'), ([], {}, [])]
    out = []
    for v in vals:
        for maxlen in (1024, 10, 5, 3, 1):
            j = json.loads(json.dumps(v))
            out.append({'value': j, 'as_tuple': isinstance(v, tuple), 'maxlen': maxlen,
                        'repr': saferepr(v, maxlen)})
    return out


def apply_cases():
    """What Signature.apply_async(args, kwargs, **options) publishes, for signatures the
    worker finds in a message (celery/app/trace.py sends callbacks and chains this way),
    with every id, the time and the node name fixed. Task names no app here registers
    (w.*), so apply_async goes through app.send_task as in a worker without the task."""
    import celery.app.amqp as camqp
    import celery.app.base as cbase
    from celery import Celery, signature
    from kombu.transport import memory
    from kombu.transport.virtual import base as vbase
    from kombu.utils.json import dumps

    NOW = datetime.datetime(2026, 11, 22, 21, 14, 17, 167806, tzinfo=datetime.timezone.utc)
    OID, ORIGIN = '0b9655b9-eff6-3a95-8399-2e591bbf6907', 'gen7776@vm'
    app = Celery('gen-apply', broker='memory://', backend='cache+memory://', set_as_current=False)
    app.conf.task_serializer = 'json'
    app.now = lambda: NOW
    saved = (cbase.uuid, camqp.anon_nodename, cbase.Celery.thread_oid, vbase.uuid)
    counter = [0]

    def new_id():
        counter[0] += 1
        return '00000000-0000-4000-8000-%012d' % counter[0]
    cbase.uuid = new_id
    camqp.anon_nodename = lambda *a: ORIGIN
    cbase.Celery.thread_oid = property(lambda self: OID)
    vbase.uuid = lambda: 'tag-fixed'
    # queues bound to the named exchanges below, so that memory:// delivers those too
    from kombu import Connection, Exchange, Queue
    with Connection('memory://') as conn:
        ch = conn.channel()
        Queue('bound-ex', Exchange('ex', type='direct'), routing_key='rk')(ch).declare()
        Queue('bound-tx', Exchange('tx', type='topic'), routing_key='a.*')(ch).declare()

    def sig(task, args=(), kwargs=None, options=None, immutable=False):
        return {'task': task, 'args': list(args), 'kwargs': kwargs or {},
                'options': options or {}, 'subtask_type': None, 'immutable': immutable}

    add10 = sig('w.add', [10])
    chain_rest = [sig('w.add', [4], options={'task_id': 'c-4', 'reply_to': 'r-client'}),
                  sig('w.add', [3], options={'task_id': 'c-3', 'reply_to': 'r-client'})]
    cases = [
        # link: the callback of a task that returned 4 (celery-wire.md 5)
        (add10, [4], None, {'parent_id': 'p-1', 'root_id': 'p-1'}, False),
        # the chain's next link, the rest carried on
        (chain_rest[1], [3], None, {'chain': chain_rest[:1], 'parent_id': 'p-2', 'root_id': 'r-2'},
         False),
        (chain_rest[0], [6], None, {'chain': [], 'parent_id': 'c-3', 'root_id': 'r-2'}, False),
        # immutable: own args only (a list for argsrepr), kwargs not merged
        (sig('w.echo', ['errback'], {'k': 1}, immutable=True), ['x'], {'z': 2},
         {'parent_id': 'p-3'}, False),
        # a cloned signature (group member): a tuple, even immutable
        (sig('w.echo', ['e'], immutable=True), ['x'], None, {'group_id': 'g-1',
                                                                  'parent_id': 'p-4'}, True),
        # kwargs merged, routing to a queue, priority, countdown, numeric expires
        (sig('w.echo', [1], {'a': 1}, {'queue': 'other', 'priority': 7, 'countdown': 30,
                                            'expires': 60}), [0], {'b': 2}, {'root_id': 'r'},
         False),
        # exchange + routing key; time limits; shadow; ignore_result; headers
        (sig('w.add', [1, 2], options={'exchange': 'ex', 'routing_key': 'rk', 'time_limit': 10,
                                            'soft_time_limit': 5.5, 'shadow': 'sh',
                                            'ignore_result': True, 'headers': {'x-h': [1]}}),
         None, None, None, False),
        # routing key alone is not enough for direct routing; eta given as text
        (sig('w.add', [1], options={'routing_key': 'rk-only',
                                         'eta': '2026-11-22T21:15:00+00:00'}), [2], None, None,
         False),
        # a topic exchange named with its type
        (sig('w.add', [], options={'exchange': 'tx', 'exchange_type': 'topic',
                                        'routing_key': 'a.b'}), [1, 2], None, None, False),
        # a group member's options: group id kept, group_index, chord body, link/link_error
        (sig('w.add', [1], options={'task_id': 't-9', 'group_id': 'g-own', 'group_index': 2,
                                         'chord': add10, 'link': add10,
                                         'link_error': [sig('w.err')]}),
         [1], None, {'group_id': 'g-other', 'parent_id': 'p', 'root_id': 'r'}, False),
        # options no parameter takes leak into the properties; msgpack; transient
        (sig('w.add', [1], options={'argsrepr': '(custom)', 'stamp': 'x', 'serializer':
                                         'msgpack', 'delivery_mode': 1}), [5], None, None, False),
        # expires in the past: expiration "0"; retries and reply_to given
        (sig('w.add', [], options={'expires': -5, 'retries': 3, 'reply_to': 'rr'}), None,
         None, None, False),
        # unicode, floats, long args (saferepr cuts argsrepr at 1024)
        (sig('w.echo', ['\u65e5\u672c', 'it\'s'], {'f': 0.1}), [['x' * 700, 'y' * 700]],
         None, None, False),
    ]
    out = []
    for s_, args, kwargs, options, cloned in cases:
        before = counter[0]
        sg = signature(json.loads(json.dumps(s_)), app=app)
        if cloned:
            sg = sg.clone()
        sg.apply_async(args, kwargs, **(options or {}))
        msgs = []
        for qname, q in list(memory.Channel.queues.items()):
            while not q.empty():
                m = q.get_nowait()
                msgs.append((qname, m))
        assert len(msgs) <= 1, msgs
        case = {'sig': s_, 'args': args, 'kwargs': kwargs, 'options': options,
                'args_tuple': cloned, 'now': NOW.timestamp(), 'origin': ORIGIN, 'reply_to': OID,
                'ids_used': counter[0] - before, 'first_id': before + 1}
        if msgs:
            qname, m = msgs[0]
            case['queue'] = qname
            case['expected'] = dumps(m)
        else:
            case['queue'] = None  # e.g. an exchange nothing is bound to
            case['expected'] = None
        out.append(case)
    cbase.uuid, camqp.anon_nodename, cbase.Celery.thread_oid, vbase.uuid = saved
    return out


def plan_cases():
    """What the 5.2 worker sends, stores and counts for a finished task, recorded in order
    with celery's own code paths (the trace.py callback/chain block, mark_as_failure,
    on_chord_part_return's tail and chord_error_from_stack) on messages the client made.
    Fresh ids come from a counter (the C test renames them in order of appearance)."""
    import celery.app.amqp as camqp
    import celery.app.base as cbase
    import celery.canvas as ccanvas
    from celery import Celery, chain, chord, group, signature, maybe_signature, states
    from celery._state import _task_stack
    from celery.app.task import Context
    from celery.exceptions import ChordError
    from kombu.transport import memory
    from kombu.transport.virtual import base as vbase
    from kombu.utils.json import dumps

    NOW = datetime.datetime(2026, 11, 22, 21, 14, 17, 167806, tzinfo=datetime.timezone.utc)
    OID, ORIGIN = '0b9655b9-eff6-3a95-8399-2e591bbf6907', 'gen7776@vm'
    app = Celery('gen-plan', broker='memory://', backend='cache+memory://', set_as_current=False)
    app.conf.task_serializer = 'json'
    app.now = lambda: NOW

    @app.task(name='w.current', shared=False)
    def current():
        return None

    counter = [0]

    def new_id():
        counter[0] += 1
        return '00000000-0000-4000-8000-%012d' % counter[0]
    saved = (cbase.uuid, ccanvas.uuid, camqp.anon_nodename, cbase.Celery.thread_oid, vbase.uuid,
             memory.Channel._put)
    cbase.uuid = ccanvas.uuid = new_id
    camqp.anon_nodename = lambda *a: ORIGIN
    cbase.Celery.thread_oid = property(lambda self: OID)
    vbase.uuid = lambda: 'tag-fixed'
    acts = []

    def put(self, queue, message, **kw):
        acts.append(['PUBLISH', dumps(message)])
    memory.Channel._put = put
    be = app.backend

    def set_chord_size(gid, size):
        acts.append(['CHORD_SIZE', gid, size])

    def store_result(task_id, result, state, traceback=None, request=None, **kw):
        acts.append(['STORE', task_id, state, be.encode_result(result, state),
                     getattr(request, 'group', None) or None,
                     getattr(request, 'parent_id', None) or None])

    def on_chord_part_return(request, state, result, **kw):
        gi = request.group_index
        acts.append(['CHORD_PART', request.id, request.group, -1 if gi is None else gi,
                     json.dumps([1, request.id, state, be.encode_result(result, state)]),
                     request.chord])
    be.set_chord_size, be.store_result, be.on_chord_part_return = \
        set_chord_size, store_result, on_chord_part_return

    def sent(sig, **opts):
        """The envelope the client publishes for sig (its first message)."""
        del acts[:]
        sig.apply_async(**opts)
        env = [a[1] for a in acts if a[0] == 'PUBLISH'][0]
        del acts[:]
        return env

    def request_of(env):
        m = json.loads(env)
        h = m['headers']
        args, kwargs, embed = json.loads(base64.b64decode(m['body']))
        req = dict(h, args=args, kwargs=kwargs, delivery_info=m['properties']['delivery_info'],
                   reply_to=m['properties']['reply_to'], called_directly=False, hostname='w@h')
        req.update(embed)
        return req

    def with_current(req, fn):
        current.push_request(**req)
        _task_stack.push(current)
        try:
            fn(current.request)
            return [r.as_tuple() for r in current.request.children]
        finally:
            _task_stack.pop()
            current.pop_request()

    def success(task_request, retval):
        # celery/app/trace.py build_tracer, the success branch, verbatim in substance
        uuid, root_id, task_priority = task_request.id, task_request.root_id or task_request.id, None
        callbacks = task_request.callbacks
        if callbacks:
            if len(callbacks) > 1:
                sigs, groups = [], []
                for sig in callbacks:
                    sig = signature(sig, app=app)
                    if isinstance(sig, group):
                        groups.append(sig)
                    else:
                        sigs.append(sig)
                for group_ in groups:
                    group_.apply_async((retval,), parent_id=uuid, root_id=root_id,
                                       priority=task_priority)
                if sigs:
                    group(sigs, app=app).apply_async((retval,), parent_id=uuid, root_id=root_id,
                                                     priority=task_priority)
            else:
                signature(callbacks[0], app=app).apply_async(
                    (retval,), parent_id=uuid, root_id=root_id, priority=task_priority)
        ch = task_request.chain
        if ch:
            _chsig = signature(ch.pop(), app=app)
            _chsig.apply_async((retval,), chain=ch, parent_id=uuid, root_id=root_id,
                               priority=task_priority)

    def failure(task_request, exc, state='FAILURE'):
        if state == 'REVOKED':
            be.mark_as_revoked(task_request.id, 'revoked', request=task_request)
        else:
            be.mark_as_failure(task_request.id, exc, 'Traceback (most recent call last):\n',
                               request=task_request)
        # the task's own store is the consumer's, not the plan's
        if acts and acts[0][0] == 'STORE' and acts[0][1] == task_request.id:
            del acts[0]

    def chord_done(task_request, entries):
        # backends/redis.py on_chord_part_return once readycount == total
        callback = maybe_signature(task_request.chord, app=app)
        try:
            from celery.backends.redis import RedisBackend
            resl = [RedisBackend._unpack_chord_result(be, tup, be.decode) for tup in entries]
            try:
                callback.delay(resl)
            except Exception as exc:
                return be.chord_error_from_stack(callback, ChordError(f'Callback error: {exc!r}'))
        except ChordError as exc:
            return be.chord_error_from_stack(callback, exc)

    add = app.signature('w.add')
    xsum = app.signature('w.xsum')
    echo = app.signature('w.echo')
    out = []

    def case(name, env, step, arg):
        req = request_of(env)
        del acts[:]
        first = counter[0] + 1
        if step == 'success':
            def ok(r):
                success(r, arg)
                be.mark_as_done(r.id, arg, request=r)  # the store, then the chord part
                for k, a in enumerate(acts):
                    if a[0] == 'STORE' and a[1] == r.id:
                        del acts[k]
                        break
            children = with_current(req, ok)
        elif step == 'failure':
            children = with_current(req, lambda r: failure(r, ValueError(arg)))
        elif step == 'revoked':
            children = with_current(req, lambda r: failure(r, None, 'REVOKED'))
        else:
            children = with_current(req, lambda r: chord_done(
                r, [json.dumps(e) for e in arg]))
            arg = [list(e) for e in arg]
        out.append({'name': name, 'request': env, 'step': step, 'arg': arg, 'first_id': first,
                    'children': json.loads(json.dumps(children)),
                    'acts': json.loads(json.dumps(acts))})

    s = lambda name, *a, **o: app.signature(name, a, options=o)  # noqa: E731
    case('link-one', sent(s('w.add', 2, 2), link=add.clone((10,))), 'success', 4)
    case('link-many', sent(s('w.add', 2, 2), link=[add.clone((1,)), echo.clone(),
                                                    group(add.clone((5,)), echo.clone())]),
         'success', 4)
    case('link-chain', sent(s('w.add', 1, 1), link=chain(add.clone((1,)), add.clone((2,)))),
         'success', 2)
    case('chain-next', sent(chain(s('w.add', 1, 2), add.clone((3,)), add.clone((4,)))),
         'success', 3)
    case('chain-last', sent(chain(s('w.add', 1, 2), add.clone((3,)))), 'success', 3)
    case('chain-immutable', sent(chain(s('w.add', 1, 2), app.signature('w.add', (7, 7), immutable=True),
                                       echo.clone((1,), {'k': 2}))), 'success', 3)
    case('chain-to-group', sent(chain(s('w.add', 1, 2), group(add.clone((1,)),
                                                              add.clone((2,))))), 'success', 3)
    case('chain-to-chord', sent(chain(s('w.add', 1, 2), group(add.clone((1,)), add.clone((2,))),
                                      xsum.clone(), add.clone((100,)))), 'success', 3)
    case('chain-routed', sent(chain(s('w.add', 1, 2), add.clone((3,)).set(queue='q2'),
                                    add.clone((4,)).set(queue='q3', priority=5))),
         'success', 3)
    case('fail-errbacks', sent(s('w.add', 1, 2), link_error=[echo.clone(),
                                                              app.signature('w.echo', ('x',), immutable=True)]),
         'failure', 'boom')
    case('fail-chain', sent(chain(s('w.add', 1, 2), add.clone((3,)), add.clone((4,))),
                            link_error=echo.clone()), 'failure', 'boom')
    case('chain-link-error', sent(chain(s('w.add', 1, 2), add.clone((3,)), add.clone((4,))),
                                  link_error=echo.clone()), 'success', 3)
    hdr = sent(chord([s('w.add', 1, 1), s('w.add', 2, 2)], xsum.clone().set(
        link_error=[echo.clone()])))
    case('chord-part-ok', hdr, 'success', 2)
    case('chord-part-fail', hdr, 'failure', 'boom')
    case('chord-part-revoked', hdr, 'revoked', None)
    case('chord-done', hdr, 'chord', [[1, 'p-1', 'SUCCESS', 2], [1, 'p-2', 'SUCCESS', 4]])
    case('chord-done-fail', hdr, 'chord',
         [[1, 'p-1', 'SUCCESS', 2],
          [1, 'p-2', 'FAILURE', {'exc_type': 'ValueError', 'exc_message': ['boom'],
                                 'exc_module': 'builtins'}]])
    hdr2 = sent(chord([s('w.add', 1, 1)], chain(echo.clone(), add.clone((1,)))))
    case('chord-done-chain-body', hdr2, 'chord', [[1, 'p-1', 'SUCCESS', [1, 2]]])
    hdr3 = sent(chord([s('w.add', 1, 1)], app.signature('w.echo', ('fixed',), immutable=True)))
    case('chord-done-immutable', hdr3, 'chord', [[1, 'p-1', 'SUCCESS', 2]])
    grp_chain = group(chain(s('w.add', 1, 1), add.clone((1,))), s('w.add', 2, 2))
    sent_env = sent(grp_chain)
    case('group-chain-member', sent_env, 'success', 2)
    cbase.uuid, ccanvas.uuid, camqp.anon_nodename, cbase.Celery.thread_oid, vbase.uuid, \
        memory.Channel._put = saved
    return {'now': NOW.timestamp(), 'origin': ORIGIN, 'reply_to': OID, 'cases': out}


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: gen_messages.py OUTDIR')
    out = sys.argv[1]
    if not glob.glob(os.path.join(CAPTURES, 'redis-monitor-*.txt')):
        sys.exit('gen_messages: no captures in %s (set CEL_WIRE_DIR)' % CAPTURES)
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
             'publish.json': publish_cases(), 'topic.json': topic_cases(),
             'saferepr.json': saferepr_cases(), 'apply.json': apply_cases(),
             'plans.json': plan_cases()}
    for fn, data in files.items():
        with open(os.path.join(out, fn), 'w') as f:
            json.dump(data, f, indent=1, allow_nan=False)
    print('gen_messages: %d messages, %d metas into %s' % (len(msgs), len(files['metas.json']), out))


if __name__ == '__main__':
    main()
