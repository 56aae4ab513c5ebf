/*
 * conn.c: the client connection (see conn.h).
 *
 * The read buffer rbuf holds, from offset 0, the head of the current request
 * (its slices stay valid while the request lives), then whatever was read
 * after it: body bytes and pipelined requests. Body bytes are copied out by
 * the parser as they are decoded, and the consumed part after the head is
 * dropped so that a long body never accumulates here. Between requests the
 * unparsed rest moves to offset 0.
 *
 * One timer serves every timeout, re-armed at each state change:
 *   IDLE: timeouts.idle, then close quietly;
 *   HEAD: timeouts.header from the first byte, then 408;
 *   BODY: timeouts.body between reads, then the body read fails;
 *   LINGER: 2 s to let the peer read our last answer before closing.
 *
 * TLS (tls.h) stays at the edges: on_read decrypts what was read in place, so
 * everything after it sees plaintext in rbuf as on a plain connection, and
 * gw_conn_write encrypts before the usual write path. Until the handshake
 * completes, an IDLE connection has timeouts.header instead of timeouts.idle.
 */
#include "conn.h"

#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>

#include "admin.h"
#include "errors.h"
#include "log.h"
#include "lua_vm.h"
#include "mem.h"
#include "metrics.h"
#include "proxy.h"
#include "response.h"
#include "worker.h"

#define READ_CHUNK 16384
/* Bytes read ahead of the request being handled before reading pauses. */
#define READ_AHEAD_MAX (64 * 1024)
/* Answers not yet taken by the client's socket, past which no further
 * pipelined request starts (and reading stops) until they fall below the
 * low mark: a client that pipelines without reading cannot grow them
 * without end. */
#define OUTPUT_HIGH_WATER (256 * 1024)
#define OUTPUT_LOW_WATER (64 * 1024)
#define LINGER_MS 2000
/* An unread body up to this size is read and dropped to keep the
 * connection; a larger one costs a new connection instead. */
#define DISCARD_MAX 65536

