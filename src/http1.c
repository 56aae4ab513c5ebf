/*
 * http1.c: request parsing on llhttp (see http1.h).
 *
 * llhttp delivers each part of the head (target, header names and values)
 * in pieces when a head spans several reads. Because the connection appends
 * every read to one buffer and never moves the head while it is parsed,
 * consecutive pieces are adjacent: a part is the offset of its first piece
 * plus the summed lengths.
 *
 * What llhttp already refuses in its strict mode (Content-Length with
 * Transfer-Encoding, duplicate Content-Length, bad chunk sizes, bare CR,
 * unknown transfer codings) is mapped to 400. What it accepts but a gateway
 * must not forward ambiguously is refused here: obs-fold continuation lines,
 * a missing or repeated Host in HTTP/1.1.
 */
#include "http1.h"

#include <string.h>

#define H(p) ((gw_http1_t *)(p)->data)

static int reject(gw_http1_t *h, int status, const char *reason) {
  h->status = status;
  h->reason = reason;
  return -1;
}

static int on_message_begin(llhttp_t *p) {
  gw_http1_t *h = H(p);
  h->head_bytes = 0;
  h->trailer_bytes = 0;
  h->msg_started = 0;
  h->url_done = 0;
  h->field_done = 0;
  h->head_done = 0;
  h->last_was_value = 0;
  h->between_messages = 0;
  return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t len) {
  gw_http1_t *h = H(p);
  if (!h->msg_started) {
    h->msg_start = (size_t)(at - h->base);
    h->msg_started = 1;
  }
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  gw_http1_t *h = H(p);
  gw_req_t *r = h->req;
  if (r->url_len == 0) r->url_off = (uint32_t)(at - h->base);
  r->url_len += (uint32_t)len;
  if (r->url_len > h->limits->header_bytes) return reject(h, 414, "request target too long");
  return 0;
}

/* A header name is complete: the next name piece starts a new header, even
 * when this one's value is empty (llhttp then delivers no value piece). */
static int on_header_field_complete(llhttp_t *p) {
  H(p)->field_done = 1;
  H(p)->last_was_value = 0;
  return 0;
}

static int on_url_complete(llhttp_t *p) {
  H(p)->url_done = 1;
  return 0;
}

static void grow_headers(gw_req_t *r) {
  uint32_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
  gw_header_t *a = gw_arena_alloc(&r->pool, cap * sizeof *a);
  if (r->nheaders) memcpy(a, r->headers, r->nheaders * sizeof *a);
  r->headers = a;
  r->headers_cap = cap;
}

/* Trailer fields (after a chunked body) are dropped, as docs/http.md says:
 * they are not the head, and their bytes are not kept where the head's
 * offsets point (body bytes before them may have been compacted away).
 * They are bounded like a head. */
static int trailer_piece(gw_http1_t *h, size_t len) {
  h->trailer_bytes += len;
  if (h->trailer_bytes > h->limits->header_bytes) return reject(h, 431, "trailer fields too large");
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  gw_http1_t *h = H(p);
  if (h->head_done) return trailer_piece(h, len);
  gw_req_t *r = h->req;
  if (r->nheaders == 0 || h->field_done) {
    if (r->nheaders >= h->limits->headers) return reject(h, 431, "too many headers");
    if (r->nheaders == r->headers_cap) grow_headers(r);
    gw_header_t *hd = &r->headers[r->nheaders++];
    memset(hd, 0, sizeof *hd);
    hd->name_off = (uint32_t)(at - h->base);
  }
  r->headers[r->nheaders - 1].name_len += (uint32_t)len;
  h->last_was_value = 0;
  h->field_done = 0;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  gw_http1_t *h = H(p);
  if (h->head_done) return trailer_piece(h, len);
  gw_req_t *r = h->req;
  gw_header_t *hd = &r->headers[r->nheaders - 1];
  /* An empty value may come as a zero-length piece placed anywhere (even
   * past the line end): it adds nothing, and must not trip the fold check. */
  if (len == 0) return 0;
  uint32_t off = (uint32_t)(at - h->base);
  if (!h->last_was_value) {
    /* "Name:\r\n value" is a fold whose first line is empty: llhttp then
     * delivers only the continuation. Between the colon and the value there
     * may be blanks, never a line end. */
    for (uint32_t k = hd->name_off + hd->name_len; k < off; k++)
      if (h->base[k] == '\r' || h->base[k] == '\n') return reject(h, 400, "obsolete line folding");
    hd->value_off = off;
  } else if (off != hd->value_off + hd->value_len) {
    /* llhttp accepts obs-fold and delivers the continuation line as another
     * piece of the same value, after a gap (the CRLF and the indent). RFC
     * 9112 5.2 lets a server refuse folding, and a proxy that forwards it
     * invites smuggling. */
    return reject(h, 400, "obsolete line folding");
  }
  hd->value_len += (uint32_t)len;
  h->last_was_value = 1;
  /* No CR or LF inside a piece: strict llhttp refuses them (bare CR) or ends
   * the value at them (the gap check above catches what follows). */
  return 0;
}

