/*
 * proxy.c: up:proxy (see proxy.h) and its FFI functions.
 *
 * Framing towards the client: an upstream body with a Content-Length keeps
 * it and is copied through as is; a chunked or close-delimited body is sent
 * chunked to an HTTP/1.1 client, and close-delimited to an HTTP/1.0 one.
 * If the upstream fails in the middle of a body, the client connection is
 * closed: after a partial body there is no honest way to answer.
 */
#include "proxy.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "errors.h"
#include "ffi.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "worker.h"

int gw__exchange_add_lines(gw_exchange_t *x, const char *lines, size_t len);

static void free_proxy(gw_proxy_t *p);
static int named_in_connection(const char *name, size_t n, const char *conn, size_t clen);
static int name_in(const char *name, size_t n, const char *lines, size_t llen);
static void answer_direct(gw_proxy_t *p);
static void fail_direct(gw_proxy_t *p);
static void answer_error(gw_req_t *r, const gw_proxy_t *p);
static void answer_head(gw_proxy_t *p, gw_req_t *r);

static int push_head(lua_State *L, void *arg) {
  gw_proxy_t *p = arg;
  if (p->err) {
    lua_pushnil(L);
    lua_pushstring(L, p->msg ? p->msg : gw_strerror(p->err));
    return 2;
  }
  /* Only the status: the headers are read on demand (gw_ffi_proxy_header_at)
   * from the copy on_head made, and most handlers never look. */
  lua_pushinteger(L, p->x.parser.status);
  return 1;
}

static int push_body(lua_State *L, void *arg) {
  gw_proxy_t *p = arg;
  if (p->err) {
    lua_pushnil(L);
    lua_pushstring(L, p->msg ? p->msg : gw_strerror(p->err));
    return 2;
  }
  lua_pushlstring(L, p->body.base ? p->body.base : "", p->body.len);
  return 1;
}

static void wake(gw_proxy_t *p, gw_push_cb push) {
  if (!p->waiting) return;
  p->waiting = 0;
  gw_waiter_wake(&p->w, push, p);
}

/* ---- exchange callbacks ---- */

static int on_head(gw_exchange_t *x) {
  gw_proxy_t *p = x->data;
  p->state = GW_PROXY_HEAD_READY;
  /* The head's bytes live in the upstream connection's buffer, which a
   * body-less answer hands back to the pool at once: keep a copy. */
  p->head.len = 0;
  gw_buf_append(&p->head, x->resp_base, x->parser.head_end);
  if (p->direct) {
    answer_direct(p);
    return p->state == GW_PROXY_HEAD_READY;
  }
  wake(p, push_head);
  /* Lua may have decided already, inside the wake (the usual case: the
   * handler returns the response at once). Otherwise hold the body. */
  return p->state == GW_PROXY_HEAD_READY;
}

static void write_chunk(gw_req_t *r, const char *data, size_t n) {
  char size[24];
  int len = snprintf(size, sizeof size, "%zx\r\n", n);
  uv_buf_t bufs[3] = {uv_buf_init(size, (unsigned)len), uv_buf_init((char *)data, (unsigned)n),
                      uv_buf_init("\r\n", 2)};
  gw_response_flush_head(r, bufs, 3);
}

/* The upstream's body ended: the last chunk if the client gets chunks, and
 * the head if it is still held (an empty body: the head alone). */
static void end_body(gw_proxy_t *p, gw_req_t *r) {
  if (p->chunked_out) {
    uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
    gw_response_flush_head(r, &b, 1);
  }
  gw_response_flush_head(r, NULL, 0);
}

static int on_body(gw_exchange_t *x, const char *data, size_t n) {
  gw_proxy_t *p = x->data;
  if (p->state == GW_PROXY_BUFFERING) {
    if (p->body.len + n > x->up->max_body) return -1;
    gw_buf_append(&p->body, data, n);
    return 0;
  }
  if ((p->state != GW_PROXY_STREAMING && p->state != GW_PROXY_TUNNEL) || n == 0) return 0;
  gw_conn_t *c = p->req->conn;
  p->req->resp_bytes += n;
  /* The head was held back so that it leaves with the first body bytes. */
  if (p->chunked_out && p->state == GW_PROXY_STREAMING) {
    write_chunk(p->req, data, n);
  } else {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    gw_response_flush_head(p->req, &b, 1);
  }
  if (c->write_bytes_pending > GW_PROXY_HIGH_WATER) {
    p->client_paused = 1;
    return 1;
  }
  return 0;
}

