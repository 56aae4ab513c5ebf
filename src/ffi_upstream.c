/*
 * ffi_upstream.c: upstream groups and buffered exchanges for Lua
 * (gw.upstream, up:request, up:get, up:post).
 *
 * A buffered exchange (fetch_t) collects the whole response, bounded by the
 * group's max_body, then wakes the waiting coroutine with
 * (status, headers table, body) or (nil, error). The fetch belongs to the
 * waiting task: if the task ends first (the client went away), its cancel
 * hook aborts the exchange and frees it.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "errors.h"
#include "ffi.h"
#include "lua_vm.h"
#include "mem.h"
#include "request.h"
#include "upstream.h"
#include "health_check.h"

/* ---- declaring groups ---- */

GW_FFI_EXPORT gw_upstream_t *gw_ffi_upstream_declare(
    const char *name, const char **addrs, const int *weights, int n, int balance, int keepalive_idle,
    double keepalive_timeout, double t_connect, double t_send, double t_read, int retries,
    int passive_failures, double passive_cooldown, double max_body, int breaker_failures,
    double breaker_window, double breaker_cooldown, const char *check_path, double check_interval,
    double check_timeout, int check_healthy, int check_unhealthy, int tls_verify, const char *tls_sni,
    const char *tls_ca, char *err, size_t errlen) {
  /* TLS settings are loaded before anything changes, so that a bad `ca`
   * leaves the group as it was (a failed reload keeps serving with it).
   * tls_verify < 0: no `tls` table (verification on, the system's CAs). */
  gw_tls_client_ctx_t *tls_ctx = NULL;
  int want_tls = tls_verify >= 0;
  for (int i = 0; i < n && !want_tls; i++) want_tls = strncmp(addrs[i], "https://", 8) == 0;
  if (want_tls) {
    char why[200];
    tls_ctx = gw_tls_client_ctx_new(tls_verify != 0, tls_ca, why, sizeof why);
    if (!tls_ctx) {
      snprintf(err, errlen, "tls: %s", why);
      return NULL;
    }
  }
  gw_upstream_t *up = gw_upstream_get(name);
  gw_vm_t *vm = gw_vm_current();
  if (vm) up->declared_gen = vm->generation;
  gw_balance_t old_balance = up->balance;
  up->balance = (gw_balance_t)balance;
  if (gw_upstream_set_servers(up, addrs, weights, (size_t)n, err, errlen) != 0) {
    up->balance = old_balance;
    gw_tls_client_ctx_free(tls_ctx);
    return NULL;
  }
  if (tls_ctx) gw_upstream_set_tls(up, tls_ctx, tls_verify != 0, tls_sni, tls_ca);
  up->keepalive_idle = keepalive_idle;
  up->keepalive_timeout = keepalive_timeout;
  up->t_connect = t_connect;
  up->t_send = t_send;
  up->t_read = t_read;
  up->retries = retries;
  up->passive_failures = passive_failures;
  up->passive_cooldown = passive_cooldown;
  /* upstream.lua allows 0 to 2^53; anything else (NaN included) would be
   * undefined behaviour as a size_t, so it means "no limit" here. */
  up->max_body = max_body >= 0 && max_body <= 0x1p53 ? (size_t)max_body : SIZE_MAX;
  up->breaker_failures = breaker_failures;
  up->breaker_window = breaker_window;
  up->breaker_cooldown = breaker_cooldown;
  gw_health_check_configure(up, check_path, check_interval, check_timeout, check_healthy, check_unhealthy);
  return up;
}

/* ---- header lines from Lua ---- */

/* Adds "Name: value\r\n" lines to `x`, checking each. Returns 0 or -1. */
int gw__exchange_add_lines(gw_exchange_t *x, const char *lines, size_t len);
int gw__exchange_add_lines(gw_exchange_t *x, const char *lines, size_t len) {
  const char *p = lines, *end = lines + len;
  while (p < end) {
    const char *eol = NULL;
    for (const char *q = p; q + 1 < end; q++)
      if (q[0] == '\r' && q[1] == '\n') {
        eol = q;
        break;
      }
    if (!eol) return -1;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (!colon) return -1;
    const char *v = colon + 1;
    while (v < eol && (*v == ' ' || *v == '\t')) v++;
    if (!gw_header_valid(p, (size_t)(colon - p), v, (size_t)(eol - v))) return -1;
    gw_exchange_add_header(x, p, (size_t)(colon - p), v, (size_t)(eol - v));
    p = eol + 2;
  }
  return 0;
}

