/*
 * redis.h: pools of non-blocking Redis connections (hiredis on libuv).
 *
 * A gw_redis_pool_t is one Redis endpoint (a "redis://" URL) in this worker
 * process: its idle connections and how to open new ones. Pools are made at
 * configuration time (gw.redis) and never freed, so they survive reloads,
 * like upstream groups. A command borrows a connection for itself alone:
 * an idle one when there is one, else a new one; when its reply comes the
 * connection goes back to the idle list (at most `idle_max` kept), and a
 * connection that fails, times out or cannot authenticate is dropped.
 *
 * Every command has its own libuv timer: when it fires before the reply,
 * the caller gets "timeout" and the connection is dropped, so a stalled or
 * dead Redis never holds a caller past its timeout.
 *
 * Hosts are IP literals (or "localhost"): hiredis 0.14 would resolve a
 * name with a blocking getaddrinfo, which the loop must never wait for.
 */
#ifndef GW_REDIS_H
#define GW_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

typedef struct gw_redis_pool_s gw_redis_pool_t;
typedef struct gw_redis_cmd_s gw_redis_cmd_t;

/* Called once per command that was not cancelled: `reply` (borrowed, valid
 * during the call only) or, on a transport failure, NULL and a short static
 * error string ("connection refused", "timeout", "connection lost", ...). */
typedef void (*gw_redis_reply_cb)(void *data, const redisReply *reply, const char *err);

/* The pool for `url` ("redis://[[user]:pass@]host[:port][/db]"), made on
 * first use; `idle_max` (>= 0) updates how many idle connections it keeps.
 * Returns NULL and writes why into err for a malformed URL. */
gw_redis_pool_t *gw_redis_pool_get(const char *url, size_t len, int idle_max, char *err, size_t errlen);

/* Sends a command (argv is copied at once) on a pooled connection. Returns
 * the command, whose `cb` runs later exactly once unless cancelled; or NULL
 * with *err set when it could not be sent (then `cb` is never called).
 * `timeout` (seconds) bounds the connect and the reply. Needs a worker. */
gw_redis_cmd_t *gw_redis_command(gw_redis_pool_t *p, int argc, const char **argv, const size_t *lens,
                                 double timeout, gw_redis_reply_cb cb, void *data, const char **err);

/* The caller no longer wants the reply: `cb` will not be called. The
 * command itself runs to its end (reply or timeout) and then frees itself. */
void gw_redis_cmd_cancel(gw_redis_cmd_t *c);

/* Connections of `p`: open now (busy or idle), and idle. */
void gw_redis_pool_stats(const gw_redis_pool_t *p, int *open, int *idle);

#endif
