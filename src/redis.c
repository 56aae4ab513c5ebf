/*
 * redis.c: pools of hiredis async connections on the worker's libuv loop.
 *
 * Three kinds of record, each with its own owner:
 *  - gw_redis_pool_t: one per URL in this process, on `pools`, never freed.
 *  - conn_t: one hiredis context, its socket watcher and its connect timer.
 *    Owned by its pool while the context lives; once the context is gone
 *    (freed by us, or by hiredis after an error) conn_gone closes the timer,
 *    hiredis' event cleanup closes the watcher, and the record is freed when
 *    both have closed, in the loop's close phase: after every hiredis
 *    callback that could still name it.
 *  - gw_redis_cmd_t: one command. It has two holders, hiredis (until its
 *    reply callback runs, which hiredis guarantees, with a NULL reply when
 *    the context dies) and its timer handle (until closed); it is freed when
 *    both let go. The caller's interest (cb) is a third, weaker link that
 *    gw_redis_cmd_cancel cuts: that is how a task that ends before the reply
 *    leaves the reply to be ignored without freeing hiredis' privdata.
 *
 * One command at a time per connection: a command never waits behind
 * another caller's slow reply, and a timeout can drop the connection
 * without failing anyone else.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mem.h"
#include "resp_scan.h"
#include "worker.h"

/* Exported by hiredis 0.14 but missing from its async.h (declared there
 * from 1.0 on): parses what the context's reader holds and runs callbacks. */
void redisProcessCallbacks(redisAsyncContext *ac);

typedef struct conn_s conn_t;

/* See the file comment. Fields are fixed once parsed, but idle_max. */
struct gw_redis_pool_s {
  char *url;         /* the URL as given: the pool's key */
  char host[64];     /* an IP literal */
  int port;          /* 6379 unless the URL says */
  int db;            /* SELECT db on connect when > 0 */
  char *user, *pass; /* AUTH [user] pass on connect; NULL if none */
  int idle_max;      /* idle connections kept */
  conn_t *idle;      /* idle connections, a list through next_idle */
  int nidle;
  int nopen;                    /* contexts alive, busy or idle */
  struct gw_redis_pool_s *next; /* `pools` */
};

/* Owned by its pool; freed in on_conn_handle_closed once `timer` (closed
 * by conn_gone) and `poll` (closed by ev_cleanup) are both closed. */
struct conn_s {
  redisAsyncContext *ac; /* NULL once gone */
  gw_redis_pool_t *pool; /* never freed */
  uv_timer_t timer;      /* the connect timeout */
  uv_poll_t poll;        /* the socket, for hiredis (see "events") */
  int events;            /* what hiredis wants: UV_READABLE | UV_WRITABLE */
  int handles;           /* of timer and poll, not yet closed: freed at 0 */
  gw_redis_cmd_t *cmd;   /* the command in flight, or NULL */
  const char *fail;      /* why it failed, for the commands that were on it */
  gw_resp_scan_t scan;   /* counts the replies read (see conn_read) */
  uint64_t sent;         /* commands handed to hiredis on it, setup ones included */
  uint64_t replies;      /* complete replies read on it */
  uint8_t connected;     /* the connect callback said OK */
  uint8_t gone;          /* conn_gone ran */
  uint8_t is_idle;       /* on pool->idle */
  conn_t *next_idle;     /* pool->idle list */
};

/* See the file comment. */
struct gw_redis_cmd_s {
  uv_timer_t timer;     /* the command's timeout */
  conn_t *conn;         /* the connection it was sent on */
  gw_redis_reply_cb cb; /* NULL once called or cancelled */
  void *data;           /* for cb */
  const char *err;      /* set when the timeout fired */
  uint8_t in_hiredis;   /* hiredis still holds it as privdata */
  uint8_t timer_open;   /* the timer handle is not closed yet */
};

static gw_redis_pool_t *pools;

/* ---- URLs ---- */

static int fail(char *err, size_t errlen, const char *msg) {
  snprintf(err, errlen, "%s", msg);
  return -1;
}

static char *dup_range(const char *a, const char *b) { return gw_xstrndup(a, (size_t)(b - a)); }

