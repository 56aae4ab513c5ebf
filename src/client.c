/*
 * client.c: upstream connections, their pools, and exchanges (client.h).
 *
 * One timer per connection serves every phase: connect (t_connect), send
 * (t_send), waiting for and reading the response (t_read between reads,
 * or the exchange's own timeout), and the idle time in the pool
 * (keepalive.timeout). An idle pooled connection keeps reading, so a close
 * by the server is seen at once and the connection leaves the pool.
 *
 * TLS (https:// servers) is a section of its own below: the handshake runs
 * between the TCP connect and the request (state GW_X_HANDSHAKE, under the
 * connect timeout), reads are decrypted in on_uconn_read before anything
 * else looks at them, and writes of the head and the body are encrypted
 * into copies. A plain connection pays one NULL check at each of those
 * places.
 */
#include "client.h"

#include "balancer.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errors.h"
#include "health.h"
#include "log.h"
#include "mem.h"
#include "worker.h"

#define READ_CHUNK 16384

static void start_try(gw_exchange_t *x);
static int aborted(gw_exchange_t *x);
static void read_pause(gw_uconn_t *uc);
static void read_resume(gw_uconn_t *uc);
static void uc_arm(gw_uconn_t *uc, double seconds);
static void uc_clear(gw_uconn_t *uc);
static void fail(gw_exchange_t *x, int err, const char *msg);
static void defer(gw_exchange_t *x);
static void uconn_close(gw_uconn_t *uc);
static void on_uconn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void send_request(gw_exchange_t *x);
static void tls_start(gw_exchange_t *x);
static ssize_t tls_read(gw_uconn_t *uc, ssize_t nread);
static void tls_flush_body(gw_exchange_t *x);
static void tls_close_notify(gw_uconn_t *uc);

/* The most bytes an upstream's response head (interim 1xx heads included)
 * may take before the exchange fails with 502. */
#define GW_UPSTREAM_HEAD_MAX (64 * 1024)

/* An upstream timeout in ms (config.h gw_seconds_to_ms), at least 1. */
static uint64_t ms(double s) {
  uint64_t n = gw_seconds_to_ms(s);
  return n ? n : 1;
}

/* ---- the request ---- */

static int target_valid(const char *target, size_t tlen) {
  if (tlen == 0) return 0;
  for (size_t i = 0; i < tlen; i++)
    if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] == 0x7f) return 0;
  return 1;
}

