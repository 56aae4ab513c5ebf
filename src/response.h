/*
 * response.h: serialising response heads and sending buffered answers.
 *
 * A response is built in three steps, all in the request's resp_head buffer:
 * gw_response_start (status line), gw_response_header (each script header,
 * checked for CR/LF), gw_response_send (framing headers, Date, then one
 * vectored write of head and body). The Date header text is cached and
 * rebuilt at most once a second.
 */
#ifndef GW_RESPONSE_H
#define GW_RESPONSE_H

#include <stddef.h>
#include <uv.h>

#include "request.h"

/* Begins a response with `status` (100..599; anything else becomes 500).
 * Returns GW_ESTATE if one was already sent. A 1xx cannot be final: sending
 * it answers 500 instead (a 101 passes only as GW_FRAMING_UPGRADE of an
 * upgrade request). */
int gw_response_start(gw_req_t *r, int status);
/* Adds a header. Framing headers (Content-Length, Transfer-Encoding,
 * Connection) given by a script are ignored: the core decides framing.
 * Returns GW_EHEADER when the name or value is invalid. */
int gw_response_header(gw_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen);
typedef enum {
  GW_FRAMING_LENGTH = 0, /* Content-Length: length */
  GW_FRAMING_CHUNKED,    /* Transfer-Encoding: chunked; the caller frames the body */
  GW_FRAMING_CLOSE,      /* the body ends when the connection closes */
  GW_FRAMING_NONE,       /* no body and no length (1xx, 204, 304) */
  GW_FRAMING_UPGRADE     /* a 101: no Connection header of ours, no framing */
} gw_framing_t;

/* Adds a header without the filter of gw_response_header (for the
 * Connection: Upgrade of a 101). The caller checked name and value. */
void gw_response_add_raw(gw_req_t *r, const char *name, const char *value, size_t vlen);
/* Finishes and writes the head only; the caller writes the body itself
 * (streaming). Marks the response sent. A status that cannot be final
 * (see gw_response_start) is answered 500 instead and GW_ESTATE returned. */
int gw_response_send_head(gw_req_t *r, gw_framing_t framing, uint64_t length);
/* The same, but the head is held back and goes out with the first body
 * bytes given to gw_response_flush_head: one write instead of two. */
int gw_response_hold_head(gw_req_t *r, gw_framing_t framing, uint64_t length);
/* Writes the held head (if any) followed by `more` (up to 7 buffers). */
void gw_response_flush_head(gw_req_t *r, const uv_buf_t *more, unsigned n);
/* Finishes the head and writes head and body. The body is copied if the
 * socket cannot take it at once, so the caller's memory is free after. A
 * 1xx status is answered with a 500 JSON error instead (and 0 returned). */
int gw_response_send(gw_req_t *r, const char *body, size_t len);
/* The answer to a HEAD whose body is not at hand (an upstream answered the
 * HEAD): the head only, with Content-Length `length` (none if < 0, or for
 * a status without a body). */
int gw_response_send_head_of(gw_req_t *r, int64_t length);
/* A complete JSON error answer {"error": msg, "request_id": id}, for
 * errors found before or outside Lua (400, 408, 413...). */
void gw_response_error(gw_req_t *r, int status, const char *msg);
/* The same, with "Name: value\r\n" header lines added (a proxied answer's
 * headers set by a script, when the upstream failed instead). */
void gw_response_error_with(gw_req_t *r, int status, const char *msg, const char *lines, size_t llen);
/* Adds "Name: value\r\n" lines to the response head being built. Returns
 * NULL, or what is wrong with the first bad line (lines before it stay). */
const char *gw_response_header_lines(gw_req_t *r, const char *lines, size_t llen);
/* The reason phrase of `status`, or "Unknown". */
const char *gw_status_reason(int status);

#endif
