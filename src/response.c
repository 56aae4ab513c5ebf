/*
 * response.c: response heads and buffered answers (see response.h).
 */
#include "response.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#include "conn.h"
#include "errors.h"
#include "log.h"
#include "worker.h"

const char *gw_status_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

/* "Date: ...\r\n", rebuilt when the second changes. Every answer reads the
 * coarse wall clock (the kernel's last tick, a few ms behind at most): 5 ns
 * against 23 for the precise one on our VM, and a Date needs only seconds. */
static struct {
  time_t second;
  char text[64];
  size_t len;
} date_cache;

static void refresh_date(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  time_t now = ts.tv_sec;
  if (now == date_cache.second && date_cache.len) return;
  struct tm tm;
  gmtime_r(&now, &tm);
  date_cache.len =
      strftime(date_cache.text, sizeof date_cache.text, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  date_cache.second = now;
}

int gw_response_start(gw_req_t *r, int status) {
  if (r->resp_state != GW_RESP_NONE) return GW_ESTATE;
  /* RFC 9110 15: no status outside 100-599 exists. A 1xx is kept for now:
   * only the framing at send time says whether it may go (a 101 tunnel). */
  if (status < 100 || status > 599) status = 500;
  r->status = status;
  r->resp_head.len = 0;
  r->own_date = 0;
  if (status == 200) {
    gw_buf_append(&r->resp_head, "HTTP/1.1 200 OK\r\n", 17);
    return 0;
  }
  char line[64];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, gw_status_reason(status));
  gw_buf_append(&r->resp_head, line, (size_t)n);
  return 0;
}

/* Appends "name: value\r\n" to the head being built, with one reserve. */
static void append_header_line(gw_buf_t *b, const char *name, size_t nlen, const char *value, size_t vlen) {
  gw_buf_reserve(b, nlen + vlen + 4);
  char *p = b->base + b->len;
  memcpy(p, name, nlen);
  memcpy(p + nlen, ": ", 2);
  if (vlen) memcpy(p + nlen + 2, value, vlen); /* value may be NULL then */
  memcpy(p + nlen + 2 + vlen, "\r\n", 2);
  b->len += nlen + vlen + 4;
}

static int name_is(const char *name, size_t nlen, const char *what) {
  size_t n = strlen(what);
  return nlen == n && strncasecmp(name, what, n) == 0;
}

int gw_response_header(gw_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen) {
  if (r->resp_state != GW_RESP_NONE) return GW_ESTATE;
  if (!gw_header_valid(name, nlen, value, vlen)) return GW_EHEADER;
  if (name_is(name, nlen, "content-length") || name_is(name, nlen, "transfer-encoding")) return 0;
  if (name_is(name, nlen, "connection")) {
    if (vlen == 5 && strncasecmp(value, "close", 5) == 0) r->close_after = 1;
    return 0;
  }
  /* Date is a single field (RFC 9110 6.6.1): a script's replaces the core's,
   * and a second one (another spelling in the same table) is dropped. */
  if (name_is(name, nlen, "date")) {
    if (r->own_date) return 0;
    r->own_date = 1;
  }
  append_header_line(&r->resp_head, name, nlen, value, vlen);
  return 0;
}

/* 1xx, 204 and 304 answers carry no body and no Content-Length (RFC 9110 8.6). */
static int status_has_body(int status) { return !(status < 200 || status == 204 || status == 304); }