int gw_exchange_set_request(gw_exchange_t *x, const char *method, size_t mlen, const char *target,
                            size_t tlen) {
  if (!gw_header_valid(method, mlen, NULL, 0) || !target_valid(target, tlen)) return -1;
  free(x->method);
  free(x->target);
  x->method = gw_xstrndup(method, mlen);
  x->target = gw_xstrndup(target, tlen);
  x->head_request = mlen == 4 && memcmp(method, "HEAD", 4) == 0;
  /* RFC 9110 9.2.2: these may be repeated without changing the outcome. */
  static const char *idem[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
  x->idempotent = 0;
  for (size_t i = 0; i < sizeof idem / sizeof idem[0]; i++)
    if (strlen(idem[i]) == mlen && memcmp(idem[i], method, mlen) == 0) x->idempotent = 1;
  return 0;
}

static int is(const char *name, size_t nlen, const char *what) {
  size_t n = strlen(what);
  return nlen == n && strncasecmp(name, what, n) == 0;
}

void gw_exchange_add_header(gw_exchange_t *x, const char *name, size_t nlen, const char *value, size_t vlen) {
  /* Hop-by-hop headers (RFC 9110 7.6.1) and framing belong to this hop. */
  if (is(name, nlen, "connection") || is(name, nlen, "keep-alive") || is(name, nlen, "te") ||
      is(name, nlen, "trailer") || is(name, nlen, "transfer-encoding") || is(name, nlen, "upgrade") ||
      is(name, nlen, "content-length") || is(name, nlen, "proxy-connection") ||
      is(name, nlen, "proxy-authenticate") || is(name, nlen, "proxy-authorization"))
    return;
  if (is(name, nlen, "host")) x->has_host = 1;
  gw_exchange_add_line(x, name, nlen, value, vlen);
}

void gw_exchange_add_line(gw_exchange_t *x, const char *name, size_t nlen, const char *value, size_t vlen) {
  gw_buf_t *b = &x->header_lines;
  gw_buf_reserve(b, nlen + vlen + 4);
  memcpy(b->base + b->len, name, nlen);
  b->len += nlen;
  memcpy(b->base + b->len, ": ", 2);
  b->len += 2;
  memcpy(b->base + b->len, value, vlen);
  b->len += vlen;
  memcpy(b->base + b->len, "\r\n", 2);
  b->len += 2;
}

void gw_exchange_set_body(gw_exchange_t *x, const char *body, size_t len) {
  x->body.len = 0;
  gw_buf_append(&x->body, body, len);
  x->has_body = 1;
}

static void serialise(gw_exchange_t *x) {
  gw_buf_t *o = &x->out;
  char num[64];
  o->len = 0;
  gw_buf_append_str(o, x->method);
  gw_buf_append(o, " ", 1);
  gw_buf_append_str(o, x->target);
  gw_buf_append_str(o, " HTTP/1.1\r\n");
  if (!x->has_host) {
    /* host:port, never the declared form ("http://..."); IPv6 in brackets. */
    int v6 = strchr(x->server->host, ':') != NULL;
    int n = snprintf(num, sizeof num, v6 ? "Host: [%.40s]:%d\r\n" : "Host: %.40s:%d\r\n", x->server->host,
                     x->server->port);
    if (n > 0 && (size_t)n < sizeof num && strlen(x->server->host) <= 40) {
      gw_buf_append(o, num, (size_t)n);
    } else {
      gw_buf_append_str(o, "Host: ");
      gw_buf_append_str(o, x->server->host);
      n = snprintf(num, sizeof num, ":%d\r\n", x->server->port);
      gw_buf_append(o, num, (size_t)n);
    }
  }
  gw_buf_append(o, x->header_lines.base, x->header_lines.len);
  if (x->stream_body && x->stream_length < 0) {
    gw_buf_append_str(o, "Transfer-Encoding: chunked\r\n");
  } else if (x->stream_body) {
    int n = snprintf(num, sizeof num, "Content-Length: %lld\r\n", (long long)x->stream_length);
    gw_buf_append(o, num, (size_t)n);
  } else if (x->has_body || x->body.len) {
    int n = snprintf(num, sizeof num, "Content-Length: %zu\r\n", x->body.len);
    gw_buf_append(o, num, (size_t)n);
  }
  gw_buf_append(o, "\r\n", 2);
  gw_buf_append(o, x->body.base, x->body.len);
}

/* ---- connections ---- */

static void on_uconn_closed(uv_handle_t *h) {
  gw_uconn_t *uc = h->data;
  if (--uc->handles_open > 0) return;
  gw_tls_free(uc->tls);
  gw_buf_free(&uc->rbuf);
  free(uc);
}

static void pool_remove(gw_uconn_t *uc) {
  if (!uc->in_pool) return;
  gw_server_t *s = uc->server;
  if (uc->prev_idle) uc->prev_idle->next_idle = uc->next_idle;
  else s->idle = uc->next_idle;
  if (uc->next_idle) uc->next_idle->prev_idle = uc->prev_idle;
  uc->next_idle = uc->prev_idle = NULL;
  uc->in_pool = 0;
  s->nidle--;
}

static void uconn_close(gw_uconn_t *uc) {
  if (uc->closing) return;
  uc->closing = 1;
  pool_remove(uc);
  uc->x = NULL;
  if (uc->tls) tls_close_notify(uc);
  uv_close((uv_handle_t *)&uc->timer, on_uconn_closed);
  uv_close((uv_handle_t *)&uc->tcp, on_uconn_closed);
}

/* Puts a connection whose exchange ended cleanly back in its server's pool. */
static void pool_put(gw_uconn_t *uc) {
  gw_server_t *s = uc->server;
  gw_upstream_t *up = uc->up;
  uc->x = NULL;
  if (s->retired || s->nidle >= up->keepalive_idle || up->keepalive_idle <= 0 ||
      (gw__worker && gw__worker->draining)) {
    uconn_close(uc);
    return;
  }
  uc->rbuf.len = 0;
  uc->parsed = 0;
  uc->in_pool = 1;
  uc->prev_idle = NULL;
  uc->next_idle = s->idle;
  if (s->idle) s->idle->prev_idle = uc;
  s->idle = uc;
  s->nidle++;
  uc_arm(uc, up->keepalive_timeout);
  /* Keep reading: EOF (the server closed it) takes it out of the pool. */
  uv_unref((uv_handle_t *)&uc->tcp);
  uv_unref((uv_handle_t *)&uc->timer);
}

static gw_uconn_t *pool_get(gw_server_t *s) {
  gw_uconn_t *uc = s->idle;
  /* A TLS connection made under tls settings a reload has changed since
   * (a CA no longer trusted, verification turned on), or whose server has
   * ended the TLS stream, is not reused. */
  while (uc && uc->tls && (uc->tls_gen != uc->up->tls_gen || gw_tls_peer_closed(uc->tls))) {
    uconn_close(uc);
    uc = s->idle;
  }
  if (!uc) return NULL;
  pool_remove(uc);
  uv_ref((uv_handle_t *)&uc->tcp);
  uv_ref((uv_handle_t *)&uc->timer);
  uc_clear(uc);
  return uc;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  gw_uconn_t *uc = h->data;
  gw_buf_reserve(&uc->rbuf, READ_CHUNK);
  buf->base = uc->rbuf.base + uc->rbuf.len;
  buf->len = uc->rbuf.cap - uc->rbuf.len;
}

static gw_uconn_t *uconn_new(gw_exchange_t *x) {
  gw_uconn_t *uc = gw_xcalloc(1, sizeof *uc);
  uc->server = x->server;
  uc->up = x->up;
  uv_tcp_init(gw__worker->loop, &uc->tcp);
  uv_timer_init(gw__worker->loop, &uc->timer);
  uc->tcp.data = uc;
  uc->timer.data = uc;
  uc->connect_req.data = uc;
  uc->handles_open = 2;
  return uc;
}

/* ---- one try ---- */

/* Timeouts are deadlines (as in conn.c): the libuv timer moves only when it
 * would fire too late, and a timer that fires early re-arms for the rest.
 * A connection going from exchange to pool to exchange thus touches the
 * timer heap about once per timeout period instead of four times. */
static void on_timeout(uv_timer_t *t);

static void uc_arm(gw_uconn_t *uc, double seconds) {
  uint64_t now = uv_now(uc->timer.loop);
  uc->deadline = now + ms(seconds);
  if (uc->timer_due == 0 || uc->timer_due > uc->deadline) {
    uv_timer_start(&uc->timer, on_timeout, uc->deadline - now, 0);
    uc->timer_due = uc->deadline;
  }
}

static void uc_clear(gw_uconn_t *uc) { uc->deadline = 0; }

static void on_timeout(uv_timer_t *t) {
  gw_uconn_t *uc = t->data;
  uc->timer_due = 0;
  if (uc->deadline == 0) return;
  uint64_t now = uv_now(t->loop);
  if (now < uc->deadline) {
    uv_timer_start(&uc->timer, on_timeout, uc->deadline - now, 0);
    uc->timer_due = uc->deadline;
    return;
  }
  uc->deadline = 0;
  gw_exchange_t *x = uc->x;
  if (!x) {
    uconn_close(uc); /* idle in the pool for keepalive.timeout */
    return;
  }
  const char *what = x->state == GW_X_CONNECTING  ? "connect timed out"
                     : x->state == GW_X_HANDSHAKE ? "TLS handshake timed out"
                     : x->state == GW_X_SENDING   ? "send timed out"
                                                  : "timeout";
  fail(x, GW_ETIMEDOUT, what);
}

static void arm(gw_exchange_t *x, double seconds) { uc_arm(x->uc, seconds); }

static double read_timeout(const gw_exchange_t *x) { return x->timeout > 0 ? x->timeout : x->up->t_read; }

/* Ends the exchange: the connection goes back to the pool or is closed. */
static void finish(gw_exchange_t *x, int err, const char *msg) {
  gw_uconn_t *uc = x->uc;
  x->uc = NULL;
  x->state = GW_X_DONE;
  if (x->server) x->server->active--;
  /* The header slices stay readable through on_done: a pooled buffer is
   * only written again by a later read, a closed one freed on a later turn. */
  if (uc) x->resp_base = uc->rbuf.base;
  if (uc) {
    uc_clear(uc);
    /* Not a TLS connection whose server sent close_notify with this
     * answer: the next request on it would wait for nothing. */
    int reusable = err == 0 && x->parser.keep_alive && uc->parsed == uc->rbuf.len && !uc->closing &&
                   !(uc->tls && gw_tls_peer_closed(uc->tls));
    if (reusable) pool_put(uc);
    else uconn_close(uc);
  }
  if (x->server && !x->reported && !x->fixed_server) {
    uint64_t took_ns = uv_hrtime() - x->started_ns;
    /* Only failures of the server count against it, not a response that
     * was simply too large for the caller. */
    gw_server_report(x->up, x->server, err == 0 || err == GW_ETOOBIG, (double)took_ns / 1e6);
    gw_health_observe(x->server->health, took_ns);
  }
  /* The breaker counts whole exchanges (after retries) that reached a
   * server, never the gateway's own refusals (breaker open, no healthy
   * server); a probe always reports, so that its slot is given back. */
  if (!x->fixed_server && (err != GW_ESTATE || x->probe))
    gw_upstream_breaker_report(x->up, err == 0 || err == GW_ETOOBIG, x->probe);
  x->probe = 0;
  x->ops->on_done(x, err, msg);
}

static int retryable(const gw_exchange_t *x) {
  return x->idempotent && !x->got_bytes && x->tries <= x->up->retries && !x->fixed_server;
}

static void fail(gw_exchange_t *x, int err, const char *msg) {
  if (x->starting) {
    /* Failed at once inside gw_exchange_start (a connect with no descriptor
     * left, an unreachable network): on_done must not run before the
     * caller has yielded, so the failure waits for the next turn. */
    x->deferred_err = err;
    x->deferred_fail = msg;
    if (!x->deferred) defer(x);
    return;
  }
  gw_uconn_t *uc = x->uc;
  int stale = uc && uc->exchanges > 1 && !x->got_bytes && err != GW_ETIMEDOUT &&
              (!x->stream_body || x->body_pending + x->body_q.len == 0);
  if (stale && x->idempotent) {
    /* A pooled connection the server had already closed: try again on a
     * fresh connection, without counting it as a retry. */
    x->uc = NULL;
    uconn_close(uc);
    x->server->active--;
    x->tries--;
    start_try(x);
    return;
  }
  if (uc && x->server) {
    x->uc = NULL;
    uconn_close(uc);
    x->server->active--;
    if (err != GW_ETOOBIG && !x->fixed_server) {
      gw_server_report(x->up, x->server, 0, (double)(uv_hrtime() - x->started_ns) / 1e6);
      gw_health_observe(x->server->health, uv_hrtime() - x->started_ns);
    }
    x->reported = 1;
    if (retryable(x)) {
      x->retry_elsewhere = 1;
      x->last_err = err;
      x->last_msg = msg;
      start_try(x);
      return;
    }
    x->server->active++; /* finish() balances it */
  }
  finish(x, err, msg);
}

static int on_body(gw_http1c_t *p, const char *at, size_t len) {
  gw_exchange_t *x = p->data;
  x->in_callback = 1;
  int pause = x->ops->on_body(x, at, len);
  x->in_callback = 0;
  if (x->abort_pending) return -1; /* parse() hands it back */
  if (pause < 0) {
    x->body_error = 1;
    p->reason = "upstream response too large";
    return -1;
  }
  if (pause) x->paused = 1;
  return pause ? HPE_PAUSED : 0;
}

/* Parses what is buffered and acts on it. */
static void parse(gw_exchange_t *x) {
  gw_uconn_t *uc = x->uc;
  while (x->uc == uc && !x->paused && x->state != GW_X_DONE) {
    size_t used = 0;
    gw_http1c_result_t res = gw_http1c_execute(&x->parser, uc->rbuf.base, uc->parsed, uc->rbuf.len, &used);
    if (aborted(x)) return;
    uc->parsed += used;
    switch (res) {
      case GW_HTTP1C_NEED_MORE:
        /* The head is bounded like a client's (nginx: "upstream sent too
         * big header"): else an upstream could grow this buffer without end. */
        if (x->state != GW_X_BODY && uc->rbuf.len > GW_UPSTREAM_HEAD_MAX) {
          fail(x, GW_EPARSE, "upstream response head too large");
          return;
        }
        /* Body bytes were handed on: drop them, keep only the head. */
        if (x->state == GW_X_BODY && uc->parsed > x->parser.head_end) {
          size_t keep = x->parser.head_end;
          memmove(uc->rbuf.base + keep, uc->rbuf.base + uc->parsed, uc->rbuf.len - uc->parsed);
          uc->rbuf.len -= uc->parsed - keep;
          uc->parsed = keep;
        }
        return;
      case GW_HTTP1C_HEAD: {
        if (x->parser.head_end > GW_UPSTREAM_HEAD_MAX) {
          fail(x, GW_EPARSE, "upstream response head too large");
          return;
        }
        x->state = GW_X_BODY;
        x->resp_base = uc->rbuf.base;
        gw_http1c_resume(&x->parser);
        x->in_callback = 1;
        int pause = x->ops->on_head(x);
        x->in_callback = 0;
        if (aborted(x)) return;
        if (x->tunnel) {
          /* Past a 101 the bytes are no longer HTTP: hand on what came
           * after the head and leave the parser. */
          size_t rest = uc->rbuf.len - uc->parsed;
          const char *p = uc->rbuf.base + uc->parsed;
          uc->rbuf.len = uc->parsed = 0;
          if (rest && x->ops->on_body(x, p, rest) == 1) {
            x->paused = 1;
            read_pause(uc);
          }
          return;
        }
        if (pause) x->paused = 1;
        arm(x, read_timeout(x));
        break;
      }
      case GW_HTTP1C_PAUSED: gw_http1c_resume(&x->parser); break;
      case GW_HTTP1C_DONE:
        if (x->state != GW_X_BODY) {
          /* A HEAD answer completes without pausing at its head. */
          x->state = GW_X_BODY;
          x->parser.head_end = uc->parsed;
          x->resp_base = uc->rbuf.base;
          x->in_callback = 1;
          x->ops->on_head(x);
          x->in_callback = 0;
          if (aborted(x)) return;
        }
        finish(x, 0, NULL);
        return;
      case GW_HTTP1C_ERROR: fail(x, x->body_error ? GW_ETOOBIG : GW_EPARSE, x->parser.reason); return;
    }
  }
}

static void read_pause(gw_uconn_t *uc) {
  if (uc->reading) {
    uv_read_stop((uv_stream_t *)&uc->tcp);
    uc->reading = 0;
  }
}

static void read_resume(gw_uconn_t *uc) {
  if (!uc->reading && !uc->closing) {
    uv_read_start((uv_stream_t *)&uc->tcp, on_alloc, on_uconn_read);
    uc->reading = 1;
  }
}

/* The tunnel ended (EOF or error from the server, or a write failed). */
static void tunnel_end(gw_exchange_t *x, int err, const char *msg) {
  gw_uconn_t *uc = x->uc;
  x->uc = NULL;
  x->state = GW_X_DONE;
  if (x->server) x->server->active--;
  if (uc) uconn_close(uc);
  x->ops->on_done(x, err, msg);
}

static void tunnel_read(gw_exchange_t *x, gw_uconn_t *uc, ssize_t nread) {
  if (nread < 0) {
    tunnel_end(x, nread == UV_EOF ? 0 : (int)nread, nread == UV_EOF ? NULL : "upstream read failed");
    return;
  }
  x->in_callback = 1;
  int pause = x->ops->on_body(x, uc->rbuf.base + uc->rbuf.len, (size_t)nread);
  x->in_callback = 0;
  if (aborted(x)) return;
  if (pause == 1) {
    x->paused = 1;
    read_pause(uc);
  }
}

/* The server's close_notify came with (after) the last data it sent: TLS
 * returned the data and keeps the end, which no later read may bring (a
 * server can wait for our close_notify before closing TCP). Once that data
 * is parsed, the end of the stream is taken now, as a socket EOF would be
 * (a close-delimited body ends; anything else fails at once, not at a
 * timeout). */
static void take_tls_end(gw_uconn_t *uc) {
  gw_exchange_t *x = uc->x;
  if (!uc->tls || uc->closing || !gw_tls_peer_closed(uc->tls)) return;
  if (x && (x->paused || x->tunnel)) return; /* gw_exchange_resume comes back here */
  on_uconn_read((uv_stream_t *)&uc->tcp, UV_EOF, NULL);
}

static void on_uconn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  gw_uconn_t *uc = s->data;
  if (nread > 0 && uc->tls) {
    nread = tls_read(uc, nread); /* plaintext now; may end the exchange */
    if (uc->closing) return;
  }
  gw_exchange_t *x = uc->x;
  if (nread == 0) return;
  if (x && x->tunnel) {
    tunnel_read(x, uc, nread);
    return;
  }
  if (!x) {
    /* Idle in the pool: any byte or EOF means the connection is done for. */
    uconn_close(uc);
    return;
  }
  if (nread < 0) {
    if (nread == UV_EOF && x->state == GW_X_BODY) {
      if (gw_http1c_finish(&x->parser) == GW_HTTP1C_DONE) {
        x->parser.keep_alive = 0;
        finish(x, 0, NULL);
        return;
      }
    }
    fail(x, (int)nread, nread == UV_EOF ? "upstream closed the connection" : "upstream read failed");
    return;
  }
  uc->rbuf.len += (size_t)nread;
  x->got_bytes = 1;
  arm(x, read_timeout(x));
  parse(x);
  /* A paused exchange (Lua deciding, or the client slow to read) must not
   * pile the upstream's bytes up here: let them wait in the socket. parse()
   * may have ended (and freed) x: ask the connection, which outlives it.
   * The read timeout does not run while we are the ones not reading. */
  if (uc->x == x && x->paused) {
    read_pause(uc);
    uc_clear(uc);
  }
  if (uc->x == x) take_tls_end(uc);
}

