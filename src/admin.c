/*
 * admin.c: /status, /metrics and /reload on the admin listener (see admin.h).
 *
 * Answers are built in a process-local buffer and sent as one buffered
 * response; nothing here runs Lua except the reload itself.
 */
#include "admin.h"

#include <llhttp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "errors.h"
#include "health.h"
#include "ffi_time.h"
#include "log.h"
#include "lua_vm.h"
#include "mem.h"
#include "metrics.h"
#include "reload.h"
#include "tls_tickets.h"
#include "response.h"
#include "shm.h"
#include "upstream.h"
#include "version.h"
#include "worker.h"

static void send_answer(gw_req_t *r, int status, const char *type, const gw_buf_t *body) {
  gw_response_start(r, status);
  gw_response_header(r, "Content-Type", 12, type, strlen(type));
  gw_response_header(r, "Cache-Control", 13, "no-store", 8);
  gw_response_send(r, body->base ? body->base : "", body->len);
}

static void send_json(gw_req_t *r, int status, const gw_buf_t *body) {
  send_answer(r, status, "application/json", body);
}

/* ---- small JSON helpers ---- */

static void json_str(gw_buf_t *b, const char *s) {
  if (s) gw_buf_append_json(b, s, strlen(s));
  else gw_buf_append_str(b, "null");
}

/* Realtime seconds as an RFC 3339 UTC time string, or null for 0. */
static void json_time(gw_buf_t *b, double t) {
  if (t <= 0) {
    gw_buf_append_str(b, "null");
    return;
  }
  time_t sec = (time_t)t;
  struct tm tm;
  gmtime_r(&sec, &tm);
  gw_buf_printf(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((t - (double)sec) * 1000));
}

/* Whether text[0..n) looks like the file Lua names in "FILE:LINE:": no
 * spaces, and a path (a '/' in it) or a .lua name. Anything else before a
 * ":digits:" is the script's own words ("upstream 127.0.0.1:8080: ..."). */
static int looks_like_file(const char *text, size_t n) {
  if (n == 0 || memchr(text, ' ', n)) return 0;
  return memchr(text, '/', n) || (n > 4 && memcmp(text + n - 4, ".lua", 4) == 0);
}

/* The length of FILE when `text` (first line: `first` bytes) starts with
 * "FILE:LINE:", with the line in *line; 0 when it does not. */
static size_t error_file_prefix(const char *text, size_t first, long *line) {
  size_t n = strcspn(text, ": ");
  if (n >= first || text[n] != ':' || !looks_like_file(text, n)) return 0;
  size_t q = n + 1;
  long v = 0;
  while (q < first && text[q] >= '0' && text[q] <= '9' && v < 100000000) v = v * 10 + (text[q++] - '0');
  if (q == n + 1 || q >= first || text[q] != ':') return 0;
  *line = v;
  return n;
}

/* Writes "message", "file" and "line" members for a Lua error text: the
 * first line is the message, and its leading "FILE:LINE:", when there is
 * one, gives file and line (null otherwise); "detail" has the whole text
 * (with the traceback). */
static void json_error_fields(gw_buf_t *b, const char *text) {
  size_t first = strcspn(text, "\n");
  long line = 0;
  size_t file_len = error_file_prefix(text, first, &line);
  gw_buf_append_str(b, "\"message\":");
  gw_buf_append_json(b, text, first);
  gw_buf_append_str(b, ",\"file\":");
  if (file_len) gw_buf_append_json(b, text, file_len);
  else gw_buf_append_str(b, "null");
  if (file_len) gw_buf_printf(b, ",\"line\":%ld", line);
  else gw_buf_append_str(b, ",\"line\":null");
  gw_buf_append_str(b, ",\"detail\":");
  json_str(b, text);
}

/* ---- /status ---- */

/* Upstream groups as this worker knows them (every worker loads the same
 * configuration), with the health all workers share. */
static void status_upstreams(gw_buf_t *b) {
  static const char *const breaker_names[] = {"closed", "open", "half-open"};
  size_t n;
  gw_upstream_t **ups = gw_upstream_all(&n);
  uint64_t now = gw_now_ms();
  gw_buf_append_str(b, "[");
  int first = 1;
  for (size_t i = 0; i < n; i++) {
    gw_upstream_t *up = ups[i];
    if (!gw_upstream_live(up)) continue;
    gw_buf_append_str(b, first ? "{\"name\":" : ",{\"name\":");
    first = 0;
    json_str(b, up->name);
    uint32_t br = gw_health_load32(&up->breaker->breaker);
    gw_buf_printf(b, ",\"breaker\":\"%s\",\"servers\":[",
                  up->breaker_failures > 0 && br <= 2 ? breaker_names[br] : "off");
    for (size_t k = 0; k < up->nservers; k++) {
      gw_server_t *s = up->servers[k];
      const gw_health_t *h = s->health;
      gw_buf_append_str(b, k ? ",{\"addr\":" : "{\"addr\":");
      json_str(b, s->addr);
      gw_buf_printf(b,
                    ",\"weight\":%d,\"healthy\":%s,\"passive_down\":%s,\"active_down\":%s,"
                    "\"resolved\":%s,\"requests\":%llu,\"failures\":%llu}",
                    s->weight, s->resolved && !gw_health_down(h, now) ? "true" : "false",
                    gw_health_load(&h->down_until) > now ? "true" : "false",
                    gw_health_load32(&h->active_down) ? "true" : "false", s->resolved ? "true" : "false",
                    (unsigned long long)gw_health_load(&h->requests),
                    (unsigned long long)gw_health_load(&h->failures));
    }
    gw_buf_append_str(b, "]}");
  }
  gw_buf_append_str(b, "]");
}