static void start_next(gw_conn_t *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void process(gw_conn_t *c);
static void parse_loop(gw_conn_t *c);

static void conn_ref(gw_conn_t *c) { c->refs++; }

static void conn_unref(gw_conn_t *c) {
  if (--c->refs == 0 && c->close_scheduled) {
    c->close_scheduled = 0;
    gw_conn_close(c);
  }
}

/* A connection timeout in ms (config.h gw_seconds_to_ms), at least 1. */
static uint64_t secs_ms(double s) {
  uint64_t ms = gw_seconds_to_ms(s);
  return ms ? ms : 1;
}

static void on_timeout(uv_timer_t *t);

/* Timeouts are deadlines; the libuv timer is only moved when it would fire
 * too late. A keep-alive connection that answers at once thus re-arms its
 * timer about once per idle period instead of three times per request (each
 * a heap operation). A timer that fires before the deadline re-arms itself
 * for the rest (on_timeout). */
static void arm_timer(gw_conn_t *c, uint64_t ms) {
  uint64_t now = uv_now(c->worker->loop);
  if (c->write_failed) ms = 0;
  c->deadline = now + ms;
  if (c->timer_due == 0 || c->timer_due > c->deadline) {
    uv_timer_start(&c->timer, on_timeout, ms, 0);
    c->timer_due = c->deadline;
  }
}

/* No timeout for now (a handler runs); a pending timer fires and finds none. */
static void clear_timer(gw_conn_t *c) { c->deadline = 0; }

static void read_start(gw_conn_t *c);
static void read_stop(gw_conn_t *c) {
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

/* Read buffers of READ_CHUNK bytes that idle connections gave back, for
 * the next connection that reads: an idle keep-alive connection holds no
 * read buffer (16 KB of memory each, a few KB of it touched), and a busy
 * one takes the same buffer back at its next read for the cost of a push
 * and a pop instead of a malloc and a free per request. This process's
 * worker owns them; at most SPARE_READS are kept, the rest are freed. */
#define SPARE_READS 256
static struct {
  char *base[SPARE_READS];
  int n;
} spare_reads;

/* Gives `c`'s read buffer away when it holds no unread byte. */
static void release_read_buffer(gw_conn_t *c) {
  if (c->rbuf.len != 0 || !c->rbuf.base) return;
  if (c->rbuf.cap == READ_CHUNK && spare_reads.n < SPARE_READS) {
    spare_reads.base[spare_reads.n++] = c->rbuf.base;
    gw_buf_init(&c->rbuf);
  } else {
    gw_buf_free(&c->rbuf); /* grown for a large head or body: its memory goes */
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  gw_conn_t *c = h->data;
  if (!c->rbuf.base && spare_reads.n > 0) {
    c->rbuf.base = spare_reads.base[--spare_reads.n];
    c->rbuf.cap = READ_CHUNK;
  }
  gw_buf_reserve(&c->rbuf, READ_CHUNK);
  buf->base = c->rbuf.base + c->rbuf.len;
  buf->len = c->rbuf.cap - c->rbuf.len;
}

static void read_start(gw_conn_t *c) {
  if (!c->reading && c->state != GW_CONN_CLOSING && !c->peer_eof) {
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->reading = 1;
  }
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h) {
  gw_conn_t *c = h->data;
  if (--c->handles_open > 0) return;
  gw_worker_t *w = c->worker;
  if (c->prev) c->prev->next = c->next;
  else w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  w->nconns--;
  c->rbuf.len = 0;
  release_read_buffer(c);
  gw_tls_free(c->tls);
  free(c);
  gw_worker_conn_closed(w);
}

/* Drops the current request: its task (if waiting) is aborted, so no Lua
 * will touch it again, and its handles in Lua go stale. */
static void drop_request(gw_conn_t *c) {
  gw_req_t *r = c->req;
  if (!r) return;
  c->req = NULL;
  c->http.req = NULL;
  if (r->proxy) {
    gw_proxy_destroy(r->proxy);
    r->proxy = NULL;
  }
  if (r->task) {
    gw_task_t *t = r->task;
    r->task = NULL;
    gw_task_free(t);
  }
  gw_req_free(r);
}

void gw_conn_close(gw_conn_t *c) {
  if (c->state == GW_CONN_CLOSING) return;
  if (c->refs > 0) {
    c->close_scheduled = 1;
    return;
  }
  /* A task that is running Lua right now holds a ref through its owner hooks,
   * so reaching here means no Lua frame uses the request. */
  drop_request(c);
  c->state = GW_CONN_CLOSING;
  read_stop(c);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  gw_conn_t *c = req->data;
  free(req);
  if (status < 0 || c->state == GW_CONN_CLOSING || c->peer_eof) {
    gw_conn_close(c); /* (after the peer's EOF there is nothing to linger for) */
    return;
  }
  /* Keep reading (and dropping) until the peer closes, so that unread bytes
   * in our receive queue do not turn our close into a reset that destroys
   * the answer before the peer reads it. */
  c->state = GW_CONN_LINGER;
  arm_timer(c, LINGER_MS);
  read_start(c);
}

/* Closes after every queued write is out: shut down the write side, linger. */
static void tls_flush(gw_conn_t *c);
static void close_gracefully(gw_conn_t *c) {
  if (c->state == GW_CONN_CLOSING || c->state == GW_CONN_LINGER) return;
  drop_request(c);
  if (c->tls) {
    /* TLS: close_notify goes out behind the last answer. */
    gw_tls_shutdown(c->tls);
    tls_flush(c);
  }
  c->state = GW_CONN_LINGER;
  read_stop(c);
  uv_shutdown_t *req = gw_xmalloc(sizeof *req);
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    gw_conn_close(c);
  }
}

/* ---- writing ---- */

typedef struct {
  uv_write_t req; /* req.data is the connection */
  size_t len;
  char data[]; /* the bytes the socket did not take at once */
} pending_write_t;

/* A failed write closes the connection from the timer, never from inside
 * gw_conn_write: its callers (Lua through the FFI, the proxy inside an
 * upstream callback) must not see the request vanish under them. */
static void close_soon(gw_conn_t *c) {
  if (c->state == GW_CONN_CLOSING) return;
  c->write_failed = 1;
  arm_timer(c, 0);
}

static void on_write(uv_write_t *req, int status) {
  gw_conn_t *c = req->data;
  pending_write_t *pw = (pending_write_t *)req;
  c->writes_pending--;
  c->write_bytes_pending -= pw->len;
  free(req);
  if (status < 0) {
    gw_conn_close(c);
    return;
  }
  if (c->req && c->req->proxy && c->write_bytes_pending < GW_PROXY_LOW_WATER) {
    conn_ref(c);
    gw_proxy_client_drained(c->req->proxy);
    conn_unref(c);
  }
  if (c->output_paused && c->write_bytes_pending < OUTPUT_LOW_WATER && c->state == GW_CONN_IDLE) {
    c->output_paused = 0;
    conn_ref(c);
    read_start(c);
    process(c);
    conn_unref(c);
  }
  if (c->writes_pending == 0 && c->state == GW_CONN_LINGER && !c->reading) close_gracefully(c);
}

static void write_raw(gw_conn_t *c, const uv_buf_t *bufs, unsigned n) {
  if (c->state == GW_CONN_CLOSING || c->write_failed) return;
  size_t total = 0, written = 0;
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (c->writes_pending == 0) {
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc >= 0) written = (size_t)rc;
    else if (rc != UV_EAGAIN) {
      close_soon(c);
      return;
    }
  }
  if (written == total) return;
  pending_write_t *pw = gw_xmalloc(sizeof *pw + (total - written));
  size_t skip = written, off = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t len = bufs[i].len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    memcpy(pw->data + off, bufs[i].base + skip, len - skip);
    off += len - skip;
    skip = 0;
  }
  pw->len = off;
  pw->req.data = c;
  uv_buf_t b = uv_buf_init(pw->data, (unsigned)pw->len);
  if (uv_write(&pw->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    free(pw);
    close_soon(c);
    return;
  }
  c->writes_pending++;
  c->write_bytes_pending += pw->len;
}

/* Writes the ciphertext tls.c has ready (handshake messages, records, alerts). */
static void tls_flush(gw_conn_t *c) {
  const char *p;
  size_t len = gw_tls_pending(c->tls, &p);
  if (len == 0) return;
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
  write_raw(c, &b, 1);
  gw_tls_drained(c->tls);
}

void gw_conn_write(gw_conn_t *c, const uv_buf_t *bufs, unsigned n) {
  if (c->tls && c->state != GW_CONN_CLOSING && !c->write_failed) {
    /* TLS: encrypt, then write the records as plain bytes. */
    if (gw_tls_writev(c->tls, bufs, n) != 0) {
      close_soon(c);
      return;
    }
    tls_flush(c);
    return;
  }
  write_raw(c, bufs, n);
}

/* ---- requests ---- */

/* Request tasks are owned by the connection, which outlives them: a
 * reference taken for the length of each resume keeps a close requested from
 * inside Lua (a failed write) from freeing what the coroutine still uses. */
static void task_enter(void *owner) { conn_ref(owner); }

static void task_leave(void *owner) { conn_unref(owner); }

static void task_done(void *owner, gw_task_t *t) {
  gw_conn_t *c = owner;
  gw_req_t *r = c->req;
  r->task = NULL;
  int proxied = gw_proxy_owns_request(r->proxy);
  if (r->resp_state == GW_RESP_NONE && !proxied)
    gw_response_error(r, 500, t->failed ? "internal error" : "the handler sent no response");
  gw_task_free(t);
  /* A proxied body still flowing, or a direct proxy still waiting for its
   * head, ends the request when it ends (proxy.c). */
  if (!proxied) gw_conn_request_done(c);
}

/* The entry yields DONE, route, and for a plain answer also status,
 * content type and body: the answer is sent from here, straight from the
 * coroutine's stack (cheaper than FFI calls from interpreted Lua). */
static void task_result(void *owner, lua_State *co) {
  gw_conn_t *c = owner;
  gw_req_t *r = c->req;
  size_t len;
  const char *route = lua_tolstring(co, 2, &len);
  if (route) r->route = gw_arena_strndup(&r->pool, route, len);
  if (lua_type(co, 3) != LUA_TNUMBER || r->resp_state != GW_RESP_NONE) return;
  size_t clen, blen;
  const char *ctype = lua_tolstring(co, 4, &clen);
  const char *body = lua_tolstring(co, 5, &blen);
  gw_response_start(r, (int)lua_tointeger(co, 3));
  /* The type is one of runtime.lua's constants (text or JSON), never a
   * script's string: it needs none of gw_response_header's checks. */
  if (ctype) gw_response_add_raw(r, "Content-Type", ctype, clen);
  gw_response_send(r, body ? body : "", body ? blen : 0);
}

static const gw_task_owner_t request_task_ops = {task_enter, task_leave, task_done, task_result};

static void dispatch(gw_conn_t *c) {
  gw_req_t *r = c->req;
  gw_worker_t *w = c->worker;
  c->state = GW_CONN_HANDLING;
  clear_timer(c);
  if (w->draining) r->close_after = 1;
  if (c->admin) {
    /* The admin listener: answered in C (admin.c), never by the Lua router. */
    gw_admin_handle(r);
    gw_conn_request_done(c);
    return;
  }
  const char *method = llhttp_method_name((llhttp_method_t)r->method);
  gw_task_t *t = gw_task_start_request(w->vm, &request_task_ops, c, r, r->serial, r->method, method,
                                       c->rbuf.base + r->url_off, r->path_len);
  if (!t->finished) {
    /* The handler waits. Reading stays on (stopping and restarting it costs
     * epoll_ctl calls on every proxied request); on_read stops it if a
     * client piles up more than READ_AHEAD_MAX bytes meanwhile. */
    r->task = t;
  }
}

/* Answers a message the parser refused, then closes: after a framing error
 * nothing later on the connection can be trusted. */
static void refuse(gw_conn_t *c, int status, const char *reason) {
  if (!c->req) c->req = gw_req_new(c);
  c->req->close_after = 1;
  gw_response_error(c->req, status, reason);
  gw_conn_request_done(c);
}

/* Drops consumed body bytes after the head so a long body never piles up. */
static void compact_after_head(gw_conn_t *c, size_t head_end) {
  if (c->parsed <= head_end) return;
  size_t drop = c->parsed - head_end;
  memmove(c->rbuf.base + head_end, c->rbuf.base + c->parsed, c->rbuf.len - c->parsed);
  c->rbuf.len -= drop;
  c->parsed = head_end;
}

/* The body being read (or streamed) ended: `state` is GW_BODY_DONE,
 * GW_BODY_TOO_BIG or GW_BODY_FAILED. The request goes back to its handler:
 * a coroutine waiting in req:body() is woken, a streaming sink is told. */
static void body_finished(gw_conn_t *c, gw_body_state_t state) {
  gw_req_t *r = c->req;
  int streaming = r->body_state == GW_BODY_STREAMING;
  r->body_state = state;
  if (state != GW_BODY_DONE) r->close_after = 1;
  c->state = GW_CONN_HANDLING;
  read_stop(c);
  clear_timer(c);
  conn_ref(c);
  if (streaming && r->body_sink) {
    int (*sink)(void *, const char *, size_t, int) = r->body_sink;
    r->body_sink = NULL;
    sink(r->body_sink_data, NULL, 0, state == GW_BODY_DONE ? 1 : -1);
  } else if (r->body_waiter) {
    gw_waiter_t *wt = r->body_waiter;
    r->body_waiter = NULL;
    gw_waiter_wake(wt, NULL, NULL);
  }
  conn_unref(c);
}

/* Pipelined requests wait, unparsed, for the client to take its answers
 * (parse_loop paused them): on_write goes on with them. */
static int requests_held(const gw_conn_t *c) { return c->output_paused && c->parsed < c->rbuf.len; }

/* After the peer's EOF, once the buffered bytes are parsed, nothing more
 * comes: a body being read fails (its handler answers), and otherwise what
 * is left (part of a head or of an unread body) can never complete, so the
 * connection closes behind the answers already queued. */
static void close_after_eof(gw_conn_t *c) {
  if (!c->peer_eof) return;
  /* Pipelined requests wait for the client to read its answers: on_write
   * goes on with them, and comes back here after the last. */
  if (requests_held(c)) return;
  if (c->state == GW_CONN_BODY && c->req) body_finished(c, GW_BODY_FAILED);
  else if (c->state == GW_CONN_IDLE || c->state == GW_CONN_HEAD || c->state == GW_CONN_DISCARD)
    close_gracefully(c);
}

/* Runs the parser over buffered bytes and acts on what it finds. */
static void process(gw_conn_t *c) {
  if (c->in_process) return; /* the outer call's loop picks the new state up */
  c->in_process = 1;
  parse_loop(c);
  c->in_process = 0;
  close_after_eof(c);
}

/* Whether the parser has something to do: new bytes, or (when finishing a
 * message or reading a body) a state change it makes without input, such as
 * completing a message that has no body. */
static int parser_has_work(const gw_conn_t *c) {
  if (c->state == GW_CONN_CLOSING || c->state == GW_CONN_LINGER) return 0;
  return c->parsed < c->rbuf.len || c->state == GW_CONN_DISCARD || c->state == GW_CONN_BODY;
}

static void parse_loop(gw_conn_t *c) {
  while (parser_has_work(c)) {
    if (c->state == GW_CONN_HANDLING) return; /* the next request waits its turn */
    if (c->state == GW_CONN_IDLE && c->write_bytes_pending > OUTPUT_HIGH_WATER) {
      c->output_paused = 1; /* on_write goes on once the client has read */
      read_stop(c);
      return;
    }
    if (c->state == GW_CONN_IDLE) {
      c->state = GW_CONN_HEAD;
      c->req = gw_req_new(c);
      c->req->start_ns = uv_hrtime();
      c->http.req = c->req;
      c->head_timer_set = 0;
    }
    size_t used = 0;
    gw_http1_result_t res = gw_http1_execute(&c->http, c->rbuf.base, c->parsed, c->rbuf.len, &used);
    c->parsed += used;
    switch (res) {
      case GW_HTTP1_NEED_MORE:
        if (c->state == GW_CONN_BODY || c->state == GW_CONN_DISCARD) compact_after_head(c, c->head_end);
        /* A streaming sink that is full: the socket waits (gw_conn_resume_body). */
        if (c->state == GW_CONN_BODY && c->http.sink_paused) read_stop(c);
        /* A head that did not come whole gets timeouts.header from now (its
         * first byte arrived in this same read). One that did costs no timer. */
        if (c->state == GW_CONN_HEAD && !c->head_timer_set) {
          c->head_timer_set = 1;
          arm_timer(c, secs_ms(c->worker->cfg->timeouts.header));
        }
        return;
      case GW_HTTP1_HEAD:
        c->head_end = c->parsed;
        dispatch(c);
        continue; /* if the answer is out already, the next request may follow */
      case GW_HTTP1_MESSAGE:
      case GW_HTTP1_UPGRADE:
        if (c->state == GW_CONN_BODY) {
          if (res == GW_HTTP1_UPGRADE) c->req->close_after = 1;
          body_finished(c, GW_BODY_DONE);
          continue; /* the handler may have answered: look at the next request */
        }
        if (c->state == GW_CONN_DISCARD) {
          if (res == GW_HTTP1_UPGRADE) {
            close_gracefully(c);
            return;
          }
          gw_http1_resume(&c->http);
          start_next(c);
          continue;
        }
        return;
      case GW_HTTP1_ERROR:
        if (c->state == GW_CONN_BODY) {
          body_finished(c, c->http.status == 413 ? GW_BODY_TOO_BIG : GW_BODY_FAILED);
          continue;
        }
        if (c->state == GW_CONN_DISCARD) {
          gw_conn_close(c);
          return;
        }
        refuse(c, c->http.status, c->http.reason);
        return;
    }
  }
}

static void tunnel_read(gw_conn_t *c, ssize_t nread) {
  conn_ref(c);
  if (nread < 0) {
    read_stop(c);
    c->tunnel_sink(c->tunnel_data, NULL, nread);
  } else {
    /* The bytes were read into rbuf; hand them on and forget them. */
    const char *p = c->rbuf.base + c->rbuf.len;
    if (c->tunnel_sink(c->tunnel_data, p, nread) == 1) read_stop(c);
  }
  conn_unref(c);
}

/* TLS: the `nread` bytes just read at the end of rbuf are ciphertext.
 * Decrypts them into the same place (rbuf.len does not move here) and
 * returns the plaintext length, 0 when there is none yet, or a negative
 * error that on_read treats like a failed read: a failed handshake (a
 * plain-HTTP request included) closes this connection and nothing else. */
static ssize_t tls_read(gw_conn_t *c, ssize_t nread) {
  size_t len = c->rbuf.len;
  int was_ready = gw_tls_ready(c->tls);
  ssize_t rc = gw_tls_read(c->tls, c->rbuf.base + len, (size_t)nread, &c->rbuf);
  c->rbuf.len = len;
  tls_flush(c); /* the handshake's answer, tickets, or an alert */
  if (rc == GW_ETLS) gw_log_debug("TLS from %s: %s", c->ip, gw_tls_error(c->tls));
  if (!was_ready && gw_tls_ready(c->tls) && c->state == GW_CONN_IDLE)
    arm_timer(c, secs_ms(c->worker->cfg->timeouts.idle)); /* see gw_conn_accept */
  return rc;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  gw_conn_t *c = s->data;
  if (nread > 0 && c->tls) {
    if (c->state == GW_CONN_LINGER) return; /* dropped: see on_shutdown */
    nread = tls_read(c, nread);
  }
  if (nread == 0) return;
  if (c->state == GW_CONN_TUNNEL) {
    tunnel_read(c, nread);
    return;
  }
  if (nread < 0) {
    /* EOF or error. A half-read body fails; otherwise the peer is gone. */
    if (c->state == GW_CONN_BODY && c->req) {
      body_finished(c, GW_BODY_FAILED);
      return;
    }
    if (c->state == GW_CONN_HANDLING) {
      /* The peer may only have half-closed: this answer and those of the
       * requests it pipelined before its FIN are still owed (see
       * close_after_eof). A reset fails their writes and closes. */
      read_stop(c);
      c->peer_eof = 1;
      return;
    }
    if (requests_held(c)) {
      /* Requests it pipelined before its FIN still wait for it to read. */
      c->peer_eof = 1;
      read_stop(c);
      return;
    }
    if (c->writes_pending > 0) {
      /* Answers still queued for a half-closed peer go out first. */
      c->peer_eof = 1;
      close_gracefully(c);
      return;
    }
    gw_conn_close(c);
    return;
  }
  if (c->state == GW_CONN_LINGER) return; /* dropped: see on_shutdown */
  c->rbuf.len += (size_t)nread;
  if (c->state == GW_CONN_HANDLING && c->rbuf.len - c->parsed > READ_AHEAD_MAX) {
    /* Pipelined bytes beyond what we hold for a waiting handler wait in the
     * socket instead (start_next reads again). */
    read_stop(c);
  }
  conn_ref(c);
  if (c->state == GW_CONN_BODY) arm_timer(c, secs_ms(c->worker->cfg->timeouts.body));
  process(c);
  /* A head that never completes must not grow the buffer without bound:
   * the parser refuses it past limits.header_bytes (414/431). */
  if (c->tls && gw_tls_peer_closed(c->tls) && !c->peer_eof && c->state != GW_CONN_CLOSING &&
      c->state != GW_CONN_LINGER && c->state != GW_CONN_TUNNEL) {
    /* The client's close_notify came with its last bytes: TLS handed over
     * the bytes and keeps the end, which no later read brings if the client
     * waits for our answer (and close_notify) before closing TCP. The end
     * is taken now, once what came before it is parsed, like a FIN. */
    on_read(s, UV_EOF, buf);
  }
  conn_unref(c);
}

/* Bytes of answers the client has yet to take: libuv's queue plus the
 * kernel's send queue (which alone can hold megabytes). */
static size_t unsent_bytes(gw_conn_t *c) {
  size_t n = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  uv_os_fd_t fd;
  int outq = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0)
    n += (size_t)outq;
  return n;
}