/* A write to an upstream connection. Allocated per write and owned by
 * libuv until its callback; it points at the connection, never at the
 * exchange, which may be gone by then (aborted while the write was queued).
 * Streamed body bytes are copied into `data`; the head is written straight
 * from x->out, which outlives the write or is only freed after an abort,
 * when libuv cancels the write without reading the buffer. */
typedef struct {
  uv_write_t req; /* req.data is the gw_uconn_t */
  size_t len;     /* bytes counted in x->body_pending */
  int head;       /* W_BODY, W_HEAD (the head and a buffered body), W_TLS */
  char data[];
} uwrite_t;

enum { W_BODY = 0, W_HEAD = 1, W_TLS = 2 /* TLS handshake or alert bytes: no accounting */ };

static void flush_body(gw_exchange_t *x);

static void on_written(uv_write_t *req, int status) {
  uwrite_t *w = (uwrite_t *)req;
  gw_uconn_t *uc = req->data;
  gw_exchange_t *x = uc->x;
  int head = w->head;
  size_t len = w->len;
  free(w);
  if (!x || uc->closing || x->state == GW_X_DONE) return;
  if (status < 0) {
    fail(x, status, "upstream write failed");
    return;
  }
  if (head == W_TLS) return;
  if (head) {
    x->head_sent = 1;
    if (x->state == GW_X_SENDING) x->state = GW_X_HEAD;
  } else {
    x->body_pending -= len;
    x->body_writing = 0;
  }
  if (x->stream_body) {
    flush_body(x);
    /* While the client's body flows, the send timeout applies; the read
     * timeout starts once all of it is out. A tunnel has no timeouts. */
    if (x->tunnel) {
      /* nothing to arm */
    } else if (!x->body_done_sent) arm(x, x->up->t_send);
    else if (x->state == GW_X_HEAD) arm(x, read_timeout(x));
    if (x->body_pending < GW_EXCHANGE_LOW_WATER && x->ops->on_drain) {
      x->in_callback = 1;
      x->ops->on_drain(x);
      x->in_callback = 0;
      aborted(x);
    }
    return;
  }
  if (x->state == GW_X_HEAD) arm(x, read_timeout(x));
}