static void append_length(gw_buf_t *b, uint64_t len) {
  /* Formatted by hand: this runs for every answer and snprintf is slow. */
  char line[48], digits[24], *d = digits + sizeof digits;
  uint64_t v = len;
  do {
    *--d = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  size_t nd = (size_t)(digits + sizeof digits - d);
  memcpy(line, "Content-Length: ", 16);
  memcpy(line + 16, d, nd);
  memcpy(line + 16 + nd, "\r\n", 2);
  gw_buf_append(b, line, 18 + nd);
}

void gw_response_add_raw(gw_req_t *r, const char *name, const char *value, size_t vlen) {
  append_header_line(&r->resp_head, name, strlen(name), value, vlen);
}

/* May the status started go out as the final answer with this framing?
 * 200-599 may; of the 1xx only a 101 that switches an upgrade request to a
 * tunnel. Any other 1xx is interim (RFC 9110 15.2): the client would wait
 * for the real answer and take the next request's for it. */
static int status_is_final(const gw_req_t *r, gw_framing_t framing) {
  if (r->status >= 200) return 1;
  return r->status == 101 && framing == GW_FRAMING_UPGRADE && r->upgrade;
}

/* Answers 500 instead of a head whose status cannot be final. The script
 * layers refuse such statuses first (runtime.lua); this catches any caller. */
static void refuse_interim_status(gw_req_t *r) {
  gw_log_error("request %s: status %d cannot be a final answer; sending 500 instead", gw_req_id(r),
               r->status);
  gw_response_error(r, 500, "internal error");
}

/* Appends Date, framing and Connection headers and the blank line. */
static void finish_head(gw_req_t *r, gw_framing_t framing, uint64_t length) {
  gw_buf_t *b = &r->resp_head;
  refresh_date();
  if (!r->own_date) gw_buf_append(b, date_cache.text, date_cache.len);
  if (framing == GW_FRAMING_UPGRADE) {
    gw_buf_append(b, "\r\n", 2);
    r->resp_state = GW_RESP_SENT;
    return;
  }
  int keep = r->keep_alive && !r->close_after && !gw__worker->draining && framing != GW_FRAMING_CLOSE;
  if (framing == GW_FRAMING_LENGTH) append_length(b, length);
  else if (framing == GW_FRAMING_CHUNKED) gw_buf_append_str(b, "Transfer-Encoding: chunked\r\n");
  if (!keep) {
    gw_buf_append_str(b, "Connection: close\r\n\r\n");
    r->close_after = 1;
  } else if (r->http_minor == 0) {
    gw_buf_append_str(b, "Connection: keep-alive\r\n\r\n");
  } else {
    gw_buf_append(b, "\r\n", 2);
  }
  r->resp_state = GW_RESP_SENT;
}

int gw_response_send_head(gw_req_t *r, gw_framing_t framing, uint64_t length) {
  int rc = gw_response_hold_head(r, framing, length);
  if (rc == 0) gw_response_flush_head(r, NULL, 0);
  return rc;
}

int gw_response_hold_head(gw_req_t *r, gw_framing_t framing, uint64_t length) {
  if (r->resp_state != GW_RESP_NONE) return GW_ESTATE;
  if (!status_is_final(r, framing)) {
    refuse_interim_status(r);
    return GW_ESTATE;
  }
  finish_head(r, framing, length);
  r->resp_bytes = r->resp_head.len;
  r->head_held = 1;
  return 0;
}

void gw_response_flush_head(gw_req_t *r, const uv_buf_t *more, unsigned n) {
  uv_buf_t bufs[8];
  unsigned k = 0;
  if (r->head_held) {
    bufs[k++] = uv_buf_init(r->resp_head.base, (unsigned)r->resp_head.len);
    r->head_held = 0;
  }
  for (unsigned i = 0; i < n && k < sizeof bufs / sizeof bufs[0]; i++) bufs[k++] = more[i];
  if (k) gw_conn_write(r->conn, bufs, k);
}

/* Finishes the head with `length` as its Content-Length (none if < 0, or
 * for a status without a body) and writes it, then `len` bytes of body
 * (none for HEAD: the head a GET would get, RFC 9110 9.3.2). */
static int send_answer(gw_req_t *r, int64_t length, const char *body, size_t len) {
  if (r->resp_state != GW_RESP_NONE) return GW_ESTATE;
  if (!status_is_final(r, GW_FRAMING_LENGTH)) {
    refuse_interim_status(r);
    return 0;
  }
  if (status_has_body(r->status) && length >= 0) {
    finish_head(r, GW_FRAMING_LENGTH, (uint64_t)length);
  } else {
    finish_head(r, GW_FRAMING_NONE, 0);
    len = 0;
  }
  if (r->method == HTTP_HEAD) len = 0;
  gw_buf_t *b = &r->resp_head;
  uv_buf_t bufs[2] = {uv_buf_init(b->base, (unsigned)b->len), uv_buf_init((char *)body, (unsigned)len)};
  r->resp_bytes = b->len + len;
  gw_conn_write(r->conn, bufs, len ? 2 : 1);
  return 0;
}

int gw_response_send(gw_req_t *r, const char *body, size_t len) {
  return send_answer(r, (int64_t)len, body, len);
}

int gw_response_send_head_of(gw_req_t *r, int64_t length) { return send_answer(r, length, NULL, 0); }

const char *gw_response_header_lines(gw_req_t *r, const char *lines, size_t llen) {
  const char *q = lines, *end = lines + llen;
  while (q < end) {
    const char *eol = NULL;
    for (const char *s = q; s + 1 < end; s++)
      if (s[0] == '\r' && s[1] == '\n') {
        eol = s;
        break;
      }
    const char *colon = eol ? memchr(q, ':', (size_t)(eol - q)) : NULL;
    if (!colon) return "invalid response header line";
    const char *v = colon + 1;
    while (v < eol && *v == ' ') v++;
    if (gw_response_header(r, q, (size_t)(colon - q), v, (size_t)(eol - v)) != 0)
      return "invalid response header (CR, LF or a bad name)";
    q = eol + 2;
  }
  return NULL;
}

void gw_response_error(gw_req_t *r, int status, const char *msg) {
  gw_response_error_with(r, status, msg, "", 0);
}

void gw_response_error_with(gw_req_t *r, int status, const char *msg, const char *lines, size_t llen) {
  if (r->resp_state != GW_RESP_NONE) return;
  gw_response_start(r, status);
  gw_response_header(r, "Content-Type", 12, "application/json", 16);
  const char *id = gw_req_id(r);
  gw_response_header(r, "X-Request-Id", 12, id, strlen(id));
  /* Lines a script added (checked when they were given): a bad one is dropped with the rest. */
  if (llen && gw_response_header_lines(r, lines, llen)) {
    gw_response_start(r, status);
    gw_response_header(r, "Content-Type", 12, "application/json", 16);
    gw_response_header(r, "X-Request-Id", 12, id, strlen(id));
  }
  /* Both strings escaped: the id may come from a script (req.id) and the
   * message from an upstream's error text. */
  gw_buf_t body;
  gw_buf_init(&body);
  gw_buf_append_str(&body, "{\"error\":");
  gw_buf_append_json(&body, msg, strlen(msg));
  gw_buf_append_str(&body, ",\"request_id\":");
  gw_buf_append_json(&body, id, strlen(id));
  gw_buf_append(&body, "}", 1);
  gw_response_send(r, body.base, body.len);
  gw_buf_free(&body);
}