static void status_dicts(gw_buf_t *b) {
  gw_buf_append_str(b, "[");
  for (size_t i = 0; i < gw_shm_ndicts(); i++) {
    gw_shdict_t *d = gw_shm_dict_at(i);
    gw_shdict_stats_t st;
    gw_shdict_stats(d, &st);
    gw_buf_append_str(b, i ? ",{\"name\":" : "{\"name\":");
    json_str(b, gw_shdict_name(d));
    gw_buf_printf(b, ",\"size\":%zu,\"items\":%llu,\"used_bytes\":%llu,\"evictions\":%llu}",
                  gw_shdict_size(d), (unsigned long long)st.items, (unsigned long long)st.used,
                  (unsigned long long)st.evictions);
  }
  gw_buf_append_str(b, "]");
}

static void status(gw_req_t *r, gw_worker_t *w) {
  gw_worker_publish(w); /* this worker's own figures are current */
  unsigned n = gw_shm_nworkers();
  gw_shm_info_t *info = gw_xcalloc(n ? n : 1, sizeof *info);
  for (unsigned i = 0; i < n; i++) gw_shm_read_info(gw_shm_worker(i), &info[i]);
  gw_buf_t b;
  gw_buf_init(&b);
  double started = gw_shm_started_at();
  gw_buf_printf(&b, "{\"version\":\"%s\",\"ffi_abi\":%d,\"master_pid\":%d,\"started_at\":", GW_VERSION,
                GW_FFI_ABI, (int)gw_shm_master_pid());
  json_time(&b, started);
  gw_buf_printf(&b, ",\"uptime\":%.3f", gw_ffi_now() - started);

  /* The configuration as this worker runs it. */
  const gw_shm_info_t *mine = &info[w->index];
  gw_buf_append_str(&b, ",\"config\":{\"path\":");
  json_str(&b, w->path);
  gw_buf_append_str(&b, ",\"hash\":");
  json_str(&b, mine->config_hash);
  gw_buf_append_str(&b, ",\"loaded_at\":");
  json_time(&b, mine->loaded_at);
  gw_buf_printf(&b, ",\"generation\":%u}", w->vm->generation);

  /* The latest reload, and the latest that failed, over all workers. */
  int last = -1, last_err = -1;
  const char *restart = NULL;
  for (unsigned i = 0; i < n; i++) {
    if (info[i].last_reload_at > 0 && (last < 0 || info[i].last_reload_at > info[last].last_reload_at))
      last = (int)i;
    if (info[i].last_error_at > 0 && (last_err < 0 || info[i].last_error_at > info[last_err].last_error_at))
      last_err = (int)i;
    if (!restart && info[i].restart_needed[0]) restart = info[i].restart_needed;
  }
  gw_buf_append_str(&b, ",\"last_reload\":");
  if (last < 0) {
    gw_buf_append_str(&b, "null");
  } else {
    gw_buf_printf(&b, "{\"result\":\"%s\",\"trigger\":", info[last].last_reload_ok ? "ok" : "failed");
    json_str(&b, info[last].last_trigger);
    gw_buf_append_str(&b, ",\"at\":");
    json_time(&b, info[last].last_reload_at);
    gw_buf_printf(&b, ",\"worker\":%d}", last);
  }
  gw_buf_append_str(&b, ",\"last_reload_error\":");
  if (last_err < 0) {
    gw_buf_append_str(&b, "null");
  } else {
    gw_buf_append_str(&b, "{");
    json_error_fields(&b, info[last_err].last_error);
    gw_buf_append_str(&b, ",\"at\":");
    json_time(&b, info[last_err].last_error_at);
    gw_buf_printf(&b, ",\"generation\":%u,\"worker\":%d}", info[last_err].last_error_generation, last_err);
  }
  gw_buf_append_str(&b, ",\"restart_needed\":");
  json_str(&b, restart);
  gw_buf_printf(&b, ",\"tls\":{\"ticket_keys_made\":%llu,\"ticket_lifetime\":%ld}",
                (unsigned long long)gw_tickets_keys_made(), gw_tickets_lifetime());

  gw_buf_append_str(&b, ",\"workers\":[");
  for (unsigned i = 0; i < n; i++) {
    gw_shm_worker_t *s = gw_shm_worker(i);
    gw_buf_printf(
        &b,
        "%s{\"index\":%u,\"pid\":%d,\"generation\":%u,\"generations_alive\":%u,\"requests\":%llu,"
        "\"connections\":%llu,\"lua_memory_bytes\":%llu,\"reloads\":{\"ok\":%llu,\"failed\":%llu}"
        ",\"config_hash\":",
        i ? "," : "", i, (int)s->pid, gw_shm_load32(&s->generation), gw_shm_load32(&s->generations_alive),
        (unsigned long long)gw_shm_load(&s->requests), (unsigned long long)gw_shm_load(&s->connections),
        (unsigned long long)gw_shm_load(&s->lua_memory), (unsigned long long)gw_shm_load(&s->reloads_ok),
        (unsigned long long)gw_shm_load(&s->reloads_failed));
    json_str(&b, info[i].config_hash);
    gw_buf_append_str(&b, ",\"started_at\":");
    json_time(&b, info[i].started_at);
    gw_buf_append_str(&b, ",\"loaded_at\":");
    json_time(&b, info[i].loaded_at);
    gw_buf_append_str(&b, ",\"restart_needed\":");
    json_str(&b, info[i].restart_needed[0] ? info[i].restart_needed : NULL);
    gw_buf_append_str(&b, "}");
  }
  gw_buf_append_str(&b, "],\"shared_dicts\":");
  status_dicts(&b);
  gw_buf_append_str(&b, ",\"upstreams\":");
  status_upstreams(&b);
  gw_buf_append_str(&b, "}\n");
  free(info);
  send_json(r, 200, &b);
  gw_buf_free(&b);
}

