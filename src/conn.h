/*
 * conn.h: one client connection of a worker.
 *
 * A connection reads into one buffer, lets http1.c parse it, hands each
 * complete head to the Lua layer as a gw_req_t, and writes the answers in
 * order. Requests on one connection are handled one at a time: a pipelined
 * request waits in the buffer until the previous answer has been handed to
 * the socket, which keeps answers in order without a queue.
 *
 * Lifetime: made by the listener on accept (gw_conn_accept), freed after
 * both of its libuv handles have closed (gw_conn_close). Code running inside
 * one of its callbacks holds a reference (`refs`), so a close requested
 * there is carried out when the callback returns, never in the middle.
 */
#ifndef GW_CONN_H
#define GW_CONN_H

#include <uv.h>

#include "buf.h"
#include "http1.h"
#include "request.h"
#include "tls.h"

typedef struct gw_worker_s gw_worker_t;

typedef enum {
  GW_CONN_IDLE = 0, /* between requests (keep-alive), nothing buffered */
  GW_CONN_HEAD,     /* a head is arriving */
  GW_CONN_HANDLING, /* a request is with the Lua layer; reading paused */
  GW_CONN_BODY,     /* the Lua layer waits for the body; reading on */
  GW_CONN_DISCARD,  /* the answer is sent; dropping an unread body */
  GW_CONN_TUNNEL,   /* after a 101: raw bytes both ways (proxy.c) */
  GW_CONN_LINGER,   /* write side shut; reading until EOF before closing */
  GW_CONN_CLOSING   /* handles are closing */
} gw_conn_state_t;

/* Owned by its worker (listed in worker->conns); see the file comment. */
struct gw_conn_s {
  uv_tcp_t tcp;                  /* the socket; tcp.data points here */
  uv_timer_t timer;              /* idle, header, body and linger timeouts */
  gw_worker_t *worker;           /* the owner */
  struct gw_conn_s *prev, *next; /* worker->conns list */
  gw_http1_t http;               /* the parser */
  gw_buf_t rbuf;                 /* bytes read; the current head stays at its offsets */
  size_t parsed;                 /* bytes of rbuf already given to the parser */
  size_t head_end;               /* where the current request's head ends in rbuf */
  gw_req_t *req;                 /* the current request, or NULL */
  gw_conn_state_t state;
  int refs;                   /* callbacks in progress; close waits for 0 */
  int handles_open;           /* libuv handles not yet closed */
  int writes_pending;         /* uv_write requests not yet completed */
  size_t write_bytes_pending; /* bytes in those requests */
  unsigned requests;          /* requests served, for the log */
  uint8_t close_scheduled;    /* close when refs reach 0 */
  uint8_t reading;            /* uv_read_start is in effect */
  uint8_t peer_eof;           /* the peer half-closed: nothing more comes, what is buffered is served */
  uint8_t in_process;         /* process() is on the stack: it will look again */
  uint8_t write_failed;       /* a write failed: close on the next timer turn */
  uint8_t head_timer_set;     /* the current head's timeouts.header is armed */
  uint8_t output_paused;      /* pipelined requests wait for the client to read (conn.c) */
  size_t idle_unsent;         /* answer bytes not yet taken when timeouts.idle was last armed */
  int (*tunnel_sink)(void *, const char *, ssize_t); /* GW_CONN_TUNNEL */
  void *tunnel_data;
  uint64_t deadline;  /* loop ms when the current state times out; 0: none */
  uint64_t timer_due; /* loop ms when `timer` fires; 0: not armed */
  uint8_t admin;      /* accepted on the admin listener: admin.c answers, never Lua */
  gw_tls_t *tls;      /* accepted on a TLS listener: the TLS state, else NULL; freed
                       * with the connection (on_handle_closed) */
  char ip[48];        /* the peer address, text */
};

/* Accepts one pending connection on `server` for worker `w`; `tls` is the
 * listener's TLS context, or NULL for plain HTTP. */
int gw_conn_accept(gw_worker_t *w, uv_stream_t *server, gw_tls_ctx_t *tls);
/* Closes now (or when the current callback returns). Safe to call twice. */
void gw_conn_close(gw_conn_t *c);
/* Writes `bufs` (encrypted first on a TLS connection); what the socket
 * cannot take now is copied and queued, so the caller's memory is free again
 * when this returns. */
void gw_conn_write(gw_conn_t *c, const uv_buf_t *bufs, unsigned n);
/* The Lua layer wants the body of c->req: starts reading if needed. Returns
 * 0 when the body is complete already, 1 when it will be announced through
 * gw_task_wake on req->body_waiter, or a negative error. */
int gw_conn_want_body(gw_conn_t *c);
/* Streams the body of c->req to `sink` instead of storing it (up:proxy).
 * Returns GW_ESTATE if the body was already read. */
int gw_conn_stream_body(gw_conn_t *c, int (*sink)(void *, const char *, size_t, int), void *data);
/* The sink that asked to pause can take more. */
void gw_conn_resume_body(gw_conn_t *c);
/* After an upgrade (101): every byte read from now on, starting with what
 * is buffered after the request head, goes to `sink` (n < 0 at EOF or error).
 * The sink returns 1 to pause reading until gw_conn_tunnel_resume. */
void gw_conn_tunnel(gw_conn_t *c, int (*sink)(void *, const char *, ssize_t), void *data);
void gw_conn_tunnel_resume(gw_conn_t *c);
/* Shuts the write side once queued writes are out (the tunnel's peer ended). */
void gw_conn_shutdown_write(gw_conn_t *c);
/* The Lua layer is done with c->req (its answer is sent): log it, free it,
 * and go on with the next request or close. */
void gw_conn_request_done(gw_conn_t *c);
/* Worker draining: close if idle, else close after the current answer. */
void gw_conn_drain(gw_conn_t *c);

#endif
