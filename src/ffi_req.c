/*
 * ffi_req.c: the request and response half of the FFI ABI (see ffi.h).
 *
 * These are the hot paths of every Lua handler: header reads, the head
 * fields routing needs, and sending a buffered answer. None of them calls
 * back into Lua, allocates Lua objects, or yields, so LuaJIT compiles the
 * calls into its traces.
 */
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "ffi.h"
#include "log.h"
#include "lua_vm.h"
#include "request.h"
#include "response.h"
#include "version.h"

/* What routing needs from a head, in one call. Borrowed pointers. */
typedef struct gw_ffi_head_s {
  const char *method;
  size_t method_len;
  const char *uri;
  size_t uri_len;
  size_t path_len;
  const char *host;
  size_t host_len;
  int http_minor;
  int tls; /* 1 on a TLS connection: req.scheme is "https" */
} gw_ffi_head_t;

GW_FFI_EXPORT int gw_ffi_abi_version(void) { return GW_FFI_ABI; }

GW_FFI_EXPORT int gw_ffi_req_head(gw_req_t *r, uint32_t s, gw_ffi_head_t *out) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  const char *buf = gw_req_buffer(r);
  out->method = llhttp_method_name((llhttp_method_t)r->method);
  out->method_len = strlen(out->method);
  out->uri = buf + r->url_off;
  out->uri_len = r->url_len;
  out->path_len = r->path_len;
  size_t hl = 0;
  const char *host = gw_req_header(r, "host", 4, &hl);
  out->host = host ? host : "";
  out->host_len = host ? hl : 0;
  out->http_minor = r->http_minor;
  out->tls = r->conn->tls != NULL;
  return GW_FFI_OK;
}

GW_FFI_EXPORT int gw_ffi_req_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                                    const char **value, size_t *vlen) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  *value = gw_req_header(r, name, nlen, vlen);
  return *value ? GW_FFI_OK : GW_FFI_DECLINED;
}

GW_FFI_EXPORT int gw_ffi_req_set_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                                        const char *value, size_t vlen) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  return gw_req_set_header(r, name, nlen, value, vlen) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

static int edited(const gw_req_t *r, const char *name, size_t len) {
  for (const gw_header_edit_t *e = r->edits; e; e = e->next)
    if (e->name_len == len && strncasecmp(e->name, name, len) == 0) return 1;
  return 0;
}

/* The i-th visible header (0-based): originals a script did not touch, then
 * the newest edit of each edited name that is not a removal. Returns
 * GW_FFI_DECLINED past the end. */
GW_FFI_EXPORT int gw_ffi_req_header_at(gw_req_t *r, uint32_t s, int i, const char **name, size_t *nlen,
                                       const char **value, size_t *vlen) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  const char *buf = gw_req_buffer(r);
  for (uint32_t k = 0; k < r->nheaders; k++) {
    const gw_header_t *h = &r->headers[k];
    if (r->edits && edited(r, buf + h->name_off, h->name_len)) continue;
    if (i-- == 0) {
      *name = buf + h->name_off;
      *nlen = h->name_len;
      *value = buf + h->value_off;
      *vlen = h->value_len;
      return GW_FFI_OK;
    }
  }
  for (const gw_header_edit_t *e = r->edits; e; e = e->next) {
    int newest = 1;
    for (const gw_header_edit_t *o = r->edits; o != e; o = o->next)
      if (o->name_len == e->name_len && memcmp(o->name, e->name, e->name_len) == 0) newest = 0;
    if (!newest || !e->value) continue;
    if (i-- == 0) {
      *name = e->name;
      *nlen = e->name_len;
      *value = e->value;
      *vlen = e->value_len;
      return GW_FFI_OK;
    }
  }
  return GW_FFI_DECLINED;
}

GW_FFI_EXPORT const char *gw_ffi_req_ip(gw_req_t *r, uint32_t s, size_t *len) {
  if (!gw_req_check(r, s)) return NULL;
  *len = strlen(r->conn->ip);
  return r->conn->ip;
}

GW_FFI_EXPORT const char *gw_ffi_req_id(gw_req_t *r, uint32_t s, size_t *len) {
  if (!gw_req_check(r, s)) return NULL;
  const char *id = gw_req_id(r);
  *len = strlen(id);
  return id;
}

