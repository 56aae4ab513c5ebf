/*
 * http1_client.c: response parsing on llhttp (see http1_client.h).
 *
 * As in http1.c, head parts arrive in pieces that are adjacent in the
 * caller's buffer, so a part is its first offset plus the summed lengths.
 */
#include "http1_client.h"

#include <stdlib.h>
#include <string.h>

#include "mem.h"

#define P(p) ((gw_http1c_t *)(p)->data)

enum { PAUSED_HEAD = 1, PAUSED_BODY = 2, PAUSED_DONE = 3 };

static int on_message_begin(llhttp_t *lp) {
  gw_http1c_t *p = P(lp);
  p->nheaders = 0;
  p->last_was_value = 0;
  return 0;
}

/* Trailer fields (after a chunked body) are dropped: the head's header
 * slices point into the head's bytes, which the caller keeps or copies,
 * while body bytes (and trailers among them) are consumed as they pass.
 * They are bounded all the same. */
static int trailer_piece(gw_http1c_t *p, size_t len) {
  p->trailer_bytes += len;
  if (p->trailer_bytes > GW_HTTP1C_TRAILER_MAX) {
    p->reason = "trailer fields too large in the upstream response";
    return -1;
  }
  return 0;
}

static int on_header_field(llhttp_t *lp, const char *at, size_t len) {
  gw_http1c_t *p = P(lp);
  if (p->head_done) return trailer_piece(p, len);
  if (p->nheaders == 0 || p->last_was_value) {
    if (p->nheaders >= p->max_headers) {
      p->reason = "too many headers in the upstream response";
      return -1;
    }
    if (p->nheaders == p->headers_cap) {
      p->headers_cap = p->headers_cap ? p->headers_cap * 2 : 16;
      p->headers = gw_xrealloc(p->headers, p->headers_cap * sizeof *p->headers);
    }
    gw_header_t *h = &p->headers[p->nheaders++];
    memset(h, 0, sizeof *h);
    h->name_off = (uint32_t)(at - p->base);
  }
  p->headers[p->nheaders - 1].name_len += (uint32_t)len;
  p->last_was_value = 0;
  return 0;
}

static int on_header_value(llhttp_t *lp, const char *at, size_t len) {
  gw_http1c_t *p = P(lp);
  if (p->head_done) return trailer_piece(p, len);
  gw_header_t *h = &p->headers[p->nheaders - 1];
  uint32_t off = (uint32_t)(at - p->base);
  if (!p->last_was_value) h->value_off = off;
  else if (off != h->value_off + h->value_len) {
    p->reason = "obsolete line folding in the upstream response";
    return -1;
  }
  h->value_len += (uint32_t)len;
  p->last_was_value = 1;
  return 0;
}