/* Parses redis://[[user]:pass@]host[:port][/db] into p. */
static int parse_url(gw_redis_pool_t *p, const char *url, size_t len, char *err, size_t errlen) {
  const char *s = url, *end = url + len;
  if (len < 8 || memcmp(s, "redis://", 8) != 0) return fail(err, errlen, "the URL must start with redis://");
  s += 8;
  const char *at = NULL;
  for (const char *q = s; q < end && *q != '/'; q++)
    if (*q == '@') at = q;
  if (at) {
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (!colon) return fail(err, errlen, "credentials must be :password@ or user:password@");
    if (colon > s) p->user = dup_range(s, colon);
    p->pass = dup_range(colon + 1, at);
    s = at + 1;
  }
  const char *hend = s;
  if (*s == '[') { /* [IPv6] */
    hend = memchr(s, ']', (size_t)(end - s));
    if (!hend) return fail(err, errlen, "unclosed [ in the host");
    if ((size_t)(hend - s - 1) >= sizeof p->host) return fail(err, errlen, "host too long");
    memcpy(p->host, s + 1, (size_t)(hend - s - 1));
    hend++;
  } else {
    while (hend < end && *hend != ':' && *hend != '/') hend++;
    if ((size_t)(hend - s) >= sizeof p->host) return fail(err, errlen, "host too long");
    memcpy(p->host, s, (size_t)(hend - s));
  }
  if (!p->host[0]) return fail(err, errlen, "the URL has no host");
  if (strcmp(p->host, "localhost") == 0) strcpy(p->host, "127.0.0.1");
  unsigned char addr[16];
  if (inet_pton(AF_INET, p->host, addr) != 1 && inet_pton(AF_INET6, p->host, addr) != 1)
    return fail(err, errlen, "the host must be an IP address or localhost");
  s = hend;
  p->port = 6379;
  if (s < end && *s == ':') {
    s++;
    long port = 0;
    const char *d = s;
    while (s < end && *s >= '0' && *s <= '9' && port <= 65535) port = port * 10 + (*s++ - '0');
    if (s == d || port < 1 || port > 65535) return fail(err, errlen, "bad port");
    p->port = (int)port;
  }
  p->db = 0;
  if (s < end && *s == '/') {
    s++;
    long db = 0;
    while (s < end && *s >= '0' && *s <= '9' && db < 1000000) db = db * 10 + (*s++ - '0');
    p->db = (int)db;
  }
  if (s != end) return fail(err, errlen, "unexpected characters after the host, port or db");
  return 0;
}

gw_redis_pool_t *gw_redis_pool_get(const char *url, size_t len, int idle_max, char *err, size_t errlen) {
  for (gw_redis_pool_t *p = pools; p; p = p->next)
    if (strlen(p->url) == len && memcmp(p->url, url, len) == 0) {
      p->idle_max = idle_max;
      return p;
    }
  gw_redis_pool_t *p = gw_xcalloc(1, sizeof *p);
  if (parse_url(p, url, len, err, errlen) != 0) {
    free(p->user);
    free(p->pass);
    free(p);
    return NULL;
  }
  p->url = gw_xstrndup(url, len);
  p->idle_max = idle_max;
  p->next = pools;
  pools = p;
  return p;
}

void gw_redis_pool_stats(const gw_redis_pool_t *p, int *open, int *idle) {
  *open = p->nopen;
  *idle = p->nidle;
}

/* ---- connections ---- */

static void idle_remove(conn_t *c) {
  if (!c->is_idle) return;
  gw_redis_pool_t *p = c->pool;
  for (conn_t **pp = &p->idle; *pp; pp = &(*pp)->next_idle)
    if (*pp == c) {
      *pp = c->next_idle;
      break;
    }
  c->is_idle = 0;
  c->next_idle = NULL;
  p->nidle--;
}

static void on_conn_handle_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (--c->handles == 0) free(c);
}

/* The context is gone or going: forget it. Idempotent. The record stays
 * valid until the loop's close phase, after any callback still naming it. */
