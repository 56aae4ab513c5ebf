/*
 * client.h: the upstream HTTP client: connections to servers (gw_uconn_t),
 * kept in per-server pools, and exchanges (gw_exchange_t): one request sent
 * and its response received, with timeouts, retries and keep-alive.
 *
 * The caller fills an exchange (the request head and body to send, the
 * callbacks), starts it, and gets, in order: on_head once the final
 * response head is parsed, on_body for each piece of body, and on_done last,
 * with 0 or an error. After on_done the exchange is the caller's again to
 * free. gw_exchange_abort ends it early without calling on_done.
 *
 * Retries: a failure before any response byte arrived is tried again on
 * another server when the request is idempotent (up to up->retries times);
 * a pooled connection that the server had closed is replaced by a fresh one
 * without counting as a retry.
 *
 * https:// servers: the connection's bytes go through a TLS state (tls.h)
 * at two places, as on the server side (conn.c): what is read is decrypted
 * in place before the parser sees it, and what is written is encrypted
 * first. Everything above (exchanges, pools, tunnels) sees plaintext.
 */
#ifndef GW_CLIENT_H
#define GW_CLIENT_H

#include <uv.h>

#include "buf.h"
#include "http1_client.h"
#include "upstream.h"

typedef struct gw_exchange_s gw_exchange_t;

typedef struct gw_exchange_ops_s {
  /* The final response head is in x->parser (status, headers). Return 1 to
   * pause reading until gw_exchange_resume (proxying waits for Lua). */
  int (*on_head)(gw_exchange_t *x);
  /* Body bytes. Return 1 to pause reading until gw_exchange_resume, or -1
   * to fail the exchange with GW_ETOOBIG. */
  int (*on_body)(gw_exchange_t *x, const char *p, size_t n);
  /* The end: err 0, or a negative code with `msg` (static storage). */
  void (*on_done)(gw_exchange_t *x, int err, const char *msg);
  /* A streamed request body drained below the low-water mark (may be NULL). */
  void (*on_drain)(gw_exchange_t *x);
  /* The exchange was aborted from inside one of these callbacks; the client
   * is done with it now and the owner may free it (may be NULL if the owner
   * never aborts from a callback). */
  void (*on_aborted)(gw_exchange_t *x);
} gw_exchange_ops_t;

#define GW_EXCHANGE_LOW_WATER (64 * 1024)

/* A connection to one server. Owned by its server's pool while idle, by
 * its exchange while in use; freed after its handles close. */
struct gw_uconn_s {
  uv_tcp_t tcp;     /* tcp.data points here */
  uv_timer_t timer; /* connect, send, read, and idle timeouts */
  uv_connect_t connect_req;
  gw_server_t *server;
  gw_upstream_t *up;
  gw_uconn_t *next_idle, *prev_idle; /* server->idle list */
  gw_exchange_t *x;                  /* the exchange using it; NULL while idle */
  gw_buf_t rbuf;                     /* response bytes; the head stays until on_done */
  size_t parsed;                     /* bytes of rbuf given to the parser */
  int handles_open;
  uint8_t connected, reading, closing, in_pool;
  unsigned exchanges; /* exchanges carried, > 1 means reused */
  gw_tls_t *tls;      /* an https:// server's TLS state (owned), or NULL */
  unsigned tls_gen;   /* up->tls_gen when it was made: a newer one is not reused */
  uint64_t deadline;  /* loop ms when the current phase times out; 0: none */
  uint64_t timer_due; /* loop ms when `timer` fires; 0: not armed */
};

typedef enum {
  GW_X_IDLE = 0,
  GW_X_CONNECTING,
  GW_X_HANDSHAKE,
  GW_X_SENDING,
  GW_X_HEAD,
  GW_X_BODY,
  GW_X_DONE
} gw_exchange_state_t;