GW_FFI_EXPORT int gw_ffi_req_set_id(gw_req_t *r, uint32_t s, const char *id, size_t len) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  if (len == 0 || len >= sizeof r->id || !gw_header_valid("x", 1, id, len)) return GW_FFI_ERROR;
  memcpy(r->id, id, len);
  r->id[len] = '\0';
  return GW_FFI_OK;
}

/* Body reads: 0 with the body, GW_FFI_AGAIN with *wait_id, or GW_FFI_ERROR
 * with *err ("body too large" or "body read failed"). */
void gw__conn_body_waiter(gw_conn_t *c, gw_waiter_t *w);

GW_FFI_EXPORT int gw_ffi_req_body(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t s, const char **body,
                                  size_t *len, const char **err, uint32_t *wait_id) {
  if (!gw_req_check(r, s) || !gw_task_check(t, ts)) return GW_FFI_BAD_CONTEXT;
  if (r->resp_state != GW_RESP_NONE) {
    *err = "the response was already sent";
    return GW_FFI_ERROR;
  }
  int rc = r->body_state == GW_BODY_READING ? 1 : gw_conn_want_body(r->conn);
  if (rc < 0 || r->body_state == GW_BODY_FAILED) {
    *err = "body read failed";
    return GW_FFI_ERROR;
  }
  if (r->body_state == GW_BODY_TOO_BIG) {
    *err = "body too large";
    return GW_FFI_ERROR;
  }
  if (rc == 0) {
    *body = r->body.base ? r->body.base : "";
    *len = r->body.len;
    return GW_FFI_OK;
  }
  if (r->body_waiter) {
    /* One waiter per request: a second (another gw.spawn thread of the
     * same handler) would replace the first, which then never woke. */
    *err = "the body is already being read by another thread of this request";
    return GW_FFI_ERROR;
  }
  /* The waiter lives in the request's arena: it dies with the request. */
  gw_waiter_t *w = gw_arena_alloc(&r->pool, sizeof *w);
  memset(w, 0, sizeof *w);
  gw_waiter_add(t, w);
  gw__conn_body_waiter(r->conn, w);
  *wait_id = w->id;
  return GW_FFI_AGAIN;
}

GW_FFI_EXPORT int gw_ffi_resp_start(gw_req_t *r, uint32_t s, int status) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  return gw_response_start(r, status) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

GW_FFI_EXPORT int gw_ffi_resp_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                                     const char *value, size_t vlen) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  return gw_response_header(r, name, nlen, value, vlen) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

GW_FFI_EXPORT int gw_ffi_resp_send(gw_req_t *r, uint32_t s, const char *body, size_t len) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  return gw_response_send(r, body, len) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

/* runtime.lua, for a HEAD answered by an upstream: the head, with the
 * upstream's Content-Length (length < 0: none). */
GW_FFI_EXPORT int gw_ffi_resp_send_head_of(gw_req_t *r, uint32_t s, double length) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  if (r->method != HTTP_HEAD) return GW_FFI_ERROR;
  int64_t n = length >= 0 && length < 9007199254740992.0 ? (int64_t)length : -1;
  return gw_response_send_head_of(r, n) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

/* A whole answer in one call: status, a Content-Type and a body (the hot
 * path of handlers that return a string). */
GW_FFI_EXPORT int gw_ffi_resp_simple(gw_req_t *r, uint32_t s, int status, const char *ctype, size_t clen,
                                     const char *body, size_t len) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  if (gw_response_start(r, status) != 0) return GW_FFI_ERROR;
  if (gw_response_header(r, "Content-Type", 12, ctype, clen) != 0) return GW_FFI_ERROR;
  return gw_response_send(r, body, len) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

/* 1 if the response was already sent. */
GW_FFI_EXPORT int gw_ffi_resp_sent(gw_req_t *r, uint32_t s) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  return r->resp_state != GW_RESP_NONE;
}

/* gw.log writes one line (one_line: line feeds escaped too); the runtime's
 * own errors keep a traceback's lines, each after the first indented. */
GW_FFI_EXPORT void gw_ffi_log(int level, const char *msg, size_t len, int one_line) {
  if (level < GW_LOG_DEBUG || level > GW_LOG_ERROR) level = GW_LOG_INFO;
  if (one_line) gw_log_line((gw_log_level_t)level, msg, len);
  else gw_log_text((gw_log_level_t)level, msg, len);
}