static void conn_gone(conn_t *c) {
  if (c->gone) return;
  c->gone = 1;
  c->ac = NULL;
  c->pool->nopen--;
  idle_remove(c);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

/* Closes the connection at once (deferred by hiredis until the current
 * callback returns when called from one). Its command, if any, gets a
 * NULL reply and c->fail. */
static void conn_drop(conn_t *c, const char *why) {
  if (c->gone) return;
  if (!c->fail) c->fail = why;
  redisAsyncContext *ac = c->ac;
  conn_gone(c);
  redisAsyncFree(ac);
}

/* Why a command on `c` got no reply. */
static const char *conn_fail_msg(conn_t *c, const redisAsyncContext *ac) {
  if (c->fail) return c->fail;
  if (!c->connected) {
    if (ac && ac->errstr[0] && strstr(ac->errstr, "refused")) return "connection refused";
    return "connect failed";
  }
  return "connection lost";
}

static void on_connect(const redisAsyncContext *ac, int status) {
  conn_t *c = ac->data;
  if (c->gone) return;
  if (status == REDIS_OK) {
    c->connected = 1;
    uv_timer_stop(&c->timer);
    return;
  }
  /* hiredis frees the context when this returns, failing what is queued. */
  c->fail = conn_fail_msg(c, ac);
  conn_gone(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  conn_t *c = ac->data;
  if (!c->fail && status != REDIS_OK) c->fail = "connection lost";
  conn_gone(c);
}

static void on_connect_timeout(uv_timer_t *t) { conn_drop(t->data, "timeout"); }

/* The reply to AUTH or SELECT: an error reply makes the connection useless. */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *privdata) {
  conn_t *c = privdata;
  redisReply *reply = r;
  if (!reply || reply->type != REDIS_REPLY_ERROR) return;
  gw_log_error("redis %s:%d: %s", c->pool->host, c->pool->port, reply->str);
  conn_drop(c, strncmp(reply->str, "WRONGPASS", 9) == 0 || strstr(reply->str, "password") ||
                       strncmp(reply->str, "NOAUTH", 6) == 0
                   ? "authentication failed"
                   : "select failed");
}

/* ---- hiredis events on libuv ----
 *
 * Our own binding rather than <hiredis/adapters/libuv.h>: the one in
 * hiredis 0.14 ignores a poll error (libuv reports POLLERR, as a refused
 * connect gives, as a status with no events), so the connect would never
 * be seen to fail. Here an error wakes hiredis for what it waits for, and
 * hiredis then finds the socket error itself. */

/* Reads the socket into hiredis' reader ourselves, counting the replies on
 * the way (resp_scan.h says why): a connection that answers more than it was
 * asked, or announces a reply over the caps, is dropped before hiredis
 * parses a byte of it. Until connected, and for the EOF or an error, hiredis
 * reads itself and reports what it finds. */
static void conn_read(conn_t *c) {
  redisAsyncContext *ac = c->ac;
  if (!(ac->c.flags & REDIS_CONNECTED)) {
    redisAsyncHandleRead(ac);
    return;
  }
  char buf[16384];
  ssize_t n = read(ac->c.fd, buf, sizeof buf);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    redisAsyncHandleRead(ac); /* reads the EOF (or the error) again and reports it */
    return;
  }
  if (gw_resp_scan(&c->scan, buf, (size_t)n, &c->replies) != GW_RESP_OK) {
    gw_log_warn("redis %s:%d: a reply over the size caps; connection dropped", c->pool->host, c->pool->port);
    conn_drop(c, "reply too large");
    return;
  }
  if (c->replies > c->sent) {
    gw_log_warn("redis %s:%d: a reply no command asked for; connection dropped", c->pool->host,
                c->pool->port);
    conn_drop(c, "unexpected reply");
    return;
  }
  if (redisReaderFeed(ac->c.reader, buf, (size_t)n) != REDIS_OK) {
    conn_drop(c, "connection lost");
    return;
  }
  redisProcessCallbacks(ac);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  conn_t *c = h->data;
  int ev = status < 0 ? c->events : events;
  /* Either call may free the context (then conn_gone has cleared c->ac). */
  if (c->ac && (ev & UV_READABLE)) conn_read(c);
  if (c->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(c->ac);
}

static void poll_update(conn_t *c, int add, int del) {
  if (uv_is_closing((uv_handle_t *)&c->poll)) return;
  c->events = (c->events | add) & ~del;
  if (c->events) uv_poll_start(&c->poll, c->events, on_poll);
  else uv_poll_stop(&c->poll);
}
static void ev_add_read(void *data) { poll_update(data, UV_READABLE, 0); }
static void ev_del_read(void *data) { poll_update(data, 0, UV_READABLE); }
static void ev_add_write(void *data) { poll_update(data, UV_WRITABLE, 0); }
static void ev_del_write(void *data) { poll_update(data, 0, UV_WRITABLE); }

/* hiredis is freeing the context: it no longer needs the socket watched.
 * Its pending callbacks have run; the disconnect callback may follow. */
static void ev_cleanup(void *data) {
  conn_t *c = data;
  conn_gone(c); /* normally done already, by on_connect or on_disconnect */
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, on_conn_handle_closed);
}

/* Opens a connection. Returns NULL and sets *err if the connect failed at once. */
static conn_t *conn_open(gw_redis_pool_t *p, double timeout, const char **err) {
  redisAsyncContext *ac = redisAsyncConnect(p->host, p->port);
  if (!ac) {
    *err = "out of memory";
    return NULL;
  }
  if (ac->err) {
    *err = strstr(ac->errstr, "refused") ? "connection refused" : "connect failed";
    redisAsyncFree(ac);
    return NULL;
  }
  conn_t *c = gw_xcalloc(1, sizeof *c);
  if (uv_poll_init(gw__worker->loop, &c->poll, ac->c.fd) != 0) {
    *err = "connect failed";
    free(c);
    redisAsyncFree(ac);
    return NULL;
  }
  c->poll.data = c;
  c->handles = 2;
  ac->ev.data = c;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  c->ac = ac;
  c->pool = p;
  ac->data = c;
  p->nopen++;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  uv_timer_init(gw__worker->loop, &c->timer);
  c->timer.data = c;
  uint64_t ms = gw_seconds_to_ms(timeout);
  if (!ms) ms = 1;
  uv_timer_start(&c->timer, on_connect_timeout, ms, 0);
  /* Queued now, sent once connected, answered before the caller's command. */
  if (p->pass) {
    if (p->user) {
      const char *argv[] = {"AUTH", p->user, p->pass};
      redisAsyncCommandArgv(ac, on_setup_reply, c, 3, argv, NULL);
      c->sent++;
    } else {
      const char *argv[] = {"AUTH", p->pass};
      redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
      c->sent++;
    }
  }
  if (p->db > 0) {
    char db[16];
    snprintf(db, sizeof db, "%d", p->db);
    const char *argv[] = {"SELECT", db};
    redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
    c->sent++;
  }
  return c;
}