static void on_done(gw_exchange_t *x, int err, const char *msg) {
  gw_proxy_t *p = x->data;
  gw_proxy_state_t was = p->state;
  if (was == GW_PROXY_HEAD_READY && !err) {
    /* An answer without body bytes (HEAD, 204, 304, a zero length) ended
     * while its head waited for a decision: the head stays usable, and
     * whoever takes it finds nothing more to stream (p->ended). */
    p->ended = 1;
    return;
  }
  p->state = GW_PROXY_DONE;
  p->err = err;
  p->msg = msg;
  switch (was) {
    case GW_PROXY_WAIT_HEAD:
      if (p->direct) fail_direct(p);
      else wake(p, push_head);
      break;
    case GW_PROXY_BUFFERING: wake(p, push_body); break;
    case GW_PROXY_STREAMING: {
      gw_req_t *r = p->req;
      if (!r) break;
      gw_conn_t *c = r->conn;
      if (err && r->head_held) {
        /* Nothing reached the client yet: it can still get an honest 502. */
        r->head_held = 0;
        r->resp_state = GW_RESP_NONE;
        r->close_after = 1;
        gw_response_error(r, 502, "upstream failed before the body");
      } else if (err) {
        gw_log_warn("proxy: upstream %s failed mid-body: %s", x->up->name, msg ? msg : gw_strerror(err));
        r->close_after = 1;
      }
      if (err) gw_response_flush_head(r, NULL, 0);
      else end_body(p, r);
      /* The handler finished long ago; the request ends now. */
      if (!r->task) gw_conn_request_done(c);
      break;
    }
    case GW_PROXY_TUNNEL: {
      /* The server ended its side: the connection to the client ends too
       * (close_after shuts our write side once queued bytes are out). */
      gw_req_t *r = p->req;
      if (!r) break;
      r->close_after = 1;
      if (!r->task) gw_conn_request_done(r->conn);
      break;
    }
    default: break;
  }
}

/* The upstream took the queued client body: let the client send more. */
static void on_drain(gw_exchange_t *x) {
  gw_proxy_t *p = x->data;
  if (p->client_body_paused && p->req && p->req->conn) {
    p->client_body_paused = 0;
    if (p->state == GW_PROXY_TUNNEL) gw_conn_tunnel_resume(p->req->conn);
    else gw_conn_resume_body(p->req->conn);
  }
}

/* Bytes from the client of a tunnel (n < 0: its EOF or an error). */
static int client_tunnel_sink(void *data, const char *bytes, ssize_t n) {
  gw_proxy_t *p = data;
  if (n < 0 && n != UV_EOF && p->req) {
    /* A reset or a read error is no half-close: the client is gone, and
     * the tunnel (two sockets, no timeouts) would stay until the upstream
     * closed. Closing the connection frees the request and its proxy. */
    gw_conn_close(p->req->conn);
    return 1;
  }
  if (n < 0) {
    p->client_eof = 1;
    gw_exchange_shutdown_write(&p->x);
    return 0;
  }
  if (gw_exchange_write_body(&p->x, bytes, (size_t)n) > GW_PROXY_HIGH_WATER) {
    p->client_body_paused = 1;
    return 1;
  }
  return 0;
}

static void on_aborted(gw_exchange_t *x) { free_proxy(x->data); }

static const gw_exchange_ops_t proxy_ops = {on_head, on_body, on_done, on_drain, on_aborted};

/* The client's body, as the connection decodes it (gw_conn_stream_body). */
static int client_body_sink(void *data, const char *bytes, size_t n, int end) {
  gw_proxy_t *p = data;
  if (end > 0) {
    gw_exchange_end_body(&p->x);
    return 0;
  }
  if (end < 0) {
    /* The client's body broke off: the upstream request cannot be finished. */
    if (p->state == GW_PROXY_WAIT_HEAD) {
      p->state = GW_PROXY_DONE;
      p->err = GW_EPARSE;
      p->msg = "the client body failed";
      if (!gw_exchange_abort(&p->x)) wake(p, push_head);
    }
    return 0;
  }
  if (gw_exchange_write_body(&p->x, bytes, n) > GW_PROXY_HIGH_WATER) {
    p->client_body_paused = 1;
    return 1;
  }
  return 0;
}

static void cancel_wait(gw_waiter_t *w) {
  /* The task ended while waiting; the request still owns the proxy. */
  ((gw_proxy_t *)w)->waiting = 0;
}