/* ---- buffered exchanges ---- */

/* Owned by the waiting task until woken or cancelled; then freed. */
typedef struct {
  gw_waiter_t w; /* first */
  gw_exchange_t x;
  gw_buf_t body; /* the response body so far */
  int err;       /* result */
  const char *msg;
} fetch_t;

static int fetch_on_head(gw_exchange_t *x) { return 0; }

static int fetch_on_body(gw_exchange_t *x, const char *p, size_t n) {
  fetch_t *f = x->data;
  if (f->body.len + n > x->up->max_body) return -1;
  gw_buf_append(&f->body, p, n);
  return 0;
}

static int push_fetch(lua_State *L, void *arg) {
  fetch_t *f = arg;
  if (f->err) {
    lua_pushnil(L);
    lua_pushstring(L, f->msg ? f->msg : gw_strerror(f->err));
    return 2;
  }
  /* The header lines go to Lua as one string, parsed only if a script
   * reads res.headers (upstream.lua): most aggregations never do. */
  const gw_http1c_t *p = &f->x.parser;
  lua_pushinteger(L, p->status);
  if (p->nheaders > 0) {
    const gw_header_t *first = &p->headers[0], *last = &p->headers[p->nheaders - 1];
    size_t end = last->value_len ? last->value_off + last->value_len : last->name_off + last->name_len + 1;
    lua_pushlstring(L, f->x.resp_base + first->name_off, end - first->name_off);
  } else {
    lua_pushliteral(L, "");
  }
  lua_pushlstring(L, f->body.base ? f->body.base : "", f->body.len);
  return 3;
}

static void fetch_free(fetch_t *f) {
  gw_exchange_release(&f->x);
  gw_buf_free(&f->body);
  free(f);
}

static void fetch_on_done(gw_exchange_t *x, int err, const char *msg) {
  fetch_t *f = x->data;
  f->err = err;
  f->msg = msg;
  gw_waiter_wake(&f->w, push_fetch, f);
  fetch_free(f);
}

static void fetch_on_aborted(gw_exchange_t *x) { fetch_free(x->data); }

static const gw_exchange_ops_t fetch_ops = {fetch_on_head, fetch_on_body, fetch_on_done, NULL,
                                            fetch_on_aborted};

static void cancel_fetch(gw_waiter_t *w) {
  fetch_t *f = (fetch_t *)w;
  if (!gw_exchange_abort(&f->x)) fetch_free(f);
}

GW_FFI_EXPORT int gw_ffi_upstream_fetch(gw_task_t *t, uint32_t ts, gw_upstream_t *up, const char *method,
                                        size_t mlen, const char *target, size_t tlen, const char *lines,
                                        size_t llen, const char *body, size_t blen, int has_body,
                                        const char *key, size_t klen, double timeout, uint32_t *wait_id,
                                        const char **err) {
  if (!gw_task_check(t, ts)) return GW_FFI_BAD_CONTEXT;
  fetch_t *f = gw_xcalloc(1, sizeof *f);
  f->x.up = up;
  f->x.ops = &fetch_ops;
  f->x.data = f;
  f->x.timeout = timeout;
  if (gw_exchange_set_request(&f->x, method, mlen, target, tlen) != 0) {
    fetch_free(f);
    *err = "invalid method or path (a space, CR, LF or another control byte)";
    return GW_FFI_ERROR;
  }
  if (gw__exchange_add_lines(&f->x, lines, llen) != 0) {
    fetch_free(f);
    *err = "invalid request header (CR, LF or a bad name)";
    return GW_FFI_ERROR;
  }
  if (has_body) gw_exchange_set_body(&f->x, body, blen);
  if (klen) {
    f->x.hash_key = gw_xstrndup(key, klen);
    f->x.hash_key_len = klen;
  }
  f->w.cancel = cancel_fetch;
  gw_waiter_add(t, &f->w);
  *wait_id = f->w.id;
  gw_exchange_start(&f->x);
  return GW_FFI_AGAIN;
}