/* timeouts.idle ran out. A client still taking the answers sent to it
 * (fewer bytes wait than when the timer was armed) is not idle: another
 * period starts; else the connection closes. Without this, a slow reader of
 * a large answer was cut off timeouts.idle after its request ended. */
static void idle_timeout(gw_conn_t *c) {
  size_t unsent = unsent_bytes(c);
  if (unsent > 0 && unsent < c->idle_unsent) {
    c->idle_unsent = unsent;
    arm_timer(c, secs_ms(c->worker->cfg->timeouts.idle));
    return;
  }
  gw_conn_close(c);
}

static void on_timeout(uv_timer_t *t) {
  gw_conn_t *c = t->data;
  c->timer_due = 0;
  if (c->write_failed) {
    gw_conn_close(c);
    return;
  }
  if (c->deadline == 0) return;
  uint64_t now = uv_now(c->worker->loop);
  if (now < c->deadline) {
    uv_timer_start(&c->timer, on_timeout, c->deadline - now, 0);
    c->timer_due = c->deadline;
    return;
  }
  c->deadline = 0;
  conn_ref(c);
  switch (c->state) {
    case GW_CONN_IDLE: idle_timeout(c); break;
    case GW_CONN_HEAD: refuse(c, 408, "request head timed out"); break;
    case GW_CONN_BODY:
      if (c->req) body_finished(c, GW_BODY_FAILED);
      break;
    case GW_CONN_DISCARD:
    case GW_CONN_LINGER: gw_conn_close(c); break;
    default: break;
  }
  conn_unref(c);
}

