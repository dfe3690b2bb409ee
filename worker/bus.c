/* bus.c -- picks the bus of the broker in use (Redis or AMQP) and dispatches to its table.
 *
 * The only code besides broker.c that knows which transports exist:
 * cel_bus_new looks at the broker URL (cfg->broker_amqp) and opens the
 * matching cel_bus_ops_t; every other call goes through the table. Main
 * process, libuv loop.
 */
#include "bus.h"

#include <stdlib.h>

struct cel_bus {
    const cel_bus_ops_t *ops;
    void *impl;
    void (*on_closed)(void *);
    void *closed_priv;
};

cel_bus_t *cel_bus_new(uv_loop_t *loop, const cel_options_t *cfg, const char *name, int confirm,
                       void (*on_state)(void *priv, int up), void *priv, cel_err_t *err) {
    const cel_bus_ops_t *ops = cfg->broker_amqp ? &cel_bus_amqp_ops : &cel_bus_redis_ops;
    if (ops->abi != CEL_BUS_ABI) {
        cel_err_set(err, CEL_EINVAL, "bus %s has abi %d, want %d", ops->scheme, ops->abi,
                    CEL_BUS_ABI);
        return NULL;
    }
    cel_bus_t *bus = calloc(1, sizeof(*bus));
    if (!bus) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    bus->ops = ops;
    if (!(bus->impl = ops->open(loop, cfg, name, confirm, on_state, priv, err))) {
        free(bus);
        return NULL;
    }
    return bus;
}

const cel_bus_ops_t *cel_bus_ops(const cel_bus_t *bus) { return bus->ops; }

int cel_bus_up(const cel_bus_t *bus) { return bus->ops->up(bus->impl); }

void cel_bus_publish(cel_bus_t *bus, const cel_bus_exchange_t *ex, const cel_broker_out_t *m,
                     cel_broker_done_fn done, void *priv) {
    bus->ops->publish(bus->impl, ex, m, done, priv);
}

int cel_bus_listen(cel_bus_t *bus, const cel_bus_queue_t *q, cel_bus_msg_fn fn, void *priv) {
    return bus->ops->listen(bus->impl, q, fn, priv);
}

void cel_bus_unlisten(cel_bus_t *bus) { bus->ops->unlisten(bus->impl); }

static void on_impl_closed(void *priv) {
    cel_bus_t *bus = priv;
    void (*cb)(void *) = bus->on_closed;
    void *cp = bus->closed_priv;
    free(bus);
    if (cb) cb(cp);
}

void cel_bus_close(cel_bus_t *bus, void (*on_closed)(void *), void *priv) {
    bus->on_closed = on_closed;
    bus->closed_priv = priv;
    bus->ops->close(bus->impl, on_impl_closed, bus);
}