/* Owned by the caller (see the file comment). */
struct gw_exchange_s {
  gw_upstream_t *up;
  gw_server_t *server; /* the server of the current try */
  gw_uconn_t *uc;      /* its connection */
  const gw_exchange_ops_t *ops;
  void *data; /* the caller's */
  /* The request, kept for retries; each try serialises it into `out`. */
  char *method;          /* "GET" */
  char *target;          /* "/path?query" */
  gw_buf_t header_lines; /* "Name: value\r\n" lines, framing excluded */
  uint8_t has_host;      /* header_lines has Host; else the server's is used */
  uint8_t has_body;      /* send `body` with Content-Length (even if empty) */
  gw_buf_t body;
  gw_buf_t out; /* the bytes of the current try */
  /* A request body streamed from the client instead of `body`. */
  uint8_t stream_body;     /* on: the body comes through write_body */
  int64_t stream_length;   /* its Content-Length, or -1: chunked to the server */
  gw_buf_t body_q;         /* framed body bytes not yet handed to libuv */
  size_t body_pending;     /* queued or in-flight body bytes */
  uint8_t body_writing;    /* a body write is in flight */
  uint8_t body_end_queued; /* the client's body is complete */
  uint8_t body_done_sent;  /* ... and its last bytes are on their way */
  uint8_t head_sent;       /* the head write completed */
  gw_http1c_t parser;
  const char *resp_base; /* the buffer the parser's header slices point into;
                            valid during on_head and on_done */
  char *hash_key;        /* for the hash balancer, or NULL */
  size_t hash_key_len;
  double timeout;      /* overrides the read timeout when > 0 */
  uint64_t started_ms; /* of the current try */
  uint64_t started_ns; /* the same, finer: for the latency histogram */
  gw_exchange_state_t state;
  int tries;            /* tries made */
  uint8_t idempotent;   /* may be retried */
  uint8_t head_request; /* the method is HEAD */
  uint8_t got_bytes;    /* a response byte arrived on this try */
  uint8_t paused;       /* the caller paused reading */
  uint8_t in_callback;  /* inside one of ops: no freeing */
  uint8_t abort_pending;
  uint8_t body_error;        /* on_body refused the body (too large) */
  uint8_t reported;          /* this try's outcome went to passive health */
  uint8_t tunnel;            /* after a 101: raw bytes both ways */
  uint8_t retry_elsewhere;   /* the next try must use another server */
  uv_timer_t *deferred;      /* a start reported on the next turn, or NULL */
  const char *deferred_msg;  /* ... as this failure ("breaker open"), or NULL */
  int deferred_err;          /* ... as this failure of the first try, or 0 */
  const char *deferred_fail; /* ... and its message */
  uint8_t starting;          /* inside gw_exchange_start: failures wait for the next turn */
  uint8_t probe;             /* this exchange is the breaker's half-open probe */
  gw_server_t *fixed_server; /* ask only this server (health checks), or NULL */
  int last_err;              /* the failure a retry tries to get past */
  const char *last_msg;
};

/* Fills the request of `x`: method, target, header lines (the caller adds
 * them with gw_exchange_add_header), and optionally a body. Returns -1 (and
 * sets nothing) unless the method is a token and the target a non-empty run
 * of visible bytes: a space, CR, LF or other control byte there would let a
 * script's caller write the rest of the request line, or a second request. */
int gw_exchange_set_request(gw_exchange_t *x, const char *method, size_t mlen, const char *target,
                            size_t tlen);
/* Adds a request header; Host is noted (so the server's is not added);
 * framing and hop-by-hop headers are the client's job and are dropped. */
void gw_exchange_add_header(gw_exchange_t *x, const char *name, size_t nlen, const char *value, size_t vlen);
void gw_exchange_set_body(gw_exchange_t *x, const char *body, size_t len);
/* Adds a header line without the hop-by-hop filter (Upgrade, Connection). */
void gw_exchange_add_line(gw_exchange_t *x, const char *name, size_t nlen, const char *value, size_t vlen);
/* Starts `x` (state IDLE, request set). Calls back later, never before
 * returning. Returns 0, or an error without calling back (no server). */
int gw_exchange_start(gw_exchange_t *x);
/* Streams request body bytes (stream_body on): queues them, framed, and
 * returns how many bytes wait to be written, for the caller's backpressure.
 * Body bytes may be given before the connection is up. */
size_t gw_exchange_write_body(gw_exchange_t *x, const char *data, size_t n);
/* The streamed body is complete. */
void gw_exchange_end_body(gw_exchange_t *x);
/* After a 101 answer (called from on_head): the connection carries raw
 * bytes from now on. Bytes from the server arrive through on_body (n > 0),
 * its EOF or an error through on_done; bytes to it go through
 * gw_exchange_write_body, unframed. No timeouts apply. */
void gw_exchange_tunnel(gw_exchange_t *x);
/* The client side of a tunnel ended: shut the write side to the server. */
void gw_exchange_shutdown_write(gw_exchange_t *x);
/* Resumes reading after a callback asked to pause. */
void gw_exchange_resume(gw_exchange_t *x);
/* Ends `x` without on_done; its connection is closed (not pooled).
 * Returns 1 when called from inside one of x's callbacks: the client still
 * uses `x` until it calls ops->on_aborted, and the owner must wait for
 * that before freeing it. Returns 0 when `x` may be freed at once. */
int gw_exchange_abort(gw_exchange_t *x);
/* Frees buffers owned by `x` (after on_done or abort). */
void gw_exchange_release(gw_exchange_t *x);

#endif