/* ---- body ---- */

static void cancel_body_wait(gw_waiter_t *w) {
  /* The task ended while waiting: the request keeps its body state; the
   * connection stops reading when the request is done. */
}

int gw_conn_want_body(gw_conn_t *c) {
  gw_req_t *r = c->req;
  switch (r->body_state) {
    case GW_BODY_DONE:
    case GW_BODY_TOO_BIG:
    case GW_BODY_FAILED: return 0;
    case GW_BODY_READING: return 1;
    case GW_BODY_STREAMING: return GW_ESTATE;
    case GW_BODY_UNREAD: break;
  }
  if (r->content_length > c->http.limits->body_bytes) {
    /* Refused without reading it; the connection closes after the answer. */
    r->body_state = GW_BODY_TOO_BIG;
    r->close_after = 1;
    return 0;
  }
  if (!r->chunked && r->content_length == 0) {
    gw_http1_resume(&c->http); /* the message completes at once */
    size_t used = 0;
    gw_http1_execute(&c->http, c->rbuf.base, c->parsed, c->parsed, &used);
    r->body_state = GW_BODY_DONE;
    return 0;
  }
  if (r->expect_continue) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
    gw_conn_write(c, &b, 1);
    r->expect_continue = 0;
  }
  r->body_state = GW_BODY_READING;
  c->state = GW_CONN_BODY;
  gw_http1_resume(&c->http);
  /* Parse what is buffered already; it may complete the body synchronously. */
  conn_ref(c);
  process(c);
  conn_unref(c);
  if (r->body_state != GW_BODY_READING) return 0;
  arm_timer(c, secs_ms(c->worker->cfg->timeouts.body));
  read_start(c);
  return 1;
}