/* Whether the n bytes at s are `lower` (lower case) in any case. Inline:
 * the names compared here are a few bytes, and a call to strncasecmp costs
 * more than the comparison (it ran three times per request). */
static inline int equals_lower(const char *s, const char *lower, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)lower[i]) return 0;
  }
  return 1;
}

static int header_is(const gw_http1_t *h, const gw_header_t *hd, const char *name) {
  size_t n = strlen(name);
  return hd->name_len == n && equals_lower(h->base + hd->name_off, name, n);
}

static int value_is(const gw_http1_t *h, const gw_header_t *hd, const char *value) {
  size_t n = strlen(value);
  return hd->value_len == n && equals_lower(h->base + hd->value_off, value, n);
}

static int inspect_headers(gw_http1_t *h, gw_req_t *r) {
  int saw_te = 0;
  for (uint32_t i = 0; i < r->nheaders; i++) {
    gw_header_t *hd = &r->headers[i];
    /* Trailing blanks are not part of a value (RFC 9110 5.5); llhttp keeps them. */
    while (hd->value_len > 0 && (h->base[hd->value_off + hd->value_len - 1] == ' ' ||
                                 h->base[hd->value_off + hd->value_len - 1] == '\t'))
      hd->value_len--;
    /* llhttp lets "Name : value" through; a name must be a token (RFC 9110
     * 5.1), and a proxy that trims such a name invites smuggling. */
    if (!gw_header_valid(h->base + hd->name_off, hd->name_len, NULL, 0))
      return reject(h, 400, "invalid header name");
    if (header_is(h, hd, "host")) {
      if (r->host_index) return reject(h, 400, "more than one Host header");
      r->host_index = i + 1;
    } else if (header_is(h, hd, "transfer-encoding")) {
      saw_te = 1;
    } else if (header_is(h, hd, "expect")) {
      if (!value_is(h, hd, "100-continue")) return reject(h, 417, "unsupported expectation");
      /* RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored (it
       * cannot take a 1xx answer). */
      r->expect_continue = r->http_minor >= 1;
    }
  }
  /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
   * framing (1.0 has no chunked coding); reading it as chunked is how a
   * 1.0 hop in front gets a request smuggled past it. */
  if (saw_te && r->http_major == 1 && r->http_minor == 0)
    return reject(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
  if (r->http_major == 1 && r->http_minor >= 1 && !r->host_index)
    return reject(h, 400, "missing Host header");
  /* RFC 9112 6.3: a request whose Transfer-Encoding does not end in
   * chunked has no knowable length; llhttp lets some through. */
  if (saw_te && !r->chunked) return reject(h, 400, "Transfer-Encoding without chunked");
  return 0;
}

/* RFC 9112 3.2.2: a server must accept a target in absolute form
 * ("GET http://host/path"), and take the host from it rather than from the
 * Host header. The target is rewritten in place, in the connection's read
 * buffer, to its origin form, so that routing, req.path and proxying see
 * "/path"; the Host header's value is pointed at the authority, which stays
 * just before the path (moved one byte left when the path is empty, to make
 * room for its "/"). A userinfo part or an empty host is refused. */
static int absolute_to_origin_form(gw_http1_t *h, gw_req_t *r) {
  char *url = (char *)h->base + r->url_off; /* the read buffer, writable */
  size_t skip;
  if (r->url_len > 7 && equals_lower(url, "http://", 7)) skip = 7;
  else if (r->url_len > 8 && equals_lower(url, "https://", 8)) skip = 8;
  else return 0;
  char *auth = url + skip, *end = url + r->url_len, *path = auth;
  while (path < end && *path != '/' && *path != '?') path++;
  size_t alen = (size_t)(path - auth);
  if (alen == 0 || memchr(auth, '@', alen)) return reject(h, 400, "invalid absolute-form target");
  if (path == end || *path == '?') {
    memmove(auth - 1, auth, alen);
    auth--;
    *--path = '/';
  }
  r->url_off = (uint32_t)(path - h->base);
  r->url_len = (uint32_t)(end - path);
  if (r->host_index) {
    gw_header_t *host = &r->headers[r->host_index - 1];
    host->value_off = (uint32_t)(auth - h->base);
    host->value_len = (uint32_t)alen;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  gw_http1_t *h = H(p);
  gw_req_t *r = h->req;
  r->method = (uint8_t)llhttp_get_method(p);
  r->http_major = llhttp_get_http_major(p);
  r->http_minor = llhttp_get_http_minor(p);
  r->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
  r->chunked = (p->flags & F_CHUNKED) != 0;
  r->upgrade = llhttp_get_upgrade(p) != 0;
  r->content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;
  /* llhttp takes an HTTP/0.9 request line ("GET /x", no version) and any
   * major version; the gateway speaks HTTP/1.x only. */
  if (r->http_major == 0) return reject(h, 400, "HTTP/0.9 request line");
  if (r->http_major != 1) return reject(h, 505, "HTTP version not supported");
  if (inspect_headers(h, r) != 0) return -1;
  if (r->method != HTTP_CONNECT && absolute_to_origin_form(h, r) != 0) return -1;
  const char *url = h->base + r->url_off;
  const char *q = memchr(url, '?', r->url_len);
  r->path_len = q ? (uint32_t)(q - url) : r->url_len;
  h->head_done = 1;
  h->paused_at = GW_HTTP1_HEAD;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  gw_http1_t *h = H(p);
  gw_req_t *r = h->req;
  if (h->discard_body || !r) return 0;
  if (r->body_sink) {
    /* Streamed to an upstream: not stored, so not bounded by body_bytes.
     * A request to pause is acted on by the connection after this execute. */
    if (r->body_sink(r->body_sink_data, at, len, 0) == 1) h->sink_paused = 1;
    return 0;
  }
  if (r->body.len + len > h->limits->body_bytes) return reject(h, 413, "body too large");
  if (gw_buf_try_reserve(&r->body, len) != 0) return reject(h, 413, "body too large");
  memcpy(r->body.base + r->body.len, at, len);
  r->body.len += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  gw_http1_t *h = H(p);
  h->paused_at = GW_HTTP1_MESSAGE;
  h->head_done = 0;
  h->head_bytes = 0;
  h->between_messages = 1;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_method = on_method,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_url_complete = on_url_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void gw_http1_init(gw_http1_t *h, const gw_limits_t *limits) {
  memset(h, 0, sizeof *h);
  llhttp_init(&h->parser, HTTP_REQUEST, &settings);
  h->parser.data = h;
  h->limits = limits;
  h->between_messages = 1;
}

static gw_http1_result_t parse_error(gw_http1_t *h, llhttp_errno_t err) {
  if (h->status == 0) {
    h->status = 400;
    h->reason = llhttp_get_error_reason(&h->parser);
    if (!h->reason) h->reason = llhttp_errno_name(err);
  }
  return GW_HTTP1_ERROR;
}

/* llhttp refuses a bare LF ending a header line, but takes one ending the
 * request line or as the blank line. Lines must end in CRLF (RFC 9112 2.2
 * lets a server refuse a bare LF), and parsers that disagree on line ends
 * are how requests get smuggled past a proxy. */
static int has_bare_lf(const char *head, size_t len) {
  const char *p = head, *end = head + len;
  while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
    if (p == head || p[-1] != '\r') return 1;
    p++;
  }
  return 0;
}

gw_http1_result_t gw_http1_execute(gw_http1_t *h, const char *base, size_t from, size_t to,
                                   size_t *consumed) {
  int head_was_done = h->head_done;
  h->base = base;
  llhttp_errno_t err = llhttp_execute(&h->parser, base + from, to - from);
  size_t used = to - from;
  if (err != HPE_OK) {
    const char *pos = llhttp_get_error_pos(&h->parser);
    if (pos) used = (size_t)(pos - (base + from));
  }
  *consumed = used;
  if (!head_was_done) h->head_bytes += used;
  switch (err) {
    case HPE_OK:
      /* A head still arriving is refused as soon as what came of it is
       * over the limit: the whole head would be too. The raw byte count
       * stops bytes that never start a message (blank lines) as well. */
      if (!h->head_done &&
          /* While the target still arrives, on_url decides (414 past the limit). */
          ((!h->between_messages && h->msg_started && h->url_done &&
            to - h->msg_start > h->limits->header_bytes) ||
           /* Blank lines before a request line: llhttp skips them without
            * beginning a message, so only this count bounds them. */
           h->head_bytes > 2 * h->limits->header_bytes + 4096)) {
        h->status = 431;
        h->reason = "request head too large";
        return GW_HTTP1_ERROR;
      }
      return GW_HTTP1_NEED_MORE;
    case HPE_PAUSED:
      /* limits.header_bytes counts the whole head, request line to the
       * blank line, however the bytes were split into reads. */
      if (h->paused_at == GW_HTTP1_HEAD && h->msg_started &&
          from + used - h->msg_start > h->limits->header_bytes) {
        h->status = 431;
        h->reason = "request head too large";
        return GW_HTTP1_ERROR;
      }
      /* Blank lines before the request line, bounded here too when the
       * whole head came in the same read as them. */
      if (h->paused_at == GW_HTTP1_HEAD && !head_was_done &&
          h->head_bytes > 2 * h->limits->header_bytes + 4096) {
        h->status = 431;
        h->reason = "request head too large";
        return GW_HTTP1_ERROR;
      }
      if (h->paused_at == GW_HTTP1_HEAD && h->msg_started &&
          has_bare_lf(base + h->msg_start, from + used - h->msg_start)) {
        h->status = 400;
        h->reason = "bare LF in the request head";
        return GW_HTTP1_ERROR;
      }
      return (gw_http1_result_t)h->paused_at;
    case HPE_PAUSED_UPGRADE: return GW_HTTP1_UPGRADE;
    default: return parse_error(h, err);
  }
}

void gw_http1_resume(gw_http1_t *h) { llhttp_resume(&h->parser); }

int gw_http1_message_complete(const gw_http1_t *h) { return h->between_messages; }