/* A command on `c` got its reply: keep the connection or close it. */
static void conn_release(conn_t *c) {
  gw_redis_pool_t *p = c->pool;
  if (c->gone) return;
  if (p->nidle >= p->idle_max || (c->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))) {
    conn_drop(c, "connection lost");
    return;
  }
  c->is_idle = 1;
  c->next_idle = p->idle;
  p->idle = c;
  p->nidle++;
}

/* ---- commands ---- */

static void cmd_maybe_free(gw_redis_cmd_t *cmd) {
  if (!cmd->in_hiredis && !cmd->timer_open) free(cmd);
}

static void on_cmd_timer_closed(uv_handle_t *h) {
  gw_redis_cmd_t *cmd = h->data;
  cmd->timer_open = 0;
  cmd_maybe_free(cmd);
}

static void cmd_close_timer(gw_redis_cmd_t *cmd) {
  if (uv_is_closing((uv_handle_t *)&cmd->timer)) return;
  uv_timer_stop(&cmd->timer);
  uv_close((uv_handle_t *)&cmd->timer, on_cmd_timer_closed);
}

/* hiredis' callback: exactly once per command, with NULL if the context died. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata) {
  gw_redis_cmd_t *cmd = privdata;
  conn_t *c = cmd->conn;
  redisReply *reply = r;
  const char *err = NULL;
  cmd->in_hiredis = 0;
  c->cmd = NULL;
  if (!reply) err = cmd->err ? cmd->err : conn_fail_msg(c, ac);
  else conn_release(c); /* before the callback, which may send the next command */
  cmd_close_timer(cmd);
  gw_redis_reply_cb cb = cmd->cb;
  cmd->cb = NULL;
  if (cb) cb(cmd->data, reply, err);
  cmd_maybe_free(cmd);
}

static void on_cmd_timeout(uv_timer_t *t) {
  gw_redis_cmd_t *cmd = t->data;
  cmd->err = "timeout";
  cmd_close_timer(cmd);
  /* Its reply may still come: the connection cannot be reused. Dropping it
   * calls on_reply (NULL) now, which reports the timeout. */
  conn_drop(cmd->conn, "timeout");
}

/* Commands after which the server sends replies no command asked for:
 * hiredis then keeps the command as a callback for messages to come, long
 * after the caller (and the command's record) are gone. */
static int is_push_command(const char *name, size_t len) {
  static const char *const names[] = {"subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
                                      "punsubscribe", "sunsubscribe", "monitor"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0) return 1;
  return 0;
}

gw_redis_cmd_t *gw_redis_command(gw_redis_pool_t *p, int argc, const char **argv, const size_t *lens,
                                 double timeout, gw_redis_reply_cb cb, void *data, const char **err) {
  if (!gw__worker) {
    *err = "redis commands run only in a worker";
    return NULL;
  }
  if (argc > 0 && is_push_command(argv[0], lens ? lens[0] : strlen(argv[0]))) {
    *err = "pub/sub and MONITOR are not supported";
    return NULL;
  }
  conn_t *c = p->idle;
  if (c) idle_remove(c);
  else if (!(c = conn_open(p, timeout, err))) return NULL;
  gw_redis_cmd_t *cmd = gw_xcalloc(1, sizeof *cmd);
  cmd->conn = c;
  cmd->cb = cb;
  cmd->data = data;
  if (redisAsyncCommandArgv(c->ac, on_reply, cmd, argc, argv, lens) != REDIS_OK) {
    free(cmd);
    conn_drop(c, "connection lost");
    *err = "connection lost";
    return NULL;
  }
  c->sent++;
  cmd->in_hiredis = 1;
  c->cmd = cmd;
  uv_timer_init(gw__worker->loop, &cmd->timer);
  cmd->timer.data = cmd;
  cmd->timer_open = 1;
  uint64_t ms = gw_seconds_to_ms(timeout);
  if (!ms) ms = 1;
  uv_timer_start(&cmd->timer, on_cmd_timeout, ms, 0);
  return cmd;
}

void gw_redis_cmd_cancel(gw_redis_cmd_t *cmd) { cmd->cb = NULL; }