/* Registers the waiter for a body being read (used by ffi_req.c). */
void gw__conn_body_waiter(gw_conn_t *c, gw_waiter_t *w);
void gw__conn_body_waiter(gw_conn_t *c, gw_waiter_t *w) {
  w->cancel = cancel_body_wait;
  c->req->body_waiter = w;
}

int gw_conn_stream_body(gw_conn_t *c, int (*sink)(void *, const char *, size_t, int), void *data) {
  gw_req_t *r = c->req;
  if (r->body_state != GW_BODY_UNREAD) return GW_ESTATE;
  if (r->expect_continue) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
    gw_conn_write(c, &b, 1);
    r->expect_continue = 0;
  }
  r->body_sink = sink;
  r->body_sink_data = data;
  r->body_state = GW_BODY_STREAMING;
  c->state = GW_CONN_BODY;
  c->http.sink_paused = 0;
  gw_http1_resume(&c->http);
  arm_timer(c, secs_ms(c->worker->cfg->timeouts.body));
  read_start(c);
  /* Bytes already buffered flow on the next read callback or right now. */
  conn_ref(c);
  process(c);
  conn_unref(c);
  return 0;
}

void gw_conn_resume_body(gw_conn_t *c) {
  if (!c->http.sink_paused) return;
  c->http.sink_paused = 0;
  if (c->state == GW_CONN_BODY) read_start(c);
}

