/*
 * http1.h: the HTTP/1.1 request parser, one thin wrapper around llhttp.
 *
 * It fills a gw_req_t's head with offsets into the caller's buffer (no copies)
 * and its body buffer with decoded body bytes, enforces the head limits and
 * the smuggling rules llhttp leaves to its user, and pauses at two points so
 * that the connection decides what happens next: when a head is complete and
 * when a message is complete. It never calls Lua and never touches sockets.
 */
#ifndef GW_HTTP1_H
#define GW_HTTP1_H

#include <llhttp.h>
#include <stddef.h>

#include "config.h"
#include "request.h"

typedef enum {
  GW_HTTP1_NEED_MORE = 0, /* everything given was consumed; feed more */
  GW_HTTP1_HEAD,          /* a head is complete; the body (if any) follows */
  GW_HTTP1_MESSAGE,       /* a whole message (head and body) is complete */
  GW_HTTP1_UPGRADE,       /* the message asked for an upgrade; the rest is not HTTP */
  GW_HTTP1_ERROR          /* refused: see `status` and `reason` */
} gw_http1_result_t;

/* Embedded in gw_conn_t; lives as long as the connection. */
typedef struct gw_http1_s {
  llhttp_t parser;           /* parser->data points back here */
  gw_req_t *req;             /* receives the head and body; NULL discards the body */
  const char *base;          /* start of the buffer during execute, for offsets */
  const gw_limits_t *limits; /* borrowed from the worker's configuration */
  uint8_t last_was_value;    /* which header part the previous callback delivered */
  uint8_t head_done;         /* the current message's head is complete */
  uint8_t discard_body;      /* drop body bytes instead of storing them */
  uint8_t between_messages;  /* the last message completed; none has begun */
  uint8_t sink_paused;       /* the body sink asked to stop reading */
  uint8_t paused_at;         /* GW_HTTP1_HEAD or GW_HTTP1_MESSAGE: why llhttp paused */
  size_t head_bytes;         /* bytes of the current head so far */
  size_t trailer_bytes;      /* bytes of the current message's trailer fields (dropped) */
  size_t msg_start;          /* offset where the current message's method starts */
  uint8_t msg_started;       /* msg_start is set */
  uint8_t url_done;          /* the whole target has arrived */
  uint8_t field_done;        /* the last header name is complete */
  int status;                /* on GW_HTTP1_ERROR: 400, 413, 414, 417, 431 or 505 */
  const char *reason;        /* on GW_HTTP1_ERROR: why, static storage */
} gw_http1_t;

void gw_http1_init(gw_http1_t *h, const gw_limits_t *limits);
/* Parses buffer bytes [from, to) of a buffer starting at `base`. Sets
 * *consumed to the bytes eaten before it stopped. Callbacks store offsets
 * relative to `base`, so the caller may move the buffer between calls as long
 * as the bytes keep their offsets. */
gw_http1_result_t gw_http1_execute(gw_http1_t *h, const char *base, size_t from, size_t to, size_t *consumed);
/* Ends the pause after GW_HTTP1_HEAD or GW_HTTP1_MESSAGE. */
void gw_http1_resume(gw_http1_t *h);
/* 1 if the parser is between messages (the last one completed). */
int gw_http1_message_complete(const gw_http1_t *h);

#endif