static void free_proxy(gw_proxy_t *p) {
  gw_exchange_release(&p->x);
  gw_buf_free(&p->extra);
  gw_buf_free(&p->body);
  gw_buf_free(&p->head);
  free(p);
}

void gw_proxy_destroy(gw_proxy_t *p) {
  p->req = NULL;
  /* From inside one of the exchange's own callbacks the client still uses
   * it: on_aborted frees it when the client is done. */
  if (!gw_exchange_abort(&p->x)) free_proxy(p);
}

void gw_proxy_client_drained(gw_proxy_t *p) {
  if (!p->client_paused) return;
  p->client_paused = 0;
  gw_exchange_resume(&p->x);
}

int gw_proxy_streaming(const gw_proxy_t *p) {
  return p && (p->state == GW_PROXY_STREAMING || p->state == GW_PROXY_TUNNEL);
}

int gw_proxy_owns_request(const gw_proxy_t *p) {
  return gw_proxy_streaming(p) || (p && p->direct && p->state == GW_PROXY_WAIT_HEAD);
}

/* ---- building the upstream request ---- */

static int name_in(const char *name, size_t n, const char *lines, size_t llen) {
  /* Is there a line "name:" in the caller's override block? */
  const char *p = lines, *end = lines + llen;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    if ((size_t)(eol - p) > n && p[n] == ':' && strncasecmp(p, name, n) == 0) return 1;
    p = eol + 1;
  }
  return 0;
}

/* Is `name` one of the comma-separated tokens of a Connection value? Those
 * headers are hop-by-hop too (RFC 9110 7.6.1). */
static int named_in_connection(const char *name, size_t n, const char *conn, size_t clen) {
  const char *p = conn, *end = conn + clen;
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
    const char *t = p;
    while (p < end && *p != ',' && *p != ' ' && *p != '\t') p++;
    if ((size_t)(p - t) == n && strncasecmp(t, name, n) == 0) return 1;
  }
  return 0;
}

/* Does the client's Connection header make `name` hop-by-hop, so that it is
 * not forwarded (RFC 9110 7.6.1)? It drops only the client's own values: a
 * header a script wrote is the gateway's (an auth middleware's X-Consumer,
 * say), and a client must not be able to strip it. Host is never dropped:
 * it names the resource, it is no connection option, and without it the
 * upstream would get its own address instead of the client's Host. */
static int dropped_by_connection(const gw_req_t *r, const char *name, size_t n, const char *conn,
                                 size_t clen) {
  if (!conn || !named_in_connection(name, n, conn, clen)) return 0;
  if (n == 4 && strncasecmp(name, "host", 4) == 0) return 0;
  return gw_req_header_edit(r, name, n) == NULL; /* a script's header stays */
}

/* X-Forwarded-For, -Proto and -Host: written once, at the end. */
static int forwarded(const char *name, size_t len) {
  return len >= 15 && len <= 17 && strncasecmp(name, "x-forwarded-", 12) == 0 &&
         ((len == 15 && strncasecmp(name + 12, "for", 3) == 0) ||
          (len == 17 && strncasecmp(name + 12, "proto", 5) == 0) ||
          (len == 16 && strncasecmp(name + 12, "host", 4) == 0));
}

/* X-Forwarded-NAME: a script's value (or none, if it removed the header),
 * else the gateway's own; never also the client's (two fields, and a
 * plain-HTTP client's "https" first, where most frameworks read). */
static void add_forwarded(gw_exchange_t *x, gw_req_t *r, const char *name, size_t len, const char *own,
                          size_t own_len, const char *lines, size_t llen) {
  if (name_in(name, len, lines, llen)) return;
  const gw_header_edit_t *e = gw_req_header_edit(r, name, len);
  if (e && !e->value) return;
  if (e) gw_exchange_add_header(x, name, len, e->value, e->value_len);
  else if (own) gw_exchange_add_header(x, name, len, own, own_len);
}