void gw_conn_tunnel(gw_conn_t *c, int (*sink)(void *, const char *, ssize_t), void *data) {
  c->state = GW_CONN_TUNNEL;
  c->tunnel_sink = sink;
  c->tunnel_data = data;
  clear_timer(c);
  /* What the client sent after its head already belongs to the tunnel. */
  size_t rest = c->rbuf.len - c->parsed;
  if (rest > 0) {
    int pause = sink(data, c->rbuf.base + c->parsed, (ssize_t)rest);
    c->parsed = c->rbuf.len;
    if (pause == 1) return;
  }
  c->rbuf.len = c->parsed = c->head_end = 0;
  read_start(c);
}

void gw_conn_tunnel_resume(gw_conn_t *c) {
  if (c->state == GW_CONN_TUNNEL) read_start(c);
}

static void on_tunnel_shutdown(uv_shutdown_t *req, int status) { free(req); }

void gw_conn_shutdown_write(gw_conn_t *c) {
  if (c->state == GW_CONN_CLOSING) return;
  if (c->tls) {
    gw_tls_shutdown(c->tls);
    tls_flush(c);
  }
  uv_shutdown_t *req = gw_xmalloc(sizeof *req);
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_tunnel_shutdown) != 0) free(req);
}

/* ---- between requests ---- */