static int write_to(gw_uconn_t *uc, uwrite_t *w, const char *data, size_t len) {
  w->req.data = uc;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  return uv_write(&w->req, (uv_stream_t *)&uc->tcp, &b, 1, on_written);
}

static int tls_send(gw_uconn_t *uc, const char *p, size_t n, int kind, size_t counted, int direct);

static void send_request(gw_exchange_t *x) {
  gw_uconn_t *uc = x->uc;
  x->state = GW_X_SENDING;
  x->head_sent = 0;
  if (!uc->reading) {
    uv_read_start((uv_stream_t *)&uc->tcp, on_alloc, on_uconn_read);
    uc->reading = 1;
  }
  size_t done = 0;
  if (uc->tls) {
    /* As below: a streamed body waits for the head's on_written. */
    int rc = tls_send(uc, x->out.base, x->out.len, W_HEAD, 0, !x->stream_body);
    if (rc < 0) {
      fail(x, rc, rc == GW_ETLS ? "upstream TLS failed" : "upstream write failed");
    } else if (rc == 1) {
      x->head_sent = 1;
      x->state = GW_X_HEAD;
      arm(x, read_timeout(x));
    } else {
      arm(x, x->up->t_send);
    }
    return;
  }
  if (!x->stream_body) {
    /* Most requests fit the socket at once: a direct write spares libuv's
     * write queue, its deferred callback and an epoll_ctl. */
    uv_buf_t b = uv_buf_init(x->out.base, (unsigned)x->out.len);
    int n = uv_try_write((uv_stream_t *)&uc->tcp, &b, 1);
    if (n > 0) done = (size_t)n;
    if (done == x->out.len) {
      x->head_sent = 1;
      x->state = GW_X_HEAD;
      arm(x, read_timeout(x));
      return;
    }
  }
  arm(x, x->up->t_send); /* the rest waits for the socket */
  uwrite_t *w = gw_xcalloc(1, sizeof *w);
  w->head = 1;
  int rc = write_to(uc, w, x->out.base + done, x->out.len - done);
  if (rc != 0) {
    free(w);
    fail(x, rc, "upstream write failed");
  }
}

