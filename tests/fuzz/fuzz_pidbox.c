/* fuzz_pidbox.c -- libFuzzer harness for a remote-control (pidbox) message as the
 * worker receives it: worker/pidbox.c's handle_message on the payload of a PUBLISH to
 * /<db>.celery.pidbox (kombu envelope, JSON or msgpack body, base64 or not).
 *
 * handle_message is static, so this file includes pidbox.c whole (the replay and fuzz
 * builds then take nothing else from worker/pidbox.o). It runs with a real events
 * object (for the Lamport clock) on a loop that never runs, no Redis connection (a
 * reply is built, encoded, then dropped as "broker connection down"), and a handler
 * that answers with the request's arguments, so replies of any shape get encoded.
 * Logging is on at DEBUG into /dev/null, so every %s that formats message data runs.
 * The input is the pmessage payload, placed right before the guard page with no NUL
 * after it (guard_place): handle_message must not read past len, as an AMQP body
 * would give it. `make fuzz` runs it over
 * tests/fuzz/corpus/pidbox/; `make test` replays that corpus.
 */
#include <fcntl.h>

#include "guard.h"
#include "../../common/log.h"
#include "../../worker/pidbox.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cel_options_t fuzz_cfg;
static uv_loop_t fuzz_loop;
static cel_pidbox_t fuzz_pb;

/* Answers every command with its arguments (a new reference); "shutdown" with no
 * reply, as the real handler does. */
static json_t *on_command(void *priv, const char *method, json_t *arguments) {
    if (strcmp(method, "shutdown") == 0) return NULL;
    if (strcmp(method, "ping") == 0) return json_pack("{s:s}", "ok", "pong");
    return json_incref(arguments);
}

static void setup(void) {
    if (fuzz_pb.ev) return;
    cel_log_init("fuzz", CEL_LOG_DEBUG, open("/dev/null", O_WRONLY));
    snprintf(fuzz_cfg.hostname, sizeof(fuzz_cfg.hostname), "celeriac@fuzz");
    snprintf(fuzz_cfg.broker.host, sizeof(fuzz_cfg.broker.host), "127.0.0.1");
    fuzz_cfg.broker.port = 1; /* never connected: the loop never runs */
    uv_loop_init(&fuzz_loop);
    fuzz_pb.loop = &fuzz_loop;
    fuzz_pb.cfg = &fuzz_cfg;
    fuzz_pb.ev = cel_events_new(&fuzz_loop, &fuzz_cfg, NULL, NULL);
    fuzz_pb.handler = on_command;
    if (!fuzz_pb.ev) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    uint64_t before = cel_events_clock(fuzz_pb.ev);
    handle_message(&fuzz_pb, (const char *)guard_place(data, size), size);
    if (cel_events_clock(fuzz_pb.ev) <= before) __builtin_trap(); /* always forwarded */
    return 0;
}