static void access_log(gw_conn_t *c, gw_req_t *r);

/* Prepares for the next request on a kept connection: the unparsed rest of
 * the buffer moves to the front and parsing goes on. */
static void start_next(gw_conn_t *c) {
  drop_request(c);
  gw_buf_consume(&c->rbuf, c->parsed);
  c->parsed = 0;
  release_read_buffer(c);
  c->http.discard_body = 0;
  c->state = GW_CONN_IDLE;
  if (c->worker->draining) {
    close_gracefully(c);
    return;
  }
  arm_timer(c, secs_ms(c->worker->cfg->timeouts.idle));
  /* Only when something waits: the usual answer went out whole. */
  c->idle_unsent = c->writes_pending > 0 ? unsent_bytes(c) : 0;
  read_start(c);
}

void gw_conn_request_done(gw_conn_t *c) {
  gw_req_t *r = c->req;
  conn_ref(c);
  access_log(c, r);
  /* Every request ends here once: count it (admin requests are not counted). */
  if (!c->admin)
    gw_metrics_request(r->route, r->status, r->start_ns ? (double)(uv_hrtime() - r->start_ns) / 1e9 : 0);
  c->requests++;
  c->worker->requests++;
  int keep = r->keep_alive && !r->close_after && !c->worker->draining;
  int body_unread = r->body_state == GW_BODY_UNREAD && (r->chunked || r->content_length > 0);
  if (keep && r->upgrade) keep = 0;
  if (keep && body_unread && (r->chunked || r->content_length > DISCARD_MAX || r->expect_continue)) keep = 0;
  if (!keep) {
    close_gracefully(c);
  } else if (body_unread || !gw_http1_message_complete(&c->http)) {
    /* Drop the body nobody read, then go on. */
    c->state = GW_CONN_DISCARD;
    c->http.discard_body = 1;
    gw_http1_resume(&c->http);
    arm_timer(c, secs_ms(c->worker->cfg->timeouts.body));
    read_start(c);
    process(c);
  } else {
    gw_http1_resume(&c->http);
    start_next(c);
    process(c);
  }
  conn_unref(c);
}