static void add_client_headers(gw_exchange_t *x, gw_req_t *r, const char *lines, size_t llen) {
  const char *buf = gw_req_buffer(r);
  size_t clen = 0;
  /* The client's own Connection: a script's edit of it changes nothing of
   * what the client named as hop-by-hop. */
  const char *conn = gw_req_header_client(r, "connection", 10, &clen);
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const gw_header_t *h = &r->headers[i];
    const char *name = buf + h->name_off;
    if (name_in(name, h->name_len, lines, llen)) continue;
    if (dropped_by_connection(r, name, h->name_len, conn, clen)) continue;
    if (forwarded(name, h->name_len)) continue;
    size_t vlen;
    /* Through gw_req_header so that script edits win (and removals vanish). */
    const char *v = gw_req_header(r, name, h->name_len, &vlen);
    if (!v) continue;
    int dup = 0; /* a name repeated in the request was joined: send it once */
    for (uint32_t k = 0; k < i; k++)
      if (r->headers[k].name_len == h->name_len &&
          strncasecmp(buf + r->headers[k].name_off, name, h->name_len) == 0)
        dup = 1;
    if (!dup) gw_exchange_add_header(x, name, h->name_len, v, vlen);
  }
  for (const gw_header_edit_t *e = r->edits; e; e = e->next) {
    if (!e->value || name_in(e->name, e->name_len, lines, llen) || forwarded(e->name, e->name_len)) continue;
    int original = 0, newest = 1;
    for (uint32_t i = 0; i < r->nheaders; i++)
      if (r->headers[i].name_len == e->name_len &&
          strncasecmp(buf + r->headers[i].name_off, e->name, e->name_len) == 0)
        original = 1;
    for (const gw_header_edit_t *o = r->edits; o != e; o = o->next)
      if (o->name_len == e->name_len && memcmp(o->name, e->name, e->name_len) == 0) newest = 0;
    if (!original && newest) gw_exchange_add_header(x, e->name, e->name_len, e->value, e->value_len);
  }
  /* X-Forwarded-For: the client's chain plus the client itself. */
  size_t flen = 0;
  const char *fwd = dropped_by_connection(r, "x-forwarded-for", 15, conn, clen)
                        ? NULL
                        : gw_req_header(r, "x-forwarded-for", 15, &flen);
  gw_buf_t v;
  gw_buf_init(&v);
  if (fwd) {
    gw_buf_append(&v, fwd, flen);
    gw_buf_append(&v, ", ", 2);
  }
  gw_buf_append_str(&v, r->conn->ip);
  if (!name_in("x-forwarded-for", 15, lines, llen))
    gw_exchange_add_header(x, "X-Forwarded-For", 15, v.base, v.len);
  gw_buf_free(&v);
  int tls = r->conn->tls != NULL;
  add_forwarded(x, r, "X-Forwarded-Proto", 17, tls ? "https" : "http", tls ? 5u : 4u, lines, llen);
  size_t hlen = 0;
  const char *host = gw_req_header(r, "host", 4, &hlen);
  add_forwarded(x, r, "X-Forwarded-Host", 16, host, hlen, lines, llen);
}

/* Builds the upstream request for `r` and hands it to a new proxy, which
 * `r` then owns. Returns it, or NULL with *err set (nothing started). The
 * caller starts the exchange (start_proxy) once its wait is set up. */
static gw_proxy_t *proxy_begin(gw_req_t *r, gw_upstream_t *up, const char *target, size_t tlen,
                               const char *lines, size_t llen, const char *key, size_t klen,
                               const char **err) {
  if (r->resp_state != GW_RESP_NONE) {
    *err = "the response was already sent";
    return NULL;
  }
  if (r->proxy) {
    gw_proxy_destroy(r->proxy);
    r->proxy = NULL;
  }
  gw_proxy_t *p = gw_xcalloc(1, sizeof *p);
  p->req = r;
  p->x.up = up;
  p->x.ops = &proxy_ops;
  p->x.data = p;
  const char *method = llhttp_method_name((llhttp_method_t)r->method);
  if (!target) {
    /* The client's own target, as it came. */
    target = gw_req_buffer(r) + r->url_off;
    tlen = r->url_len;
  }
  if (gw_exchange_set_request(&p->x, method, strlen(method), target, tlen) != 0) {
    gw_proxy_destroy(p);
    *err = "invalid path (a space, CR, LF or another control byte)";
    return NULL;
  }
  if (gw__exchange_add_lines(&p->x, lines, llen) != 0) {
    gw_proxy_destroy(p);
    *err = "invalid request header (CR, LF or a bad name)";
    return NULL;
  }
  add_client_headers(&p->x, r, lines, llen);
  if (r->upgrade) {
    /* Upgrade and Connection are hop-by-hop, but an upgrade asks the next
     * hop for the same switch: forward them explicitly. */
    size_t ulen = 0;
    const char *up_value = gw_req_header(r, "upgrade", 7, &ulen);
    if (up_value) {
      gw_exchange_add_line(&p->x, "Upgrade", 7, up_value, ulen);
      gw_exchange_add_line(&p->x, "Connection", 10, "Upgrade", 7);
    }
  }
  int has_body = r->content_length > 0 || r->chunked;
  if (has_body && r->body_state == GW_BODY_DONE) {
    gw_exchange_set_body(&p->x, r->body.base ? r->body.base : "", r->body.len);
  } else if (has_body && r->body_state == GW_BODY_UNREAD) {
    /* Not read by the script: stream it, with the client's own framing. */
    p->x.stream_body = 1;
    p->x.stream_length = r->chunked ? -1 : (int64_t)r->content_length;
    p->x.idempotent = 0;
  }
  if (klen) {
    p->x.hash_key = gw_xstrndup(key, klen);
    p->x.hash_key_len = klen;
  }
  r->proxy = p;
  return p;
}