/* Writes what the client's body has queued, one write at a time. */
static void flush_body(gw_exchange_t *x) {
  if (!x->head_sent || x->body_writing || !x->uc || x->state == GW_X_DONE) return;
  if (x->body_q.len == 0) return;
  if (x->uc->tls) {
    tls_flush_body(x);
    return;
  }
  uwrite_t *w = gw_xmalloc(sizeof *w + x->body_q.len);
  w->head = 0;
  w->len = x->body_q.len;
  memcpy(w->data, x->body_q.base, x->body_q.len);
  x->body_q.len = 0;
  x->body_writing = 1;
  if (x->body_end_queued) x->body_done_sent = 1;
  if (write_to(x->uc, w, w->data, w->len) != 0) {
    free(w);
    fail(x, UV_EPIPE, "upstream write failed");
  }
}

size_t gw_exchange_write_body(gw_exchange_t *x, const char *data, size_t n) {
  if (x->state == GW_X_DONE || n == 0) return x->body_pending;
  if (x->stream_length < 0) {
    char size[24];
    int len = snprintf(size, sizeof size, "%zx\r\n", n);
    gw_buf_append(&x->body_q, size, (size_t)len);
    gw_buf_append(&x->body_q, data, n);
    gw_buf_append(&x->body_q, "\r\n", 2);
    x->body_pending += (size_t)len + n + 2;
  } else {
    gw_buf_append(&x->body_q, data, n);
    x->body_pending += n;
  }
  /* Once a byte of the client's body is on its way it cannot be sent again. */
  x->idempotent = 0;
  flush_body(x);
  return x->body_pending;
}

