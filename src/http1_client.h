/*
 * http1_client.h: the HTTP/1.1 response parser of the upstream client, the
 * twin of http1.h on llhttp's response mode.
 *
 * It records the status and the header slices (offsets into the caller's
 * buffer, valid while the caller keeps the head in place), hands body bytes
 * to a callback as they are decoded (chunked framing removed), and reports
 * where the head ended and when the message is complete. Interim 1xx answers
 * (100 Continue) are skipped. It never touches sockets.
 */
#ifndef GW_HTTP1_CLIENT_H
#define GW_HTTP1_CLIENT_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#include "request.h"

typedef struct gw_http1c_s gw_http1c_t;

/* Body bytes, decoded. Returns 0 to go on, or HPE_PAUSED to stop after them. */
typedef int (*gw_http1c_body_cb)(gw_http1c_t *p, const char *at, size_t len);

typedef enum {
  GW_HTTP1C_NEED_MORE = 0, /* all bytes consumed */
  GW_HTTP1C_HEAD,          /* the final head is complete (paused after it) */
  GW_HTTP1C_PAUSED,        /* the body callback asked to pause */
  GW_HTTP1C_DONE,          /* the message is complete */
  GW_HTTP1C_ERROR          /* malformed: see `reason` */
} gw_http1c_result_t;

/* At most this many bytes of trailer fields after a chunked body. */
#define GW_HTTP1C_TRAILER_MAX (64 * 1024)

/* Embedded in an upstream exchange; reset for each exchange. */
struct gw_http1c_s {
  llhttp_t parser;           /* parser->data points here */
  const char *base;          /* the buffer during execute, for offsets */
  gw_http1c_body_cb on_body; /* where body bytes go */
  void *data;                /* the owner, for on_body */
  uint8_t head_request;      /* the request was HEAD: no body follows */
  uint8_t last_was_value;    /* which header part came last */
  uint8_t head_done;         /* the final head is complete */
  uint8_t done;              /* the message is complete */
  uint8_t paused_for;        /* 1 head, 2 body, 3 done: why llhttp paused */
  uint8_t keep_alive;        /* the connection may carry another exchange */
  uint8_t chunked;           /* Transfer-Encoding: chunked */
  uint8_t has_length;        /* Content-Length was given */
  int status;                /* the final status */
  uint64_t content_length;   /* when has_length */
  gw_header_t *headers;      /* slices of the caller's buffer; kept across
                                gw_http1c_init, freed by gw_http1c_free */
  uint32_t headers_cap;      /* entries allocated in headers */
  uint32_t nheaders;
  size_t head_end;      /* offset just past the head in the caller's buffer */
  size_t max_headers;   /* at most this many headers */
  size_t trailer_bytes; /* bytes of trailer fields so far (dropped) */
  const char *reason;   /* on error, static */
};

/* Readies `p` for a new response. The first call needs `p` zeroed; later
 * calls keep the header array for reuse. */
void gw_http1c_init(gw_http1c_t *p, int head_request, gw_http1c_body_cb on_body, void *data);
/* Frees the header array. */
void gw_http1c_free(gw_http1c_t *p);
/* Parses [from, to) of the buffer at `base`; *consumed bytes were eaten. */
gw_http1c_result_t gw_http1c_execute(gw_http1c_t *p, const char *base, size_t from, size_t to,
                                     size_t *consumed);
/* Ends a pause after HEAD or PAUSED. */
void gw_http1c_resume(gw_http1c_t *p);
/* The peer closed: completes a body delimited by the close. Returns DONE
 * or ERROR (the message was cut short). */
gw_http1c_result_t gw_http1c_finish(gw_http1c_t *p);

#endif