static void start_proxy(gw_proxy_t *p) {
  int stream = p->x.stream_body;
  gw_exchange_start(&p->x);
  if (stream && p->req) gw_conn_stream_body(p->req->conn, client_body_sink, p);
}

GW_FFI_EXPORT int gw_ffi_upstream_proxy(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs,
                                        gw_upstream_t *up, const char *target, size_t tlen, const char *lines,
                                        size_t llen, const char *key, size_t klen, uint32_t *wait_id,
                                        const char **err) {
  if (!gw_task_check(t, ts) || !gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = proxy_begin(r, up, target, tlen, lines, llen, key, klen, err);
  if (!p) return GW_FFI_ERROR;
  /* start_proxy parses the client's body bytes already buffered, and a
   * broken chunk among them ends the proxy right there, inside this call.
   * The coroutine that would be woken is the one running it, and a running
   * coroutine cannot be resumed: so the wait is registered only after, and
   * such a failure is returned now (OK with *err: `nil, err` in Lua). */
  start_proxy(p);
  if (p->state == GW_PROXY_DONE) {
    *err = p->msg ? p->msg : gw_strerror(p->err);
    return GW_FFI_OK;
  }
  p->w.cancel = cancel_wait;
  gw_waiter_add(t, &p->w);
  p->waiting = 1;
  *wait_id = p->w.id;
  return GW_FFI_AGAIN;
}

/* A route whose handler is exactly `return UP:proxy(req)` (upstream.lua
 * recognises it). Nothing the handler does needs the head, so its task does
 * not wait for it:
 *   - `answer` = 1, a route without middleware: nothing in Lua looks at the
 *     answer, so C answers when the head comes (answer_direct), saving a
 *     resume of Lua per request;
 *   - `answer` = 0, a route with middleware: the proxy runs deferred, with no
 *     one waiting; a middleware that looks at the response waits then
 *     (gw_ffi_proxy_await), and one that returns it unseen hands it to C
 *     (gw_ffi_proxy_commit), which answers as in the first case.
 * Requests with a body or an upgrade take the ordinary path: GW_FFI_DECLINED. */
GW_FFI_EXPORT int gw_ffi_upstream_proxy_direct(gw_req_t *r, uint32_t rs, gw_upstream_t *up, const char *key,
                                               size_t klen, int answer, const char **err) {
  if (!gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  if (r->content_length > 0 || r->chunked || r->upgrade) return GW_FFI_DECLINED;
  gw_proxy_t *p = proxy_begin(r, up, NULL, 0, "", 0, key, klen, err);
  if (!p) return GW_FFI_ERROR;
  p->direct = (uint8_t)(answer != 0);
  start_proxy(p);
  /* A failure found at once (no healthy server, an open breaker) arrives
   * while this task still runs: answer it here, the request ends with it. */
  if (p->direct && p->state == GW_PROXY_DONE) answer_error(r, p);
  p->direct_started = p->direct;
  return GW_FFI_OK;
}

/* A deferred proxy's response is looked at: its status now (GW_FFI_OK), a
 * wait for the head (GW_FFI_AGAIN, then the ordinary (status) or (nil, err)
 * results), or its failure (GW_FFI_ERROR, *err the upstream error). */
GW_FFI_EXPORT int gw_ffi_proxy_await(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs, uint32_t *wait_id,
                                     int *status, const char **err) {
  if (!gw_task_check(t, ts) || !gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = r->proxy;
  if (!p || p->direct || p->waiting) {
    *err = "the proxied response is no longer available";
    return GW_FFI_ERROR;
  }
  switch (p->state) {
    case GW_PROXY_HEAD_READY: *status = p->x.parser.status; return GW_FFI_OK;
    case GW_PROXY_DONE: *err = p->msg ? p->msg : gw_strerror(p->err); return GW_FFI_ERROR;
    case GW_PROXY_WAIT_HEAD:
      p->w.cancel = cancel_wait;
      gw_waiter_add(t, &p->w);
      p->waiting = 1;
      *wait_id = p->w.id;
      return GW_FFI_AGAIN;
    default: *err = "the proxied response is no longer available"; return GW_FFI_ERROR;
  }
}

/* A deferred proxy's response is returned unseen: C answers it, now if the
 * head (or a failure) is in, else when it comes. The task is still running,
 * so the request ends when it does (task_done), not here. */
GW_FFI_EXPORT int gw_ffi_proxy_commit(gw_req_t *r, uint32_t rs, const char *lines, size_t llen,
                                      const char **err) {
  if (!gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = r->proxy;
  if (!p || p->direct || p->waiting || r->resp_state != GW_RESP_NONE) {
    *err = "the proxied response is no longer available";
    return GW_FFI_ERROR;
  }
  /* Header lines set on the unseen response (res:set_header), kept for
   * when the head comes: they replace the upstream's of the same name. */
  p->extra.len = 0;
  gw_buf_append(&p->extra, lines, llen);
  switch (p->state) {
    case GW_PROXY_HEAD_READY: answer_head(p, r); return GW_FFI_OK;
    case GW_PROXY_DONE: answer_error(r, p); return GW_FFI_OK;
    case GW_PROXY_WAIT_HEAD:
      p->direct = 1;
      p->direct_started = 1;
      return GW_FFI_OK;
    default: *err = "the proxied response is no longer available"; return GW_FFI_ERROR;
  }
}

/* res:body() on a proxied response: buffers the rest of the body. */
/* res:body() on a proxied response: buffers the rest of the body. Resuming
 * the exchange may finish it at once (an answer with no body bytes left):
 * then the body is returned now (GW_FFI_OK, *body and *blen), else Lua
 * waits for it (GW_FFI_AGAIN). The wait is registered only after the
 * resume, so a synchronous end never wakes the running coroutine. */
GW_FFI_EXPORT int gw_ffi_proxy_read_body(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs,
                                         uint32_t *wait_id, const char **body, size_t *blen,
                                         const char **err) {
  if (!gw_task_check(t, ts) || !gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = r->proxy;
  if (!p || p->waiting || (p->state != GW_PROXY_HEAD_READY)) {
    *err = "the proxied body is no longer available";
    return GW_FFI_ERROR;
  }
  if (!p->ended) {
    p->state = GW_PROXY_BUFFERING;
    gw_exchange_resume(&p->x);
    if (p->state == GW_PROXY_BUFFERING) {
      gw_waiter_add(t, &p->w);
      p->waiting = 1;
      *wait_id = p->w.id;
      return GW_FFI_AGAIN;
    }
    if (p->err) {
      *err = p->msg ? p->msg : gw_strerror(p->err);
      return GW_FFI_ERROR;
    }
  }
  *body = p->body.base ? p->body.base : "";
  *blen = p->body.len;
  return GW_FFI_OK;
}

/* Sends the proxied response with the status and header lines Lua gives,
 * then streams the body. */
/* Hop-by-hop headers (and the Date and framing ours replace) never pass. */
static int end_to_end(const char *name, size_t n, const char *conn, size_t clen) {
  /* Lengths first: this runs for every header of every proxied answer. */
#define HOP(s) \
  { s, sizeof s - 1 }
  static const struct {
    const char *name;
    size_t len;
  } hop[] = {HOP("connection"),       HOP("keep-alive"),        HOP("te"),
             HOP("trailer"),          HOP("transfer-encoding"), HOP("upgrade"),
             HOP("proxy-connection"), HOP("content-length"),    HOP("date")};
#undef HOP
  for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
    if (hop[i].len == n && strncasecmp(hop[i].name, name, n) == 0) return 0;
  return !(conn && named_in_connection(name, n, conn, clen));
}

/* Adds the upstream's own end-to-end headers to the response head. */
static void copy_upstream_headers(gw_proxy_t *p, gw_req_t *r, const char *lines, size_t llen) {
  const gw_http1c_t *hp = &p->x.parser;
  const char *base = p->head.base;
  const char *conn = NULL;
  size_t clen = 0;
  for (uint32_t i = 0; i < hp->nheaders; i++)
    if (hp->headers[i].name_len == 10 && strncasecmp(base + hp->headers[i].name_off, "connection", 10) == 0) {
      conn = base + hp->headers[i].value_off;
      clen = hp->headers[i].value_len;
    }
  for (uint32_t i = 0; i < hp->nheaders; i++) {
    const gw_header_t *h = &hp->headers[i];
    if (!end_to_end(base + h->name_off, h->name_len, conn, clen)) continue;
    /* A header the script set (res:set_header) replaces the upstream's. */
    if (llen && name_in(base + h->name_off, h->name_len, lines, llen)) continue;
    gw_response_header(r, base + h->name_off, h->name_len, base + h->value_off, h->value_len);
  }
}

/* The i-th header of the proxied response head (0-based), for Lua's
 * res.headers. GW_FFI_DECLINED past the end. */
GW_FFI_EXPORT int gw_ffi_proxy_header_at(gw_req_t *r, uint32_t rs, int i, const char **name, size_t *nlen,
                                         const char **value, size_t *vlen) {
  if (!gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = r->proxy;
  if (!p || !p->head.base || i < 0 || (uint32_t)i >= p->x.parser.nheaders) return GW_FFI_DECLINED;
  const gw_header_t *h = &p->x.parser.headers[i];
  *name = p->head.base + h->name_off;
  *nlen = h->name_len;
  *value = p->head.base + h->value_off;
  *vlen = h->value_len;
  return GW_FFI_OK;
}

/* The request's body length for up:proxy's choice between reading it first
 * and streaming it: the Content-Length, 0 without a body, -1 if chunked. */
GW_FFI_EXPORT int64_t gw_ffi_req_body_length(gw_req_t *r, uint32_t rs) {
  if (!gw_req_check(r, rs)) return 0;
  return r->chunked ? -1 : (int64_t)r->content_length;
}

/* Sends the head of `p`'s answer with `status` and the header lines given
 * (plus the upstream's own if `upstream_headers`), then lets the body flow.
 * Returns GW_FFI_OK or GW_FFI_ERROR with *err set. */
static int send_head(gw_proxy_t *p, gw_req_t *r, int status, const char *lines, size_t llen,
                     int upstream_headers, const char **err) {
  if (gw_response_start(r, status) != 0) {
    *err = "a response was already sent";
    return GW_FFI_ERROR;
  }
  const char *bad = gw_response_header_lines(r, lines, llen);
  if (bad) {
    *err = bad;
    return GW_FFI_ERROR;
  }
  if (upstream_headers) copy_upstream_headers(p, r, lines, llen);
  gw_http1c_t *hp = &p->x.parser;
  if (status == 101) {
    if (!r->upgrade) {
      *err = "101 for a request that asked for no upgrade";
      return GW_FFI_ERROR;
    }
    /* A script may change the status of a proxied answer, but a tunnel
     * needs the upstream to have switched too: else the client's bytes
     * would reach a server still reading HTTP. */
    if (hp->status != 101) {
      *err = "101 where the upstream did not switch protocols";
      return GW_FFI_ERROR;
    }
    const char *v = NULL;
    size_t vlen = 0;
    for (uint32_t i = 0; i < hp->nheaders; i++) {
      const gw_header_t *h = &hp->headers[i];
      if (h->name_len == 7 && strncasecmp(p->head.base + h->name_off, "upgrade", 7) == 0) {
        v = p->head.base + h->value_off;
        vlen = h->value_len;
      }
    }
    gw_response_add_raw(r, "Upgrade", v ? v : "", v ? vlen : 0);
    gw_response_add_raw(r, "Connection", "Upgrade", 7);
    gw_response_send_head(r, GW_FRAMING_UPGRADE, 0);
    p->state = GW_PROXY_TUNNEL;
    gw_exchange_tunnel(&p->x);
    gw_conn_tunnel(r->conn, client_tunnel_sink, p);
    return GW_FFI_OK;
  }
  int no_body = status < 200 || status == 204 || status == 304;
  if (no_body) {
    gw_response_send_head(r, GW_FRAMING_NONE, 0);
  } else if (r->method == HTTP_HEAD) {
    /* The upstream's length, when it gave one: a chunked or close-delimited
     * GET has none to announce, and 0 would be a wrong one. */
    gw_response_send_head(r, hp->has_length ? GW_FRAMING_LENGTH : GW_FRAMING_NONE, hp->content_length);
  } else if (hp->has_length) {
    /* Held until the first body bytes (or the end of an empty body). */
    gw_response_hold_head(r, GW_FRAMING_LENGTH, hp->content_length);
  } else if (r->http_minor >= 1) {
    p->chunked_out = 1;
    gw_response_hold_head(r, GW_FRAMING_CHUNKED, 0);
  } else {
    r->close_after = 1;
    gw_response_hold_head(r, GW_FRAMING_CLOSE, 0);
  }
  /* HEAD, 204 and 304 carry no body, whatever the upstream sends. */
  p->state = (no_body || r->method == HTTP_HEAD) ? GW_PROXY_HEAD_READY : GW_PROXY_STREAMING;
  if (p->state == GW_PROXY_STREAMING && p->ended) {
    /* The (empty) body already ended: close the framing now. */
    end_body(p, r);
    p->state = GW_PROXY_DONE;
  } else if (p->state == GW_PROXY_STREAMING) {
    gw_exchange_resume(&p->x);
  }
  return GW_FFI_OK;
}

GW_FFI_EXPORT int gw_ffi_resp_proxy(gw_req_t *r, uint32_t rs, int status, const char *lines, size_t llen,
                                    int upstream_headers, const char **err) {
  if (!gw_req_check(r, rs)) return GW_FFI_BAD_CONTEXT;
  gw_proxy_t *p = r->proxy;
  if (!p || p->state != GW_PROXY_HEAD_READY) {
    *err = "the proxied response is no longer available";
    return GW_FFI_ERROR;
  }
  int rc = send_head(p, r, status, lines, llen, upstream_headers, err);
  if (rc != GW_FFI_OK && upstream_headers && status == 101 && !r->upgrade) {
    /* A returned answer no script looked at: the upstream's unasked 101 is
     * its fault (502), as on the direct path (answer_head), not a script
     * error. */
    r->resp_state = GW_RESP_NONE;
    r->close_after = 1;
    gw_response_error(r, 502, *err);
    return GW_FFI_OK;
  }
  return rc;
}

/* ---- direct proxies (gw_ffi_upstream_proxy_direct) ---- */

/* The handler's task ended long ago (or ends when the current resume
 * returns): when the answer is complete, the request is. */
static void direct_request_done(gw_proxy_t *p) {
  gw_req_t *r = p->req;
  if (r && !r->task && !gw_proxy_streaming(p)) gw_conn_request_done(r->conn);
}

/* Sends the upstream's answer as a handler returning it unchanged would. */
static void answer_head(gw_proxy_t *p, gw_req_t *r) {
  const char *err = NULL;
  if (send_head(p, r, p->x.parser.status, p->extra.base ? p->extra.base : "", p->extra.len, 1, &err) !=
      GW_FFI_OK) {
    /* Only a 101 nobody asked for gets here (requests with an upgrade take
     * the ordinary path). */
    r->resp_state = GW_RESP_NONE;
    r->close_after = 1;
    gw_response_error(r, 502, err);
  }
}

/* The upstream's head is in: answer as the handler would have returned it. */
static void answer_direct(gw_proxy_t *p) {
  gw_req_t *r = p->req;
  if (!r) return;
  answer_head(p, r);
  direct_request_done(p);
}

/* The status of an upstream error a handler returns (nil, err) with: here
 * and, through the FFI, in runtime.lua (handler_result). */
GW_FFI_EXPORT int gw_ffi_upstream_error_status(const char *msg) {
  if (strstr(msg, "timed out") || strcmp(msg, "timeout") == 0) return 504;
  if (strcmp(msg, "no healthy server") == 0 || strcmp(msg, "breaker open") == 0) return 503;
  return 502;
}

/* The JSON error a handler returning (nil, err) gets. */
static void answer_error(gw_req_t *r, const gw_proxy_t *p) {
  const char *msg = p->msg ? p->msg : gw_strerror(p->err);
  gw_response_error_with(r, gw_ffi_upstream_error_status(msg), msg, p->extra.base ? p->extra.base : "",
                         p->extra.len);
}

/* The exchange failed before a head (after gw_ffi_upstream_proxy_direct
 * returned; a failure inside it is answered there). */
static void fail_direct(gw_proxy_t *p) {
  gw_req_t *r = p->req;
  if (!r || !p->direct_started) return;
  answer_error(r, p);
  direct_request_done(p);
}