/* 1 if a Transfer-Encoding field names any coding but a single chunked. */
static int other_transfer_coding(const gw_http1c_t *p) {
  for (uint32_t i = 0; i < p->nheaders; i++) {
    const gw_header_t *h = &p->headers[i];
    if (h->name_len != 17 || strncasecmp(p->base + h->name_off, "transfer-encoding", 17) != 0) continue;
    const char *v = p->base + h->value_off;
    size_t n = h->value_len;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    if (n != 7 || strncasecmp(v, "chunked", 7) != 0) return 1;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *lp) {
  gw_http1c_t *p = P(lp);
  int status = llhttp_get_status_code(lp);
  /* llhttp reads "HTTP/1.1 2 OK" as status 2: outside 100-599 a status is
   * invalid (RFC 9110 15), and passing it on would make the client frame
   * the answer by another status than the one it gets. */
  if (status < 100 || status > 599) {
    p->reason = "invalid status in the upstream response";
    return -1;
  }
  /* llhttp takes a line that is only ":" as a header with an empty name. */
  for (uint32_t i = 0; i < p->nheaders; i++)
    if (p->headers[i].name_len == 0) {
      p->reason = "empty header name in the upstream response";
      return -1;
    }
  /* 1xx answers are interim: the final answer follows on the same stream.
   * 101 is final for an upgrade, which this parser does not carry. */
  if (status >= 100 && status < 200 && status != 101) return 0;
  if (other_transfer_coding(p)) {
    /* The body is re-framed for the client, so a coding but chunked would
     * reach it undeclared (gzip bytes as plain ones): refused, as nginx
     * does ("upstream sent unknown Transfer-Encoding"). */
    p->reason = "unsupported transfer coding in the upstream response";
    return -1;
  }
  p->status = status;
  p->keep_alive = (uint8_t)llhttp_should_keep_alive(lp);
  p->chunked = (lp->flags & F_CHUNKED) != 0;
  p->has_length = (lp->flags & F_CONTENT_LENGTH) != 0;
  p->content_length = p->has_length ? lp->content_length : 0;
  p->head_done = 1;
  p->paused_for = PAUSED_HEAD;
  /* A HEAD answer, a 204 and a 304 end with their head whatever their
   * headers say (RFC 9112 6.3): llhttp skips a body only when told. A 304's
   * Content-Length describes the representation, not bytes that follow. */
  if (status == 204 || status == 304) {
    /* A 204 that announced a body may still send one (a chunked 0 after
     * its head): such a connection is not reused, where those bytes would
     * be read as the next answer. A 304's length is the representation's. */
    if (p->chunked || (status == 204 && p->has_length && p->content_length > 0)) p->keep_alive = 0;
    p->chunked = 0;
    p->has_length = 0;
    p->content_length = 0;
    return 1;
  }
  return p->head_request ? 1 : HPE_PAUSED;
}

static int on_body(llhttp_t *lp, const char *at, size_t len) {
  gw_http1c_t *p = P(lp);
  int rc = p->on_body ? p->on_body(p, at, len) : 0;
  if (rc == HPE_PAUSED) p->paused_for = PAUSED_BODY;
  return rc;
}

static int on_message_complete(llhttp_t *lp) {
  gw_http1c_t *p = P(lp);
  if (!p->head_done) return 0; /* an interim 1xx ended */
  p->done = 1;
  p->paused_for = PAUSED_DONE;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void gw_http1c_init(gw_http1c_t *p, int head_request, gw_http1c_body_cb body_cb, void *data) {
  gw_header_t *headers = p->headers;
  uint32_t cap = p->headers_cap;
  memset(p, 0, sizeof *p);
  p->headers = headers;
  p->headers_cap = cap;
  llhttp_init(&p->parser, HTTP_RESPONSE, &settings);
  p->parser.data = p;
  p->head_request = (uint8_t)head_request;
  p->on_body = body_cb;
  p->data = data;
  p->max_headers = 100;
}

gw_http1c_result_t gw_http1c_execute(gw_http1c_t *p, const char *base, size_t from, size_t to,
                                     size_t *consumed) {
  p->base = base;
  p->paused_for = 0;
  llhttp_errno_t err = llhttp_execute(&p->parser, base + from, to - from);
  size_t used = to - from;
  if (err != HPE_OK) {
    const char *pos = llhttp_get_error_pos(&p->parser);
    if (pos) used = (size_t)(pos - (base + from));
  }
  *consumed = used;
  if (err == HPE_OK) return GW_HTTP1C_NEED_MORE;
  if (err == HPE_PAUSED) {
    if (p->paused_for == PAUSED_HEAD) {
      p->head_end = from + used;
      return GW_HTTP1C_HEAD;
    }
    return p->paused_for == PAUSED_DONE ? GW_HTTP1C_DONE : GW_HTTP1C_PAUSED;
  }
  if (!p->reason) p->reason = llhttp_get_error_reason(&p->parser);
  if (!p->reason) p->reason = "malformed upstream response";
  return GW_HTTP1C_ERROR;
}

void gw_http1c_resume(gw_http1c_t *p) { llhttp_resume(&p->parser); }

void gw_http1c_free(gw_http1c_t *p) {
  free(p->headers);
  p->headers = NULL;
  p->headers_cap = 0;
}

gw_http1c_result_t gw_http1c_finish(gw_http1c_t *p) {
  if (p->done) return GW_HTTP1C_DONE;
  llhttp_errno_t err = llhttp_finish(&p->parser);
  if ((err == HPE_OK || err == HPE_PAUSED) && p->head_done && p->done) return GW_HTTP1C_DONE;
  if (err == HPE_OK && p->head_done && !p->chunked && !p->has_length) {
    p->done = 1;
    return GW_HTTP1C_DONE;
  }
  p->reason = "upstream closed the connection before the response ended";
  return GW_HTTP1C_ERROR;
}
