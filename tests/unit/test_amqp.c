/* test_amqp.c -- unit tests for protocol/amqp_msg.c: AMQP field tables, properties, rpc replies.
 *
 * The byte strings below were written by py-amqp 5.1.1's own serializer
 * (amqp/serialization.py _write_table) for a stock client's task headers,
 * for kombu's pidbox queue arguments and for a table of every type; they
 * are decoded with librabbitmq's amqp_decode_table as the connection thread
 * does, converted to JSON and compared with what Python sent, then the JSON
 * is encoded back with cel_amqp_json_to_table + amqp_encode_table and must
 * give the same bytes: what celeriac declares and publishes is what kombu
 * would. Then each kind, the depth and count limits, values JSON cannot
 * hold, properties, the headers-only peek and the rpc:// reply body.
 */
#include "testutil.h"

#include <math.h>

#include <amqp.h>

#include "../../protocol/amqp_msg.h"
#include "../../protocol/internal.h"
#include "../../protocol/protocol.h"

/* py-amqp: _write_table(<celery 5.2 task headers>) for add(2, 3) */
static const char celery_headers_hex[] =
    "0000011c046c616e6753000000027079047461736b53000000097461736b732e616464026964530000002432"
    "326636333861392d313561392d343065362d383262332d35353663373663373738653006736861646f7756"
    "03657461560765787069726573560567726f7570560b67726f75705f696e64657856077265747269657349"
    "000000000974696d656c696d69744100000002565607726f6f745f6964530000002432326636333861392d"
    "313561392d343065362d383262332d35353663373663373738653009706172656e745f6964560861726773"
    "72657072530000000628322c2033290a6b77617267737265707253000000027b7d066f726967696e530000"
    "000b67656e313133323340766d0d69676e6f72655f726573756c747400";
static const char celery_headers_json[] =
    "{\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": \"22f638a9-15a9-40e6-82b3-556c76c778e0\","
    " \"shadow\": null, \"eta\": null, \"expires\": null, \"group\": null, \"group_index\": null,"
    " \"retries\": 0, \"timelimit\": [null, null], \"root_id\":"
    " \"22f638a9-15a9-40e6-82b3-556c76c778e0\", \"parent_id\": null, \"argsrepr\": \"(2, 3)\","
    " \"kwargsrepr\": \"{}\", \"origin\": \"gen11323@vm\", \"ignore_result\": false}";

/* py-amqp: _write_table({"x-expires": 10000, "x-message-ttl": 300000}) (kombu's pidbox queue) */
static const char pidbox_args_hex[] =
    "0000002209782d6578706972657349000027100d782d6d6573736167652d74746c49000493e0";
static const char pidbox_args_json[] = "{\"x-expires\": 10000, \"x-message-ttl\": 300000}";

/* py-amqp: every kind Python sends: 'L' for 2**40 and -2**31, 'I' for 2**31-1, 'd', 't', F, A, V */
static const char kinds_hex[] =
    "00000078036269674c0000010000000000036e65674cffffffff800000000465646765497fffffff016664"
    "3ff800000000000001747401066e6573746564460000001c01614100000015490000000153000000016256"
    "4600000004016374000974696d656c696d6974410000000e490000000a644016000000000000";
static const char kinds_json[] =
    "{\"big\": 1099511627776, \"neg\": -2147483648, \"edge\": 2147483647, \"f\": 1.5, \"t\": true,"
    " \"nested\": {\"a\": [1, \"b\", null, {\"c\": false}]}, \"timelimit\": [10, 5.5]}";

