/*
 * metrics.c: per-worker counters in shared memory and their Prometheus
 * rendering (see metrics.h).
 *
 * Rendering merges the slots of all workers: every published route and
 * (route, status) pair is gathered into a process-local array, sorted by
 * name (and status), and adjacent equal keys are summed. That is
 * O(n log n) in the number of entries, whatever the worker count.
 */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "health.h"
#include "mem.h"
#include "shdict.h"
#include "shm.h"
#include "upstream.h"

/* The bounds of gw_metrics_bucket (metrics.h), as Prometheus labels. */
static const char *const bound_text[GW_METRICS_BUCKETS] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                                           "0.5",   "1",    "2.5",   "5",    "10"};

#define OTHER_ROUTE (GW_METRICS_ROUTES - 1) /* where routes go once the table is full */

static gw_metrics_slot_t *self;      /* this worker's slot, NULL outside a worker */
static gw_shm_worker_t *self_status; /* this worker's status slot (requests counter) */

static uint32_t hash_bytes(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

/* The slot of the last request's route, tried before hashing: requests of one
 * route come in runs. Slots are never freed, so a match by name is still
 * right; "(other)" is not kept, as it matches no name. */
static unsigned last_route = OTHER_ROUTE;

void gw_metrics_init(unsigned index) {
  self = gw_shm_metrics(index);
  self_status = gw_shm_worker(index);
  last_route = OTHER_ROUTE;
  gw_metrics_route_t *other = self ? &self->routes[OTHER_ROUTE] : NULL;
  if (other && !other->used) {
    strcpy(other->name, "(other)");
    other->len = 7;
    __atomic_store_n(&other->used, 1, __ATOMIC_RELEASE);
  }
}

/* The index of `name` in this worker's route table, adding it if new. */
static unsigned route_index(const char *name, size_t len) {
  unsigned n = OTHER_ROUTE; /* probing covers every slot but the last */
  unsigned i = hash_bytes(name, len) % n;
  for (unsigned probes = 0; probes < n; probes++, i = (i + 1) % n) {
    gw_metrics_route_t *r = &self->routes[i];
    if (!r->used) {
      memcpy(r->name, name, len);
      r->name[len] = '\0';
      r->len = (uint32_t)len;
      __atomic_store_n(&r->used, 1, __ATOMIC_RELEASE);
      return i;
    }
    if (r->len == len && memcmp(r->name, name, len) == 0) return i;
  }
  return OTHER_ROUTE;
}

static void count_status(unsigned route, int status) {
  if (status < 0 || status > 999) status = 0;
  uint32_t key = (route + 1) << 10 | (uint32_t)status;
  unsigned i = (key * 2654435761u) % GW_METRICS_SERIES;
  for (unsigned probes = 0; probes < GW_METRICS_SERIES; probes++, i = (i + 1) % GW_METRICS_SERIES) {
    gw_metrics_series_t *s = &self->series[i];
    if (s->key == 0) __atomic_store_n(&s->key, key, __ATOMIC_RELEASE);
    if (s->key == key) {
      gw_shm_add(&s->count, 1);
      return;
    }
  }
  gw_shm_add(&self->dropped, 1);
}

static unsigned route_index_cached(const char *name, size_t len) {
  if (last_route != OTHER_ROUTE) {
    const gw_metrics_route_t *r = &self->routes[last_route];
    if (r->len == len && memcmp(r->name, name, len) == 0) return last_route;
  }
  last_route = route_index(name, len);
  return last_route;
}

void gw_metrics_request(const char *route, int status, double seconds) {
  if (!self) return;
  if (!route) route = "";
  size_t len = strlen(route);
  /* Cut on a character boundary: half a character would make the label,
   * and the whole scrape, invalid UTF-8 (Prometheus refuses it). */
  if (len >= GW_METRICS_ROUTE_MAX) len = gw_utf8_cut(route, len, GW_METRICS_ROUTE_MAX - 1);
  unsigned idx = route_index_cached(route, len);
  gw_metrics_route_t *r = &self->routes[idx];
  gw_shm_add(&r->buckets[gw_metrics_bucket(seconds)], 1);
  gw_shm_add(&r->count, 1);
  gw_shm_add(&r->sum_ns, seconds > 0 ? (uint64_t)(seconds * 1e9) : 0);
  count_status(idx, status);
  gw_shm_add(&self_status->requests, 1);
}

/* ---- rendering ---- */

typedef struct {
  const gw_metrics_route_t *route;                         /* names the route; counters are summed below */
  uint64_t buckets[GW_METRICS_BUCKETS + 1], count, sum_ns; /* summed over workers */
  int status;                                              /* for series */
} row_t;

static int by_name(const row_t *a, const row_t *b) {
  uint32_t la = a->route->len, lb = b->route->len;
  int c = memcmp(a->route->name, b->route->name, la < lb ? la : lb);
  return c ? c : (la > lb) - (la < lb);
}

static int cmp_routes(const void *x, const void *y) { return by_name(x, y); }

static int cmp_series(const void *x, const void *y) {
  const row_t *a = x, *b = y;
  int c = by_name(a, b);
  return c ? c : a->status - b->status;
}

/* Appends `s` as a Prometheus label value (quotes included). */
static void label(gw_buf_t *out, const char *s, size_t n) {
  gw_buf_append(out, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\\') gw_buf_append(out, "\\\\", 2);
    else if (s[i] == '"') gw_buf_append(out, "\\\"", 2);
    else if (s[i] == '\n') gw_buf_append(out, "\\n", 2);
    else gw_buf_append(out, &s[i], 1);
  }
  gw_buf_append(out, "\"", 1);
}

/* Sorts rows and sums neighbours with equal keys; returns the new count. */
static size_t merge(row_t *rows, size_t n, int (*cmp)(const void *, const void *)) {
  if (n == 0) return 0;
  qsort(rows, n, sizeof *rows, cmp);
  size_t out = 0;
  for (size_t i = 1; i < n; i++) {
    if (cmp(&rows[out], &rows[i]) == 0) {
      for (int b = 0; b <= GW_METRICS_BUCKETS; b++) rows[out].buckets[b] += rows[i].buckets[b];
      rows[out].count += rows[i].count;
      rows[out].sum_ns += rows[i].sum_ns;
    } else {
      rows[++out] = rows[i];
    }
  }
  return out + 1;
}

/* The lines of one histogram series: `labels` (already escaped, without
 * braces) on each; `buckets` per bucket, not cumulative. */
static void histogram(gw_buf_t *out, const char *name, const gw_buf_t *labels, const uint64_t *buckets,
                      uint64_t count, uint64_t sum_ns) {
  uint64_t cumulative = 0;
  for (int b = 0; b <= GW_METRICS_BUCKETS; b++) {
    cumulative += buckets[b];
    gw_buf_printf(out, "%s_bucket{%.*s,le=\"%s\"} %llu\n", name, (int)labels->len, labels->base,
                  b < GW_METRICS_BUCKETS ? bound_text[b] : "+Inf", (unsigned long long)cumulative);
  }
  gw_buf_printf(out, "%s_sum{%.*s} %.9f\n", name, (int)labels->len, labels->base, (double)sum_ns / 1e9);
  gw_buf_printf(out, "%s_count{%.*s} %llu\n", name, (int)labels->len, labels->base,
                (unsigned long long)count);
}

static void render_requests(gw_buf_t *out, unsigned nworkers) {
  row_t *routes = gw_xcalloc((size_t)nworkers * GW_METRICS_ROUTES, sizeof *routes);
  row_t *series = gw_xcalloc((size_t)nworkers * GW_METRICS_SERIES, sizeof *series);
  size_t nr = 0, ns = 0;
  uint64_t dropped = 0;
  for (unsigned w = 0; w < nworkers; w++) {
    gw_metrics_slot_t *m = gw_shm_metrics(w);
    for (unsigned i = 0; i < GW_METRICS_ROUTES; i++) {
      const gw_metrics_route_t *r = &m->routes[i];
      if (!__atomic_load_n(&r->used, __ATOMIC_ACQUIRE)) continue;
      row_t *row = &routes[nr];
      row->route = r;
      for (int b = 0; b <= GW_METRICS_BUCKETS; b++) row->buckets[b] = gw_shm_load(&r->buckets[b]);
      row->count = gw_shm_load(&r->count);
      row->sum_ns = gw_shm_load(&r->sum_ns);
      if (row->count) nr++;
    }
    for (unsigned i = 0; i < GW_METRICS_SERIES; i++) {
      uint32_t key = __atomic_load_n(&m->series[i].key, __ATOMIC_ACQUIRE);
      if (!key) continue;
      row_t *row = &series[ns++];
      row->route = &m->routes[(key >> 10) - 1];
      row->status = (int)(key & 1023);
      row->count = gw_shm_load(&m->series[i].count);
    }
    dropped += gw_shm_load(&m->dropped);
  }
  nr = merge(routes, nr, cmp_routes);
  ns = merge(series, ns, cmp_series);

  gw_buf_append_str(out,
                    "# HELP gateway_requests_total Requests answered, by matched route pattern "
                    "(empty: no route matched) and status.\n"
                    "# TYPE gateway_requests_total counter\n");
  for (size_t i = 0; i < ns; i++) {
    gw_buf_append_str(out, "gateway_requests_total{route=");
    label(out, series[i].route->name, series[i].route->len);
    gw_buf_printf(out, ",status=\"%d\"} %llu\n", series[i].status, (unsigned long long)series[i].count);
  }
  gw_buf_append_str(out,
                    "# HELP gateway_request_duration_seconds Time from the first byte of a request's "
                    "head to its answer being handed to the socket, by route.\n"
                    "# TYPE gateway_request_duration_seconds histogram\n");
  gw_buf_t labels;
  gw_buf_init(&labels);
  for (size_t i = 0; i < nr; i++) {
    const row_t *r = &routes[i];
    labels.len = 0;
    gw_buf_append_str(&labels, "route=");
    label(&labels, r->route->name, r->route->len);
    histogram(out, "gateway_request_duration_seconds", &labels, r->buckets, r->count, r->sum_ns);
  }
  gw_buf_free(&labels);
  gw_buf_printf(out,
                "# HELP gateway_metrics_dropped_total Requests not counted by route and status: "
                "no room left for a new pair.\n"
                "# TYPE gateway_metrics_dropped_total counter\n"
                "gateway_metrics_dropped_total %llu\n",
                (unsigned long long)dropped);
  free(routes);
  free(series);
}

static void render_workers(gw_buf_t *out, unsigned nworkers) {
  uint64_t conns = 0, ok = 0, failed = 0, lua = 0;
  for (unsigned w = 0; w < nworkers; w++) {
    gw_shm_worker_t *s = gw_shm_worker(w);
    conns += gw_shm_load(&s->connections);
    ok += gw_shm_load(&s->reloads_ok);
    failed += gw_shm_load(&s->reloads_failed);
    lua += gw_shm_load(&s->lua_memory);
  }
  gw_buf_printf(out,
                "# HELP gateway_connections Client connections open now (admin ones included).\n"
                "# TYPE gateway_connections gauge\n"
                "gateway_connections %llu\n"
                "# HELP gateway_reloads_total Configuration reloads, by result (counted per worker).\n"
                "# TYPE gateway_reloads_total counter\n"
                "gateway_reloads_total{result=\"ok\"} %llu\n"
                "gateway_reloads_total{result=\"failed\"} %llu\n"
                "# HELP gateway_lua_memory_bytes Lua heap in use, over every live VM generation.\n"
                "# TYPE gateway_lua_memory_bytes gauge\n"
                "gateway_lua_memory_bytes %llu\n"
                "# HELP gateway_workers Worker processes configured.\n"
                "# TYPE gateway_workers gauge\n"
                "gateway_workers %u\n",
                (unsigned long long)conns, (unsigned long long)ok, (unsigned long long)failed,
                (unsigned long long)lua, nworkers);
}

static void render_dicts(gw_buf_t *out) {
  size_t n = gw_shm_ndicts();
  if (n == 0) return;
  static const char *const names[] = {"gateway_shared_dict_items", "gateway_shared_dict_used_bytes",
                                      "gateway_shared_dict_capacity_bytes",
                                      "gateway_shared_dict_evictions_total"};
  static const char *const help[] = {"Entries stored", "Bytes of entries stored",
                                     "Bytes available for entries", "Entries evicted to make room"};
  gw_shdict_stats_t *st = gw_xcalloc(n, sizeof *st);
  for (size_t i = 0; i < n; i++) gw_shdict_stats(gw_shm_dict_at(i), &st[i]);
  for (int k = 0; k < 4; k++) {
    gw_buf_printf(out, "# HELP %s %s, by shared dict.\n# TYPE %s %s\n", names[k], help[k], names[k],
                  k == 3 ? "counter" : "gauge");
    for (size_t i = 0; i < n; i++) {
      const char *dn = gw_shdict_name(gw_shm_dict_at(i));
      uint64_t v = k == 0 ? st[i].items : k == 1 ? st[i].used : k == 2 ? st[i].capacity : st[i].evictions;
      gw_buf_printf(out, "%s{dict=", names[k]);
      label(out, dn, strlen(dn));
      gw_buf_printf(out, "} %llu\n", (unsigned long long)v);
    }
  }
  free(st);
}

/* Upstream health from the shared table (one view for all workers): the
 * counters there are already summed over the workers. */
static void render_upstreams(gw_buf_t *out) {
  size_t n;
  gw_upstream_t **ups = gw_upstream_all(&n);
  if (n == 0) return;
  uint64_t now = gw_now_ms();
  static const char *const names[] = {"gateway_upstream_healthy", "gateway_upstream_requests_total",
                                      "gateway_upstream_failures_total"};
  static const char *const help[] = {"1 if the server takes requests (passive and active health)",
                                     "Exchanges with the server, all workers",
                                     "Exchanges with the server that failed (connect, timeout, protocol)"};
  for (int m = 0; m < 3; m++) {
    gw_buf_printf(out, "# HELP %s %s.\n# TYPE %s %s\n", names[m], help[m], names[m], m ? "counter" : "gauge");
    for (size_t i = 0; i < n; i++) {
      if (!gw_upstream_live(ups[i])) continue;
      for (size_t k = 0; k < ups[i]->nservers; k++) {
        const gw_server_t *s = ups[i]->servers[k];
        const gw_health_t *h = s->health;
        uint64_t v = m == 0   ? (uint64_t)(s->resolved && !gw_health_down(h, now))
                     : m == 1 ? gw_health_load(&h->requests)
                              : gw_health_load(&h->failures);
        gw_buf_printf(out, "%s{upstream=", names[m]);
        label(out, ups[i]->name, strlen(ups[i]->name));
        gw_buf_append_str(out, ",server=");
        label(out, s->addr, strlen(s->addr));
        gw_buf_printf(out, "} %llu\n", (unsigned long long)v);
      }
    }
  }
  gw_buf_append_str(out,
                    "# HELP gateway_upstream_duration_seconds Time of each try with a server, from "
                    "sending the request (or connecting) to the end of its answer or its failure.\n"
                    "# TYPE gateway_upstream_duration_seconds histogram\n");
  gw_buf_t labels;
  gw_buf_init(&labels);
  for (size_t i = 0; i < n; i++) {
    if (!gw_upstream_live(ups[i])) continue;
    for (size_t k = 0; k < ups[i]->nservers; k++) {
      const gw_health_t *h = ups[i]->servers[k]->health;
      uint64_t buckets[GW_METRICS_BUCKETS + 1];
      for (int b = 0; b <= GW_METRICS_BUCKETS; b++) buckets[b] = gw_health_load(&h->dur_buckets[b]);
      labels.len = 0;
      gw_buf_append_str(&labels, "upstream=");
      label(&labels, ups[i]->name, strlen(ups[i]->name));
      gw_buf_append_str(&labels, ",server=");
      label(&labels, ups[i]->servers[k]->addr, strlen(ups[i]->servers[k]->addr));
      histogram(out, "gateway_upstream_duration_seconds", &labels, buckets, gw_health_load(&h->dur_count),
                gw_health_load(&h->dur_sum_ns));
    }
  }
  gw_buf_free(&labels);
  gw_buf_append_str(
      out,
      "# HELP gateway_upstream_breaker_open 1 while the group's circuit breaker is open or half-open.\n"
      "# TYPE gateway_upstream_breaker_open gauge\n");
  for (size_t i = 0; i < n; i++) {
    if (!gw_upstream_live(ups[i])) continue;
    gw_buf_append_str(out, "gateway_upstream_breaker_open{upstream=");
    label(out, ups[i]->name, strlen(ups[i]->name));
    gw_buf_printf(
        out, "} %d\n",
        ups[i]->breaker_failures > 0 && gw_health_load32(&ups[i]->breaker->breaker) != GW_BREAKER_CLOSED);
  }
}

void gw_metrics_render(gw_buf_t *out) {
  unsigned n = gw_shm_nworkers();
  render_requests(out, n);
  render_workers(out, n);
  render_dicts(out);
  render_upstreams(out);
}