void gw_exchange_end_body(gw_exchange_t *x) {
  if (x->state == GW_X_DONE || x->body_end_queued) return;
  x->body_end_queued = 1;
  if (x->stream_length < 0) {
    gw_buf_append(&x->body_q, "0\r\n\r\n", 5);
    x->body_pending += 5;
  }
  if (x->body_q.len == 0) {
    x->body_done_sent = 1;
    if (x->state == GW_X_HEAD) arm(x, read_timeout(x));
    return;
  }
  flush_body(x);
}

static void on_connect(uv_connect_t *req, int status) {
  gw_uconn_t *uc = req->data;
  gw_exchange_t *x = uc->x;
  if (!x) return; /* closed meanwhile */
  if (status < 0) {
    fail(x, status, status == UV_ECONNREFUSED ? "connection refused" : "connect failed");
    return;
  }
  uc->connected = 1;
  uv_tcp_nodelay(&uc->tcp, 1);
  if (x->server->tls) tls_start(x);
  else send_request(x);
}

static void start_try(gw_exchange_t *x) {
  const gw_server_t *avoid = x->retry_elsewhere ? x->server : NULL;
  /* A health check asks one server, whatever its health, and never retries. */
  gw_server_t *s =
      x->fixed_server ? x->fixed_server : gw_upstream_pick(x->up, x->hash_key, x->hash_key_len, avoid);
  if (avoid && (s == avoid || !s)) {
    /* A retry goes to another server; with none left, the last failure
     * stands (also when that failure just marked the only server down:
     * the client should learn what happened, not "no healthy server"). */
    x->server = NULL;
    finish(x, x->last_err, x->last_msg);
    return;
  }
  x->tries++;
  x->reported = 0;
  x->retry_elsewhere = 0;
  if (!s) {
    x->server = NULL;
    finish(x, GW_ESTATE, "no healthy server");
    return;
  }
  x->server = s;
  s->active++;
  s->requests++;
  x->got_bytes = 0;
  x->started_ns = uv_hrtime();
  x->started_ms = x->started_ns / 1000000;
  gw_http1c_init(&x->parser, x->head_request, on_body, x);
  serialise(x);
  gw_uconn_t *uc = pool_get(s);
  if (uc) {
    uc->x = x;
    uc->exchanges++;
    x->uc = uc;
    send_request(x);
    return;
  }
  uc = uconn_new(x);
  uc->x = x;
  uc->exchanges = 1;
  x->uc = uc;
  x->state = GW_X_CONNECTING;
  arm(x, x->up->t_connect);
  int rc = uv_tcp_connect(&uc->connect_req, &uc->tcp, (const struct sockaddr *)&s->sa, on_connect);
  if (rc != 0) fail(x, rc, "connect failed");
}

/* A first try that fails before any I/O (no healthy server) is reported
 * on the next loop turn: on_done must never run inside gw_exchange_start,
 * whose caller (a Lua wrapper) has not yielded yet. */
static void on_deferred_start(uv_timer_t *t) {
  gw_exchange_t *x = t->data;
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  x->deferred = NULL;
  if (x->deferred_err) fail(x, x->deferred_err, x->deferred_fail);
  else if (x->deferred_msg) finish(x, GW_ESTATE, x->deferred_msg);
  else start_try(x);
}