static size_t unhex(const char *hex, uint8_t *out, size_t size) {
    size_t n = strlen(hex) / 2;
    assert_true(n <= size);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* Decodes py-amqp bytes as the connection thread does, compares with want,
 * then encodes the JSON back and compares the bytes. */
static void round_trip(const char *hex, const char *want_json) {
    uint8_t wire[1024], again[1024];
    size_t n = unhex(hex, wire, sizeof(wire));
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    size_t off = 0;
    amqp_bytes_t enc = { n, wire };
    assert_int_equal(amqp_decode_table(enc, &pool, &t, &off), AMQP_STATUS_OK);
    assert_int_equal(off, n);
    json_t *got;
    cel_err_t err;
    assert_int_equal(cel_amqp_table_to_json(&t, &got, &err), CEL_OK);
    json_t *want = json_loads(want_json, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, 0);
        fail_msg("decoded %s", g);
    }
    /* back to the wire: byte for byte what py-amqp wrote */
    amqp_table_t t2;
    assert_int_equal(cel_amqp_json_to_table(want, &t2, &err), CEL_OK);
    size_t off2 = 0;
    amqp_bytes_t out = { sizeof(again), again };
    assert_int_equal(amqp_encode_table(out, &t2, &off2), AMQP_STATUS_OK);
    assert_int_equal(off2, n);
    assert_memory_equal(again, wire, n);
    cel_amqp_table_free(&t2);
    json_decref(got);
    json_decref(want);
    empty_amqp_pool(&pool);
}

static void test_py_amqp_tables(void **state) {
    round_trip(celery_headers_hex, celery_headers_json);
    round_trip(pidbox_args_hex, pidbox_args_json);
    round_trip(kinds_hex, kinds_json);
}

/* The decoded headers become a task, with the properties beside them. */
static void test_headers_decode_a_task(void **state) {
    uint8_t wire[1024];
    size_t n = unhex(celery_headers_hex, wire, sizeof(wire));
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    size_t off = 0;
    amqp_bytes_t enc = { n, wire };
    assert_int_equal(amqp_decode_table(enc, &pool, &p.headers, &off), AMQP_STATUS_OK);
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
               AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.content_encoding = amqp_cstring_bytes("utf-8");
    p.delivery_mode = 2;
    p.priority = 7;
    p.correlation_id = amqp_cstring_bytes("22f638a9-15a9-40e6-82b3-556c76c778e0");
    p.reply_to = amqp_cstring_bytes("6f6e0a11-1d40-3e05-9434-4fe134537c8f");
    p.expiration = amqp_cstring_bytes("120000");
    json_t *props, *headers;
    cel_err_t err;
    assert_int_equal(cel_amqp_props_to_json(&p, &props, &headers, &err), CEL_OK);
    assert_string_equal(json_string_value(json_object_get(props, "content_type")),
                        "application/json");
    assert_int_equal(json_integer_value(json_object_get(props, "priority")), 7);
    assert_int_equal(json_integer_value(json_object_get(props, "delivery_mode")), 2);
    assert_string_equal(json_string_value(json_object_get(props, "expiration")), "120000");
    const char *body = "[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, "
                       "\"chord\": null}]";
    json_t *dinfo =
        json_pack("{s:s, s:s, s:b}", "exchange", "", "routing_key", "celery", "redelivered", 1);
    cel_task_t *t;
    assert_int_equal(cel_task_decode_parts(headers, props, dinfo, (const uint8_t *)body,
                                           strlen(body), "application/json", "utf-8", &t, &err),
                     CEL_OK);
    assert_string_equal(t->name, "tasks.add");
    assert_string_equal(t->id, "22f638a9-15a9-40e6-82b3-556c76c778e0");
    assert_string_equal(t->reply_to, "6f6e0a11-1d40-3e05-9434-4fe134537c8f");
    assert_int_equal(t->priority, 7);
    assert_int_equal(t->redelivered, 1);
    assert_int_equal(json_integer_value(json_array_get(t->args, 1)), 3);
    cel_peek_t pk;
    assert_int_equal(cel_peek_amqp(headers, props, &pk, &err), CEL_OK);
    assert_string_equal(pk.id, "22f638a9-15a9-40e6-82b3-556c76c778e0");
    assert_string_equal(pk.task, "tasks.add");
    assert_string_equal(pk.root_id, "22f638a9-15a9-40e6-82b3-556c76c778e0");
    assert_string_equal(pk.parent_id, "");
    assert_string_equal(pk.reply_to, "6f6e0a11-1d40-3e05-9434-4fe134537c8f");
    cel_task_free(t);
    json_decref(dinfo);
    json_decref(props);
    json_decref(headers);
    empty_amqp_pool(&pool);
}