/* ---- access log ---- */

/* Appends `,"key":` and the NUL-terminated `value` as a JSON string. */
static void log_str(gw_buf_t *b, const char *key, const char *value) {
  gw_buf_printf(b, ",\"%s\":", key);
  gw_buf_append_json(b, value, strlen(value));
}

/* One JSON line per request. Every string goes through the JSON escaper, the
 * fixed ones too: the request id and route can come from a script or a
 * client, and one unescaped quote would let them add or override keys. */
static void access_log(gw_conn_t *c, gw_req_t *r) {
  if (!gw_access_log_enabled() || !r) return;
  gw_buf_t b;
  gw_buf_init(&b);
  double ms = (double)(uv_hrtime() - r->start_ns) / 1e6;
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  gw_buf_printf(&b, "{\"time\":%lld.%03d", (long long)tv.tv_sec, (int)(tv.tv_usec / 1000));
  log_str(&b, "ip", c->ip);
  log_str(&b, "method", r->url_len ? llhttp_method_name((llhttp_method_t)r->method) : "");
  gw_buf_append_str(&b, ",\"path\":");
  gw_buf_append_json(&b, r->url_len ? c->rbuf.base + r->url_off : "", r->url_len ? r->path_len : 0);
  log_str(&b, "route", r->route ? r->route : "");
  gw_buf_printf(&b, ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f", r->status, r->resp_bytes, ms);
  log_str(&b, "request_id", gw_req_id(r));
  gw_buf_append_str(&b, "}\n");
  gw_access_log_write(b.base, b.len);
  gw_buf_free(&b);
}

/* ---- accept and drain ---- */

int gw_conn_accept(gw_worker_t *w, uv_stream_t *server, gw_tls_ctx_t *tls) {
  gw_conn_t *c = gw_xcalloc(1, sizeof *c);
  uv_tcp_init(w->loop, &c->tcp);
  int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
  c->tcp.data = c;
  c->timer.data = c;
  c->worker = w;
  uv_timer_init(w->loop, &c->timer);
  c->handles_open = 2;
  c->admin = server == (uv_stream_t *)&w->admin_listener; /* see dispatch() */
  c->next = w->conns;
  if (w->conns) w->conns->prev = c;
  w->conns = c;
  w->nconns++;
  if (rc != 0) {
    gw_conn_close(c);
    return rc;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof c->ip);
    else uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof c->ip);
  }
  gw_http1_init(&c->http, &w->cfg->limits);
  c->state = GW_CONN_IDLE;
  if (tls && !(c->tls = gw_tls_new(tls))) {
    gw_conn_close(c);
    return GW_ENOSPACE;
  }
  /* A TLS handshake must finish within timeouts.header; a client stalling
   * in it holds nothing but its own connection until then. */
  arm_timer(c, secs_ms(c->tls ? w->cfg->timeouts.header : w->cfg->timeouts.idle));
  read_start(c);
  return 0;
}

void gw_conn_drain(gw_conn_t *c) {
  if (c->state == GW_CONN_IDLE && c->rbuf.len == 0 && c->writes_pending == 0) gw_conn_close(c);
  else if (c->req) c->req->close_after = 1;
}