/* ---- /metrics ---- */

static void metrics(gw_req_t *r, gw_worker_t *w) {
  gw_worker_publish(w);
  gw_buf_t b;
  gw_buf_init(&b);
  gw_metrics_render(&b);
  send_answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
  gw_buf_free(&b);
}

/* ---- /reload ---- */

static void reload(gw_req_t *r, gw_worker_t *w) {
  char err[4096];
  int rc = gw_reload(w, "admin", err, sizeof err);
  /* The other workers reload on the master's SIGHUP; the value tells the
   * master that this one has already (see master.c). Sent even after a
   * failure, so that every worker reports the same outcome. */
  union sigval v = {.sival_int = w->index + 1};
  pid_t master = gw_shm_master_pid();
  /* If the master just died the parent is init now: never signal that. */
  if (getppid() != master || sigqueue(master, SIGHUP, v) != 0)
    gw_log_warn("POST /reload: cannot signal the master; only this worker reloaded");
  gw_buf_t b;
  gw_buf_init(&b);
  if (rc == 0) {
    gw_buf_printf(&b, "{\"result\":\"ok\",\"generation\":%u,\"worker\":%d}\n", w->vm->generation, w->index);
  } else {
    gw_buf_append_str(&b, "{\"result\":\"failed\",");
    json_error_fields(&b, err);
    gw_buf_printf(&b, ",\"generation\":%u,\"worker\":%d}\n", w->vm->generation, w->index);
  }
  send_json(r, rc == 0 ? 200 : 422, &b);
  gw_buf_free(&b);
}

/* ---- dispatch ---- */

static void method_not_allowed(gw_req_t *r, const char *allow) {
  gw_buf_t b;
  gw_buf_init(&b);
  const char *id = gw_req_id(r);
  gw_buf_append_str(&b, "{\"error\":\"method not allowed\",\"request_id\":");
  json_str(&b, id);
  gw_buf_append_str(&b, "}");
  gw_response_start(r, 405);
  gw_response_header(r, "Content-Type", 12, "application/json", 16);
  gw_response_header(r, "Allow", 5, allow, strlen(allow));
  gw_response_header(r, "X-Request-Id", 12, id, strlen(id));
  gw_response_send(r, b.base, b.len);
  gw_buf_free(&b);
}

void gw_admin_handle(gw_req_t *r) {
  gw_worker_t *w = gw__worker;
  const char *path = gw_req_buffer(r) + r->url_off;
  size_t len = r->path_len;
  int get = r->method == HTTP_GET || r->method == HTTP_HEAD;
#define IS(p) (len == sizeof(p) - 1 && memcmp(path, p, len) == 0)
  if (IS("/status")) {
    if (get) status(r, w);
    else method_not_allowed(r, "GET, HEAD");
  } else if (IS("/metrics")) {
    if (get) metrics(r, w);
    else method_not_allowed(r, "GET, HEAD");
  } else if (IS("/reload")) {
    if (r->method == HTTP_POST) reload(r, w);
    else method_not_allowed(r, "POST");
  } else {
    gw_response_error(r, 404, "no such admin endpoint (try /status, /metrics, POST /reload)");
  }
#undef IS
}