static void defer(gw_exchange_t *x) {
  x->deferred = gw_xmalloc(sizeof *x->deferred);
  uv_timer_init(gw__worker->loop, x->deferred);
  x->deferred->data = x;
  uv_timer_start(x->deferred, on_deferred_start, 0, 0);
}

int gw_exchange_start(gw_exchange_t *x) {
  if (!gw__worker) return GW_ESTATE;
  x->tries = 0;
  x->state = GW_X_CONNECTING;
  int probe = 0;
  if (!x->fixed_server && !gw_upstream_breaker_allow(x->up, &probe)) x->deferred_msg = "breaker open";
  x->probe = (uint8_t)probe;
  if (x->deferred_msg || (!x->fixed_server && !gw_balancer_any_usable(x->up, gw_now_ms()))) {
    defer(x);
    return 0;
  }
  x->state = GW_X_IDLE;
  x->starting = 1;
  start_try(x);
  x->starting = 0;
  return 0;
}

void gw_exchange_tunnel(gw_exchange_t *x) {
  x->tunnel = 1;
  x->stream_body = 1;
  x->stream_length = 0; /* raw: no chunk framing */
  x->head_sent = 1;
  x->idempotent = 0;
  if (x->uc) uc_clear(x->uc);
}

static void on_tunnel_shutdown(uv_shutdown_t *req, int status) { free(req); }

void gw_exchange_shutdown_write(gw_exchange_t *x) {
  if (!x->uc || x->state == GW_X_DONE) return;
  if (x->uc->tls) {
    /* TLS: close_notify goes out behind the last bytes, then the FIN. */
    gw_tls_shutdown(x->uc->tls);
    tls_send(x->uc, NULL, 0, W_TLS, 0, 1);
  }
  uv_shutdown_t *req = gw_xmalloc(sizeof *req);
  if (uv_shutdown(req, (uv_stream_t *)&x->uc->tcp, on_tunnel_shutdown) != 0) free(req);
}

void gw_exchange_resume(gw_exchange_t *x) {
  if (!x->paused) return;
  x->paused = 0;
  if (x->tunnel) {
    if (x->uc && !x->in_callback) read_resume(x->uc);
    return;
  }
  if (x->in_callback) return; /* the parser is running: it goes on by itself */
  gw_uconn_t *uc = x->uc;
  if (!uc || x->state == GW_X_DONE) return;
  parse(x);
  if (uc->x == x && !x->paused) {
    read_resume(uc);
    arm(x, read_timeout(x));
    take_tls_end(uc);
  }
}

int gw_exchange_abort(gw_exchange_t *x) {
  if (x->probe) {
    /* An abandoned half-open probe proves nothing: the breaker opens again
     * for its cooldown instead of waiting for a verdict that never comes. */
    gw_upstream_breaker_report(x->up, 0, 1);
    x->probe = 0;
  }
  if (x->deferred) {
    uv_close((uv_handle_t *)x->deferred, (uv_close_cb)free);
    x->deferred = NULL;
    /* A failure waiting for its turn (fail() while starting) left its
     * connection attached, with its connect timer running: it goes now,
     * else that timer would find this exchange freed. */
    gw_uconn_t *uc = x->uc;
    if (uc) {
      x->uc = NULL;
      if (x->server) x->server->active--;
      uconn_close(uc);
    }
    x->state = GW_X_DONE;
  }
  if (x->state != GW_X_DONE && x->state != GW_X_IDLE) {
    gw_uconn_t *uc = x->uc;
    x->uc = NULL;
    if (x->server) x->server->active--;
    x->state = GW_X_DONE;
    if (uc) uconn_close(uc);
  }
  if (!x->in_callback) return 0;
  x->abort_pending = 1;
  return 1;
}

/* After a callback: if it aborted the exchange, hand it back to its owner
 * and stop touching it. */
static int aborted(gw_exchange_t *x) {
  if (!x->abort_pending) return 0;
  if (x->ops->on_aborted) x->ops->on_aborted(x);
  return 1;
}

void gw_exchange_release(gw_exchange_t *x) {
  free(x->method);
  free(x->target);
  x->method = x->target = NULL;
  gw_buf_free(&x->header_lines);
  gw_buf_free(&x->body);
  gw_buf_free(&x->out);
  gw_buf_free(&x->body_q);
  gw_http1c_free(&x->parser);
  free(x->hash_key);
  x->hash_key = NULL;
}

/* ---- TLS (https:// servers) ---- */

/* Encrypts `n` plaintext bytes (none: only what the TLS state has queued
 * itself, handshake messages or an alert) and writes the records. With
 * `direct`, the socket takes what it can at once (uv_try_write never jumps
 * queued writes); the rest is copied into a write of `kind`, whose
 * on_written accounts `counted` plaintext bytes, as for a plain body.
 * Returns 1 when everything went at once, 0 when a write is queued, or a
 * negative error (GW_ETLS: the TLS state has failed). */
static int tls_send(gw_uconn_t *uc, const char *p, size_t n, int kind, size_t counted, int direct) {
  if (n > 0 && gw_tls_write(uc->tls, p, n) != 0) return GW_ETLS;
  const char *c;
  size_t len = gw_tls_pending(uc->tls, &c);
  size_t done = 0;
  if (direct && len > 0) {
    uv_buf_t b = uv_buf_init((char *)c, (unsigned)len);
    int rc = uv_try_write((uv_stream_t *)&uc->tcp, &b, 1);
    if (rc > 0) done = (size_t)rc;
  }
  if (done == len) {
    gw_tls_drained(uc->tls);
    return 1;
  }
  uwrite_t *w = gw_xmalloc(sizeof *w + (len - done));
  w->head = kind;
  w->len = counted;
  memcpy(w->data, c + done, len - done);
  gw_tls_drained(uc->tls);
  if (write_to(uc, w, w->data, len - done) != 0) {
    free(w);
    return UV_EPIPE;
  }
  return 0;
}