static amqp_table_entry_t entry(const char *key, amqp_field_value_t v) {
    amqp_table_entry_t e = { amqp_cstring_bytes(key), v };
    return e;
}

static json_t *one(amqp_field_value_t v, int expect_rc) {
    amqp_table_entry_t e = entry("k", v);
    amqp_table_t t = { 1, &e };
    json_t *o = NULL;
    cel_err_t err;
    assert_int_equal(cel_amqp_table_to_json(&t, &o, &err), expect_rc);
    if (expect_rc != CEL_OK) {
        assert_null(o);
        return NULL;
    }
    json_t *v2 = json_incref(json_object_get(o, "k"));
    json_decref(o);
    return v2;
}

/* Every kind librabbitmq decodes, including the ones Python never sends. */
static void test_each_kind(void **state) {
    amqp_field_value_t v;
    json_t *j;
#define INT_CASE(kind_, field, val, want)                     \
    v.kind = kind_;                                           \
    v.value.field = val;                                      \
    j = one(v, CEL_OK);                                       \
    assert_true(json_is_integer(j));                          \
    assert_true(json_integer_value(j) == (json_int_t)(want)); \
    json_decref(j)
    INT_CASE(AMQP_FIELD_KIND_I8, i8, -5, -5);
    INT_CASE(AMQP_FIELD_KIND_U8, u8, 250, 250);
    INT_CASE(AMQP_FIELD_KIND_I16, i16, -30000, -30000);
    INT_CASE(AMQP_FIELD_KIND_U16, u16, 60000, 60000);
    INT_CASE(AMQP_FIELD_KIND_I32, i32, -7, -7);
    INT_CASE(AMQP_FIELD_KIND_U32, u32, 4000000000u, 4000000000ll);
    INT_CASE(AMQP_FIELD_KIND_I64, i64, -(1ll << 50), -(1ll << 50));
    /* 'L': what py-amqp writes for a negative int beyond 32 bits */
    INT_CASE(AMQP_FIELD_KIND_U64, u64, (uint64_t)-5ll, -5);
    INT_CASE(AMQP_FIELD_KIND_TIMESTAMP, u64, 1795382424u, 1795382424);
    v.kind = AMQP_FIELD_KIND_TIMESTAMP;
    v.value.u64 = UINT64_MAX;
    one(v, CEL_ETYPE);
    v.kind = AMQP_FIELD_KIND_F32;
    v.value.f32 = 0.5f;
    j = one(v, CEL_OK);
    assert_true(json_real_value(j) == 0.5);
    json_decref(j);
    v.kind = AMQP_FIELD_KIND_F64;
    v.value.f64 = NAN;
    one(v, CEL_ETYPE);
    v.value.f64 = INFINITY;
    one(v, CEL_ETYPE);
    v.kind = AMQP_FIELD_KIND_DECIMAL;
    v.value.decimal.decimals = 2;
    v.value.decimal.value = 12345;
    j = one(v, CEL_OK);
    assert_true(fabs(json_real_value(j) - 123.45) < 1e-9);
    json_decref(j);
    v.value.decimal.decimals = 31;
    one(v, CEL_ETYPE);
    v.kind = AMQP_FIELD_KIND_BYTES;
    v.value.bytes = amqp_cstring_bytes("raw");
    j = one(v, CEL_OK);
    assert_string_equal(json_string_value(j), "raw");
    json_decref(j);
    /* bytes that are not UTF-8: one U+FFFD each (Python's errors='replace') */
    v.value.bytes = (amqp_bytes_t){ 2, "\xff\xfe" };
    j = one(v, CEL_OK);
    assert_string_equal(json_string_value(j), "\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    v.kind = AMQP_FIELD_KIND_UTF8;
    v.value.bytes = (amqp_bytes_t){ 3, "a\0b" }; /* a NUL is a character, as in Python */
    j = one(v, CEL_OK);
    assert_int_equal(json_string_length(j), 3);
    json_decref(j);
    v.value.bytes = (amqp_bytes_t){ 3, "\xc3\x28x" };
    j = one(v, CEL_OK);
    assert_string_equal(json_string_value(j), "\xef\xbf\xbd(x");
    json_decref(j);
    /* py-amqp's 'surrogatepass' lone surrogate "\ud800 x" (ED A0 80): three replacements */
    v.value.bytes = (amqp_bytes_t){ 5, "\xed\xa0\x80 x" };
    j = one(v, CEL_OK);
    assert_string_equal(json_string_value(j), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd x");
    json_decref(j);
    v.kind = AMQP_FIELD_KIND_VOID;
    j = one(v, CEL_OK);
    assert_true(json_is_null(j));
    json_decref(j);
    v.kind = AMQP_FIELD_KIND_BOOLEAN;
    v.value.boolean = 1;
    j = one(v, CEL_OK);
    assert_true(json_is_true(j));
    json_decref(j);
    v.kind = 'Z'; /* no such kind */
    one(v, CEL_ETYPE);
    /* a key that is not UTF-8: replaced the same way */
    amqp_field_value_t nul = { AMQP_FIELD_KIND_VOID, { 0 } };
    amqp_table_entry_t bad = { { 1, "\xff" }, nul };
    amqp_table_t t = { 1, &bad };
    json_t *o;
    assert_int_equal(cel_amqp_table_to_json(&t, &o, NULL), CEL_OK);
    assert_true(json_is_null(json_object_get(o, "\xef\xbf\xbd")));
    json_decref(o);
}

/* Nesting: CEL_MSG_MAX_DEPTH levels of tables decode, one more is refused;
 * arrays the same. Entry counts at and past CEL_AMQP_MAX_ITEMS. */
static void test_limits(void **state) {
    enum { N = CEL_MSG_MAX_DEPTH + 1 };
    amqp_table_entry_t e[N];
    amqp_table_t t[N];
    for (int i = N - 1; i >= 0; i--) {
        amqp_field_value_t v;
        if (i == N - 1) {
            v.kind = AMQP_FIELD_KIND_VOID;
        } else {
            v.kind = AMQP_FIELD_KIND_TABLE;
            v.value.table = t[i + 1];
        }
        e[i] = entry("k", v);
        t[i] = (amqp_table_t){ 1, &e[i] };
    }
    json_t *o;
    cel_err_t err;
    /* t[0] nests N tables: one too many */
    assert_int_equal(cel_amqp_table_to_json(&t[0], &o, &err), CEL_ELIMIT);
    assert_null(o);
    assert_int_equal(cel_amqp_table_to_json(&t[1], &o, &err), CEL_OK); /* N - 1: at the limit */
    assert_int_equal(cel_json_depth(o, 1000), CEL_MSG_MAX_DEPTH);
    /* and back: the same depth is accepted for publishing, one more is not */
    amqp_table_t back;
    assert_int_equal(cel_amqp_json_to_table(o, &back, &err), CEL_OK);
    cel_amqp_table_free(&back);
    json_t *deeper = json_pack("{s:O}", "k", o);
    assert_int_equal(cel_amqp_json_to_table(deeper, &back, &err), CEL_ELIMIT);
    assert_int_equal(back.num_entries, 0);
    json_decref(deeper);
    json_decref(o);

    /* arrays nest the same way */
    amqp_field_value_t av[N];
    for (int i = N - 1; i >= 0; i--) {
        if (i == N - 1) {
            av[i].kind = AMQP_FIELD_KIND_VOID;
        } else {
            av[i].kind = AMQP_FIELD_KIND_ARRAY;
            av[i].value.array = (amqp_array_t){ 1, &av[i + 1] };
        }
    }
    amqp_table_entry_t ae = entry("a", av[0]);
    amqp_table_t at = { 1, &ae };
    assert_int_equal(cel_amqp_table_to_json(&at, &o, &err), CEL_ELIMIT);
    ae = entry("a", av[2]);
    assert_int_equal(cel_amqp_table_to_json(&at, &o, &err), CEL_OK);
    json_decref(o);

    /* counts: a declared count past the limit is refused before anything is read */
    amqp_table_t huge = { CEL_AMQP_MAX_ITEMS + 1, e };
    assert_int_equal(cel_amqp_table_to_json(&huge, &o, &err), CEL_ELIMIT);
    amqp_table_t neg = { -1, e };
    assert_int_equal(cel_amqp_table_to_json(&neg, &o, &err), CEL_ELIMIT);
    amqp_field_value_t arr = { AMQP_FIELD_KIND_ARRAY, { 0 } };
    arr.value.array = (amqp_array_t){ CEL_AMQP_MAX_ITEMS + 1, av };
    amqp_table_entry_t he = entry("a", arr);
    amqp_table_t ht = { 1, &he };
    assert_int_equal(cel_amqp_table_to_json(&ht, &o, &err), CEL_ELIMIT);
    /* at the count limit: fine */
    amqp_table_entry_t *many = calloc(CEL_AMQP_MAX_ITEMS, sizeof(*many));
    char(*keys)[8] = calloc(CEL_AMQP_MAX_ITEMS, 8);
    assert_non_null(many);
    assert_non_null(keys);
    for (int i = 0; i < CEL_AMQP_MAX_ITEMS; i++) {
        snprintf(keys[i], 8, "%u", (unsigned)i & 0xfffffu);
        many[i] = entry(keys[i], (amqp_field_value_t){ AMQP_FIELD_KIND_BOOLEAN, { 0 } });
    }
    amqp_table_t mt = { CEL_AMQP_MAX_ITEMS, many };
    assert_int_equal(cel_amqp_table_to_json(&mt, &o, &err), CEL_OK);
    assert_int_equal(json_object_size(o), CEL_AMQP_MAX_ITEMS);
    json_decref(o);
    free(many);
    free(keys);
}

/* JSON to a table: py-amqp's type choices, and what cannot be sent. */
static void test_json_to_table(void **state) {
    json_t *h = json_pack("{s:i, s:I, s:I, s:I, s:f, s:b, s:n, s:s, s:[i], s:{}}", "small", 5,
                          "min32", (json_int_t)-2147483647, "below", (json_int_t)-2147483648ll,
                          "above", (json_int_t)2147483648ll, "real", 2.5, "bool", 1, "none", "str",
                          "x", "list", 1, "map");
    amqp_table_t t;
    cel_err_t err;
    assert_int_equal(cel_amqp_json_to_table(h, &t, &err), CEL_OK);
    assert_int_equal(t.num_entries, 10);
    char want[] = { AMQP_FIELD_KIND_I32,  AMQP_FIELD_KIND_I32,  AMQP_FIELD_KIND_U64,
                    AMQP_FIELD_KIND_U64,  AMQP_FIELD_KIND_F64,  AMQP_FIELD_KIND_BOOLEAN,
                    AMQP_FIELD_KIND_VOID, AMQP_FIELD_KIND_UTF8, AMQP_FIELD_KIND_ARRAY,
                    AMQP_FIELD_KIND_TABLE };
    for (int i = 0; i < t.num_entries; i++) assert_int_equal(t.entries[i].value.kind, want[i]);
    assert_true((int64_t)t.entries[2].value.value.u64 == -2147483648ll);
    cel_amqp_table_free(&t);
    json_decref(h);
    /* not an object */
    json_t *arr = json_array();
    assert_int_equal(cel_amqp_json_to_table(arr, &t, &err), CEL_EINVAL);
    json_decref(arr);
    /* a key of 256 bytes */
    char key[257];
    memset(key, 'k', 256);
    key[256] = '\0';
    h = json_pack("{s:n}", key);
    assert_int_equal(cel_amqp_json_to_table(h, &t, &err), CEL_ELIMIT);
    assert_int_equal(t.num_entries, 0);
    json_decref(h);
    key[255] = '\0';
    h = json_pack("{s:n}", key);
    assert_int_equal(cel_amqp_json_to_table(h, &t, &err), CEL_OK);
    cel_amqp_table_free(&t);
    json_decref(h);
    cel_amqp_table_free(NULL);
}

/* Properties: only the set ones; short strings that are not UTF-8 left out. */
static void test_properties(void **state) {
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    json_t *props, *headers;
    cel_err_t err;
    assert_int_equal(cel_amqp_props_to_json(&p, &props, &headers, &err), CEL_OK);
    assert_int_equal(json_object_size(props), 0);
    assert_true(json_is_object(headers));
    assert_int_equal(json_object_size(headers), 0);
    json_decref(props);
    json_decref(headers);
    p._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CLUSTER_ID_FLAG |
               AMQP_BASIC_REPLY_TO_FLAG;
    p.message_id = amqp_cstring_bytes("m");
    p.timestamp = 1795382424;
    p.type = amqp_cstring_bytes("t");
    p.user_id = amqp_cstring_bytes("guest");
    p.app_id = amqp_cstring_bytes("a");
    p.cluster_id = amqp_cstring_bytes("c");
    p.reply_to = (amqp_bytes_t){ 1, "\xff" };
    assert_int_equal(cel_amqp_props_to_json(&p, &props, &headers, &err), CEL_OK);
    assert_string_equal(json_string_value(json_object_get(props, "user_id")), "guest");
    assert_int_equal(json_integer_value(json_object_get(props, "timestamp")), 1795382424);
    assert_null(json_object_get(props, "reply_to"));
    json_decref(props);
    json_decref(headers);
    /* headers that cannot be read: both outputs NULL */
    amqp_field_value_t nan = { AMQP_FIELD_KIND_F64, { .f64 = NAN } };
    amqp_table_entry_t e = entry("x", nan);
    p._flags = AMQP_BASIC_HEADERS_FLAG;
    p.headers = (amqp_table_t){ 1, &e };
    assert_int_equal(cel_amqp_props_to_json(&p, &props, &headers, &err), CEL_ETYPE);
    assert_null(props);
    assert_null(headers);
}

/* The headers-only peek: strings only, bounded, no NUL. */
static void test_peek(void **state) {
    char longid[CEL_PEEK_STR_MAX + 2];
    memset(longid, 'i', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    json_t *h = json_pack("{s:s, s:i, s:s, s:s%}", "id", longid, "task", 5, "group", "g", "root_id",
                          "a\0b", (size_t)3);
    cel_peek_t pk;
    assert_int_equal(cel_peek_amqp(h, NULL, &pk, NULL), CEL_OK);
    assert_string_equal(pk.id, "");   /* one byte too long */
    assert_string_equal(pk.task, ""); /* not a string */
    assert_string_equal(pk.group, "g");
    assert_string_equal(pk.root_id, ""); /* holds a NUL */
    assert_string_equal(pk.reply_to, "");
    longid[CEL_PEEK_STR_MAX] = '\0'; /* at the limit */
    json_object_set_new(h, "id", json_string(longid));
    assert_int_equal(cel_peek_amqp(h, NULL, &pk, NULL), CEL_OK);
    assert_string_equal(pk.id, longid);
    json_decref(h);
    assert_int_equal(cel_peek_amqp(NULL, NULL, &pk, NULL), CEL_OK);
    assert_string_equal(pk.id, "");
}

static void rpc_ok(const char *meta, const char *want) {
    char *out;
    size_t n;
    cel_err_t err;
    if (cel_meta_to_rpc(meta, strlen(meta), &out, &n, &err) != CEL_OK)
        fail_msg("%s: %s", meta, err.msg);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    free(out);
}

/* rpc:// reply bodies from the metas the consumer encodes (celery/backends/rpc.py _to_result). */
static void test_meta_to_rpc(void **state) {
    json_t *five = json_integer(5);
    char *m = cel_meta_encode("22f638a9-15a9-40e6-82b3-556c76c778e0", "SUCCESS", five, NULL, NULL,
                              1795382448.1, NULL, NULL, NULL);
    /* captured from the stock worker on rpc:// (../shared/celery-wire/amqp-firehose.txt) */
    rpc_ok(m, "{\"task_id\": \"22f638a9-15a9-40e6-82b3-556c76c778e0\", \"status\": \"SUCCESS\", "
              "\"result\": 5, \"traceback\": null, \"children\": []}");
    free(m);
    json_decref(five);
    /* group and parent ids, a date, a traceback: only the five fields, in that order */
    json_t *exc = cel_exc_new("ValueError", "builtins", json_pack("[s]", "a \"}\" {x"));
    m = cel_meta_encode("i", "FAILURE", exc, "Traceback {\n\"x\"", NULL, 1.0, "g", "p", NULL);
    rpc_ok(m, "{\"task_id\": \"i\", \"status\": \"FAILURE\", \"result\": {\"exc_type\": "
              "\"ValueError\", \"exc_message\": [\"a \\\"}\\\" {x\"], \"exc_module\": "
              "\"builtins\"}, \"traceback\": \"Traceback {\\n\\\"x\\\"\", \"children\": []}");
    free(m);
    json_decref(exc);
    /* PROGRESS: date_done null */
    json_t *info = json_pack("{s:i, s:i}", "done", 1, "total", 4);
    m = cel_meta_encode("i", "PROGRESS", info, NULL, NULL, -1, NULL, NULL, NULL);
    rpc_ok(m, "{\"task_id\": \"i\", \"status\": \"PROGRESS\", \"result\": {\"done\": 1, "
              "\"total\": 4}, \"traceback\": null, \"children\": []}");
    free(m);
    json_decref(info);
    /* values copied byte for byte: a big integer and Python's NaN survive */
    rpc_ok(
        "{\"status\": \"SUCCESS\", \"result\": [123456789012345678901234567890, NaN, -Infinity], "
        "\"traceback\": null, \"children\": [[[\"c\", null], null]], \"date_done\": \"x\", "
        "\"task_id\": \"i\"}",
        "{\"task_id\": \"i\", \"status\": \"SUCCESS\", \"result\": "
        "[123456789012345678901234567890, NaN, -Infinity], \"traceback\": null, \"children\": "
        "[[[\"c\", null], null]]}");
    /* refused: not an object, a missing field, truncated anywhere */
    const char *bad[] = { "",
                          "[]",
                          "{\"status\": \"SUCCESS\"}",
                          "{\"status\": \"SUCCESS\", \"result\": 1, \"traceback\": null, "
                          "\"children\": [], \"task_id\": \"i\"",
                          "{\"status\": \"SUCCESS\", \"result\": [1, \"traceback\": null}",
                          "{\"status\" \"SUCCESS\"}",
                          "{status: 1}",
                          "{\"status\": \"SUCC" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *out = (char *)1;
        size_t n;
        cel_err_t err;
        if (cel_meta_to_rpc(bad[i], strlen(bad[i]), &out, &n, &err) != CEL_EPROTO)
            fail_msg("accepted: %s", bad[i]);
        assert_null(out);
    }
    /* every prefix of a good meta is refused, none read past its length */
    const char *good = "{\"status\": \"SUCCESS\", \"result\": {\"a\": [1, \"]\"]}, \"traceback\": "
                       "null, \"children\": [], \"date_done\": null, \"task_id\": \"i\"}";
    for (size_t len = 0; len < strlen(good); len++) {
        char *cut = malloc(len ? len : 1);
        memcpy(cut, good, len);
        char *out;
        size_t n;
        assert_int_equal(cel_meta_to_rpc(cut, len, &out, &n, NULL), CEL_EPROTO);
        free(cut);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_py_amqp_tables), cmocka_unit_test(test_headers_decode_a_task),
        cmocka_unit_test(test_each_kind),      cmocka_unit_test(test_limits),
        cmocka_unit_test(test_json_to_table),  cmocka_unit_test(test_properties),
        cmocka_unit_test(test_peek),           cmocka_unit_test(test_meta_to_rpc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
