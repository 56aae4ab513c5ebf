/*
 * request.h: one HTTP request as the core and the Lua side see it.
 *
 * A gw_req_t is allocated by its connection when a new head starts
 * (gw_req_new) and freed by it after the response is written or the
 * connection dies (gw_req_free). Header names and values stay slices
 * (offsets) into the connection's read buffer, which does not move the head
 * while the request lives; only what a script changes is copied, into the
 * request's arena.
 *
 * Lua holds (pointer, serial) pairs. Requests come from a free list whose
 * memory is never returned to malloc, and `serial` changes at every free, so
 * a stale handle is detected by comparing serials (gw_req_check) instead of
 * touching freed memory: "request already finished".
 */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H

#include <stdint.h>
#include <stddef.h>

#include "buf.h"
#include "mem.h"

typedef struct gw_conn_s gw_conn_t;
typedef struct gw_task_s gw_task_t;
typedef struct gw_waiter_s gw_waiter_t;

typedef struct gw_header_s {
  uint32_t name_off, name_len;   /* slice of the connection's read buffer */
  uint32_t value_off, value_len; /* slice of the same buffer; not always after the name (an
                                    absolute-form target's authority is the Host value) */
} gw_header_t;

/* A header set or removed by a script; allocated in the request's arena. */
typedef struct gw_header_edit_s {
  struct gw_header_edit_s *next; /* newer edits first */
  char *name;                    /* lower-case */
  size_t name_len;
  char *value; /* NULL: removed */
  size_t value_len;
} gw_header_edit_t;

typedef enum {
  GW_BODY_UNREAD = 0, /* nobody asked for it yet; bytes wait in the socket or buffer */
  GW_BODY_READING,    /* req:body() is waiting for it */
  GW_BODY_DONE,       /* all of it is in `body` */
  GW_BODY_TOO_BIG,    /* over limits.body_bytes: 413 */
  GW_BODY_STREAMING,  /* flowing to body_sink (up:proxy), never stored */
  GW_BODY_FAILED      /* malformed (bad chunk) or connection lost */
} gw_body_state_t;

typedef enum {
  GW_RESP_NONE = 0, /* nothing sent yet */
  GW_RESP_SENT      /* head and body handed to the connection */
} gw_resp_state_t;

/* Owned by its gw_conn_t; see the file comment for its lifetime. */
typedef struct gw_req_s {
  uint32_t serial;            /* changes at every alloc and free; Lua handles compare it */
  gw_conn_t *conn;            /* the owner; NULL only while on the free list */
  gw_arena_t pool;            /* whatever dies with the request */
  struct gw_req_s *next_free; /* free-list link */

  /* The head, filled by http1.c. */
  uint8_t method; /* llhttp_method_t */
  uint8_t http_major, http_minor;
  uint8_t keep_alive;        /* the client allows another request after this one */
  uint8_t expect_continue;   /* "Expect: 100-continue" not yet answered */
  uint8_t chunked;           /* Transfer-Encoding: chunked */
  uint8_t upgrade;           /* Upgrade or CONNECT */
  uint32_t url_off, url_len; /* the request target, slice of the read buffer */
  uint32_t path_len;         /* bytes of the target before '?' */
  gw_header_t *headers;      /* pool-allocated array */
  uint32_t nheaders, headers_cap;
  uint32_t host_index;     /* index+1 of the Host header, 0 if none */
  uint64_t content_length; /* declared, or 0 */
  gw_header_edit_t *edits; /* changes made by scripts */

  /* The body, read on demand. */
  gw_body_state_t body_state;
  gw_buf_t body;            /* decoded body bytes (chunked framing removed) */
  gw_waiter_t *body_waiter; /* the coroutine waiting in req:body(), or NULL */
  /* GW_BODY_STREAMING: body bytes go here as they are decoded; end is 1 when
   * the body is complete, -1 when it failed. Returns 1 to pause reading. */
  int (*body_sink)(void *data, const char *p, size_t n, int end);
  void *body_sink_data;

  /* Processing and the response. */
  gw_task_t *task; /* the coroutine running the handler, or NULL */
  gw_resp_state_t resp_state;
  int status;               /* response status, for the log */
  uint8_t close_after;      /* close the connection after this response */
  uint8_t head_held;        /* resp_head is finished but not written yet (proxy.c) */
  uint8_t own_date;         /* the head has a Date from a script: the core adds none */
  size_t resp_bytes;        /* bytes of the response, head included */
  gw_buf_t resp_head;       /* response head under construction */
  uint64_t start_ns;        /* uv_hrtime() when the head started */
  char id[129];             /* request id, "" until made or set (incoming ids up to 128 bytes) */
  char *route;              /* matched pattern (pool), or NULL */
  struct gw_proxy_s *proxy; /* up:proxy in progress, or NULL; freed with the request */
} gw_req_t;

/* Takes a request from the free list (or makes one) for `conn`. */
gw_req_t *gw_req_new(gw_conn_t *conn);
/* Returns `r` to the free list; its serial changes so old handles die. */
void gw_req_free(gw_req_t *r);
/* 1 if (r, serial) still names a live request. */
static inline int gw_req_check(const gw_req_t *r, uint32_t serial) {
  return r != NULL && r->serial == serial && r->conn != NULL;
}

/* The connection's read buffer, against which header slices are resolved. */
const char *gw_req_buffer(const gw_req_t *r);
/* The script's edit of header `name` (set or removed), or NULL if it made none. */
const gw_header_edit_t *gw_req_header_edit(const gw_req_t *r, const char *name, size_t len);
/* Finds header `name` (case-insensitive), edits first. Several values are
 * joined with ", " into the pool. Returns NULL when absent; *len set. */
const char *gw_req_header(gw_req_t *r, const char *name, size_t name_len, size_t *len);
/* The same as the client sent it, whatever scripts changed (what the
 * client's own Connection header nominates stays the client's). */
const char *gw_req_header_client(gw_req_t *r, const char *name, size_t name_len, size_t *len);
/* Records a script's change to a request header; value NULL removes it.
 * Returns GW_EHEADER if the name is not a token or the value has CR, LF or NUL. */
int gw_req_set_header(gw_req_t *r, const char *name, size_t name_len, const char *value, size_t value_len);
/* Fills r->id with a new random id unless it has one; returns it. */
const char *gw_req_id(gw_req_t *r);
/* 1 if `name` is a valid header token and `value` has no CR, LF or NUL. */
int gw_header_valid(const char *name, size_t name_len, const char *value, size_t value_len);

#endif