/* The TCP connection is up: start the handshake. The request follows once
 * it completes (tls_read), within the connect timeout again. */
static void tls_start(gw_exchange_t *x) {
  gw_uconn_t *uc = x->uc;
  gw_upstream_t *up = x->up;
  gw_server_t *s = x->server;
  /* SNI: tls.sni, else the host name; never an address (RFC 6066 3). The
   * certificate must be valid for the same name, or for the address. */
  const char *name = up->tls_sni ? up->tls_sni : s->host;
  const char *sni = up->tls_sni ? up->tls_sni : s->ip_literal ? NULL : s->host;
  uc->tls = up->tls_ctx ? gw_tls_client_new(up->tls_ctx, sni, name, &s->tls_resume) : NULL;
  if (!uc->tls) {
    fail(x, GW_ETLS, "upstream TLS handshake failed");
    return;
  }
  uc->tls_gen = up->tls_gen;
  x->state = GW_X_HANDSHAKE;
  arm(x, up->t_connect);
  read_resume(uc);
  int rc = gw_tls_connect(uc->tls);
  if (rc == 0) rc = tls_send(uc, NULL, 0, W_TLS, 0, 1);
  if (rc < 0) fail(x, rc, rc == GW_ETLS ? "upstream TLS handshake failed" : "upstream write failed");
}

/* The TLS state failed (a handshake refused, a bad record): log why, with
 * the server, and fail the exchange like any transport error (retries and
 * passive health included). */
static void tls_failed(gw_uconn_t *uc, int in_handshake) {
  gw_exchange_t *x = uc->x;
  const char *why = gw_tls_verify_error(uc->tls);
  /* A session whose resumption failed is not offered again. */
  if (in_handshake) gw_tls_resume_clear(&uc->server->tls_resume);
  if (!x) {
    gw_log_debug("upstream %s: server %s: idle TLS connection: %s", uc->up->name, uc->server->addr,
                 gw_tls_error(uc->tls));
    uconn_close(uc);
    return;
  }
  if (why)
    gw_log_error("upstream %s: server %s: TLS certificate verify failed: %s", uc->up->name, uc->server->addr,
                 why);
  else
    gw_log_error("upstream %s: server %s: TLS %s failed: %s", uc->up->name, uc->server->addr,
                 in_handshake ? "handshake" : "record", gw_tls_error(uc->tls));
  fail(x, GW_ETLS,
       why            ? "upstream certificate verify failed"
       : in_handshake ? "upstream TLS handshake failed"
                      : "upstream TLS failed");
}

/* The `nread` bytes just read at the end of rbuf are ciphertext: decrypts
 * them into the same place (rbuf.len does not move here) and returns the
 * plaintext length, 0 when there is none (handshake messages, tickets), or
 * UV_EOF for the server's close_notify. Sends what the TLS state answers,
 * and the request once the handshake completes. The exchange may have
 * ended on return (a failure): the caller checks uc->closing. */
static ssize_t tls_read(gw_uconn_t *uc, ssize_t nread) {
  size_t len = uc->rbuf.len;
  int was_ready = gw_tls_ready(uc->tls);
  ssize_t rc = gw_tls_read(uc->tls, uc->rbuf.base + len, (size_t)nread, &uc->rbuf);
  uc->rbuf.len = len;
  int wrc = tls_send(uc, NULL, 0, W_TLS, 0, 1); /* the next flight, or an alert */
  if (rc == GW_ETLS) {
    tls_failed(uc, !was_ready);
    return 0;
  }
  gw_exchange_t *x = uc->x;
  if (wrc < 0) {
    if (x) fail(x, wrc, "upstream write failed");
    else uconn_close(uc);
    return 0;
  }
  if (!was_ready && gw_tls_ready(uc->tls) && x && x->state == GW_X_HANDSHAKE) send_request(x);
  return rc;
}

static void tls_flush_body(gw_exchange_t *x) {
  size_t n = x->body_q.len;
  x->body_writing = 1;
  if (x->body_end_queued) x->body_done_sent = 1;
  int rc = tls_send(x->uc, x->body_q.base, n, W_BODY, n, 0);
  x->body_q.len = 0;
  if (rc < 0) fail(x, UV_EPIPE, "upstream write failed");
}

/* Closing: a close_notify if the socket takes it now (best effort: the
 * connection is going whatever happens). The shutdown also keeps the
 * server's session resumable: OpenSSL marks the session of an SSL freed
 * without one (after a failure, say) as not to be resumed. */
static void tls_close_notify(gw_uconn_t *uc) {
  if (!gw_tls_ready(uc->tls)) return;
  gw_tls_shutdown(uc->tls);
  const char *p;
  size_t n = gw_tls_pending(uc->tls, &p);
  if (n > 0) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    uv_try_write((uv_stream_t *)&uc->tcp, &b, 1);
  }
  gw_tls_drained(uc->tls);
}
