/*
 * listener.h: a listening TCP socket of one worker.
 *
 * Each worker opens its own socket with SO_REUSEPORT on every listen
 * address, so the kernel spreads new connections across workers and no
 * accept lock is needed. libuv 1.44 cannot set SO_REUSEPORT itself, so the
 * socket is made here and handed to uv_tcp_open.
 */
#ifndef GW_LISTENER_H
#define GW_LISTENER_H

#include <uv.h>

#include "config.h"

/* Opens `addr` and listens on `handle` (initialised here on `loop`); each
 * connection calls `cb`. Returns 0 or a negative errno. */
int gw_listener_open(uv_loop_t *loop, uv_tcp_t *handle, const gw_listen_t *addr,
                     uv_connection_cb cb);

#endif
