/*
 * proxy.h: up:proxy: forwarding a client request to an upstream and
 * streaming the answer back.
 *
 * A gw_proxy_t belongs to its request (req->proxy) from up:proxy until the
 * request is freed. Lua first waits for the upstream's response head and
 * gets (status, headers); the head is then on hold while middleware looks
 * at it (unless the proxy is direct: see gw_ffi_upstream_proxy_direct).
 * What happens next is Lua's choice:
 *   - the handler returns the response: gw_proxy_respond writes the head to
 *     the client (with the status and headers as Lua left them) and pipes
 *     the body through, in C, with backpressure both ways;
 *   - a script calls res:body(): the body is buffered (bounded) instead;
 *   - the response is dropped: the exchange is aborted when the request ends.
 */
#ifndef GW_PROXY_H
#define GW_PROXY_H

#include "client.h"
#include "lua_vm.h"
#include "request.h"

typedef enum {
  GW_PROXY_WAIT_HEAD = 0, /* Lua waits for the upstream head */
  GW_PROXY_HEAD_READY,    /* the head is in; reading upstream is paused */
  GW_PROXY_STREAMING,     /* the body flows to the client */
  GW_PROXY_BUFFERING,     /* the body is being buffered for res:body() */
  GW_PROXY_TUNNEL,        /* after a 101: raw bytes both ways */
  GW_PROXY_DONE,          /* the exchange ended */
} gw_proxy_state_t;

typedef struct gw_proxy_s {
  gw_waiter_t w; /* first: the head wait, then the body wait */
  gw_exchange_t x;
  gw_req_t *req; /* the owner */
  gw_proxy_state_t state;
  gw_buf_t body;  /* buffered body (BUFFERING) */
  gw_buf_t head;  /* a copy of the response head (header slices index it) */
  gw_buf_t extra; /* header lines for a committed deferred answer (gw_ffi_proxy_commit) */
  int err;        /* how the exchange ended */
  const char *msg;
  uint8_t waiting;            /* w is registered with a task */
  uint8_t chunked_out;        /* the client gets chunked framing */
  uint8_t client_paused;      /* upstream reads wait for the client to drain */
  uint8_t client_body_paused; /* client reads wait for the upstream to drain */
  uint8_t client_eof;         /* the tunnel's client side ended */
  uint8_t direct;             /* no Lua waits: C answers (gw_ffi_upstream_proxy_direct) */
  uint8_t direct_started;     /* ... and the call that started it has returned */
  uint8_t ended;              /* the exchange ended after the head, with no body bytes */
} gw_proxy_t;

/* Client writes queued past this pause the upstream; below LOW resume it. */
#define GW_PROXY_HIGH_WATER (256 * 1024)
#define GW_PROXY_LOW_WATER (64 * 1024)

/* Frees `p` (request teardown): aborts its exchange if still running. */
void gw_proxy_destroy(gw_proxy_t *p);
/* The client connection drained below the low-water mark. */
void gw_proxy_client_drained(gw_proxy_t *p);
/* 1 while the body is still being streamed to the client. */
int gw_proxy_streaming(const gw_proxy_t *p);
/* 1 while `p` will answer the request itself (a direct proxy waiting for
 * its head) or is still streaming: the request ends when it is done. */
int gw_proxy_owns_request(const gw_proxy_t *p);

#endif
