/*
 * listener.h: the listening TCP sockets of the workers.
 *
 * Each worker has its own socket with SO_REUSEPORT on every listen
 * address, so the kernel spreads new connections across workers and no
 * accept lock is needed. libuv 1.44 cannot set SO_REUSEPORT itself, so the
 * socket is made here and handed to uv_tcp_open.
 *
 * The master makes every worker slot's sockets before the first fork and
 * keeps them open (master.c), so that a worker that dies leaves its socket,
 * and the connections the kernel already queued on it, to the worker that
 * replaces it: a crash costs the connections that worker had accepted, not
 * those waiting to be (as nginx does with reuseport). A worker whose
 * configuration lists other addresses than the master's (the file changed
 * since the gateway started) does not start: a socket of the master's that
 * no worker accepts on would still get its share of new connections. The
 * master closes a slot's sockets while its worker fails to start, for the
 * same reason, and makes them again for the next try.
 */
#ifndef GW_LISTENER_H
#define GW_LISTENER_H

#include <uv.h>

#include "config.h"

/* A bound, listening SO_REUSEPORT socket for `addr`: returns its file
 * descriptor, or a negative errno. */
int gw_listener_socket(const gw_listen_t *addr);

/* Accepts on `fd` (from gw_listener_socket) through `handle`, initialised
 * here on `loop`; each connection calls `cb`. The handle owns `fd` in this
 * process from here on, also on failure. Returns 0 or a negative errno. */
int gw_listener_adopt(uv_loop_t *loop, uv_tcp_t *handle, int fd, uv_connection_cb cb);

/* Both in one: a socket of this process's own. */
int gw_listener_open(uv_loop_t *loop, uv_tcp_t *handle, const gw_listen_t *addr, uv_connection_cb cb);

/* A socket the master made for this worker's slot (see gw_listener_inherit). */
typedef struct {
  char *host; /* as in the master's configuration (gw_xmalloc'd) */
  int port;
  int fd; /* -1 once taken or closed */
} gw_inherited_socket_t;

/* In the worker, right after fork: the sockets the master made for this
 * slot (the array and hosts become the worker's). */
void gw_listener_inherit(gw_inherited_socket_t *s, size_t n);
/* 1 if the master made this worker's sockets for exactly these addresses
 * (or made none: no master), 0 if the configuration's addresses differ
 * from the master's (the file changed since the gateway started: listen
 * and admin only change with a restart). */
int gw_listener_inherited_match(const gw_listen_t *addrs, size_t n);
/* The inherited socket for host:port, taken, or -1 if there is none (or
 * the master could not make it again). */
int gw_listener_take(const char *host, int port);
/* Closes the inherited sockets nothing took (the master still has them). */
void gw_listener_drop_untaken(void);

#endif
