/* balancer.c: the balancing algorithms of balancer.h. */
#include "balancer.h"

#include "health.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"

#define RING_POINTS 160
#define EWMA_DECAY_MS 10000.0

static int usable(const gw_server_t *s, uint64_t now) {
  return !s->retired && s->resolved && !gw_health_down(s->health, now);
}

uint32_t gw_hash32(const char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    h ^= (uint8_t)p[i];
    h *= 16777619u;
  }
  /* FNV-1a mixes its low bits poorly for short keys; finish with a murmur3 step. */
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

typedef struct {
  uint32_t hash;
  uint32_t server;
} point_t;

static int cmp_point(const void *a, const void *b) {
  const point_t *x = a, *y = b;
  return x->hash < y->hash ? -1 : x->hash > y->hash;
}

void gw_balancer_rebuild(gw_upstream_t *up) {
  free(up->ring);
  free(up->ring_server);
  up->ring = NULL;
  up->ring_server = NULL;
  up->nring = 0;
  if (up->balance != GW_BALANCE_HASH || up->nservers == 0) return;
  size_t total = 0;
  for (size_t i = 0; i < up->nservers; i++) total += (size_t)RING_POINTS * (size_t)up->servers[i]->weight;
  point_t *pts = gw_xmalloc(total * sizeof *pts);
  size_t k = 0;
  for (size_t i = 0; i < up->nservers; i++) {
    /* Points depend only on the server's address, so other servers'
     * points stay where they were when one is added or removed. */
    int n = RING_POINTS * up->servers[i]->weight;
    for (int j = 0; j < n; j++) {
      char buf[300];
      int len = snprintf(buf, sizeof buf, "%s#%d", up->servers[i]->addr, j);
      pts[k].hash = gw_hash32(buf, (size_t)len);
      pts[k].server = (uint32_t)i;
      k++;
    }
  }
  qsort(pts, total, sizeof *pts, cmp_point);
  up->ring = gw_xmalloc(total * sizeof *up->ring);
  up->ring_server = gw_xmalloc(total * sizeof *up->ring_server);
  for (size_t i = 0; i < total; i++) {
    up->ring[i] = pts[i].hash;
    up->ring_server[i] = pts[i].server;
  }
  up->nring = total;
  free(pts);
}

static gw_server_t *pick_round_robin(gw_upstream_t *up, const gw_server_t *avoid, uint64_t now) {
  gw_server_t *best = NULL;
  int total = 0;
  for (size_t i = 0; i < up->nservers; i++) {
    gw_server_t *s = up->servers[i];
    if (!usable(s, now) || s == avoid) continue;
    s->current_weight += s->weight;
    total += s->weight;
    if (!best || s->current_weight > best->current_weight) best = s;
  }
  if (best) best->current_weight -= total;
  return best;
}

static gw_server_t *pick_least_conn(gw_upstream_t *up, const gw_server_t *avoid, uint64_t now) {
  gw_server_t *best = NULL;
  /* Start one further at each first try, so that ties go round robin. Not
   * at a retry: with two servers, the retry's step put every next first
   * try back on the server that had just failed. */
  size_t start = up->nservers ? (avoid ? up->rr_next : up->rr_next++) % up->nservers : 0;
  for (size_t k = 0; k < up->nservers; k++) {
    gw_server_t *s = up->servers[(start + k) % up->nservers];
    if (!usable(s, now) || s == avoid) continue;
    /* Compare active/weight without division: a.active * b.weight. */
    if (!best || (long)s->active * best->weight < (long)best->active * s->weight) best = s;
  }
  return best;
}

static gw_server_t *pick_hash(gw_upstream_t *up, const char *key, size_t keylen, const gw_server_t *avoid,
                              uint64_t now) {
  if (up->nring == 0) return NULL;
  uint32_t h = gw_hash32(key ? key : "", key ? keylen : 0);
  size_t lo = 0, hi = up->nring;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (up->ring[mid] < h) lo = mid + 1;
    else hi = mid;
  }
  /* Walk on from the key's point to the first usable server. */
  for (size_t n = 0; n < up->nring; n++) {
    gw_server_t *s = up->servers[up->ring_server[(lo + n) % up->nring]];
    if (usable(s, now) && s != avoid) return s;
  }
  return NULL;
}

static double ewma_score(const gw_server_t *s, uint64_t now) {
  double e = s->ewma_ms;
  if (s->ewma_stamp && now > s->ewma_stamp) e *= exp(-(double)(now - s->ewma_stamp) / EWMA_DECAY_MS);
  return (e + 1.0) * (s->active + 1) / s->weight;
}

static gw_server_t *pick_ewma(gw_upstream_t *up, const gw_server_t *avoid, uint64_t now) {
  gw_server_t *best = NULL;
  double best_score = 0;
  for (size_t i = 0; i < up->nservers; i++) {
    gw_server_t *s = up->servers[i];
    if (!usable(s, now) || s == avoid) continue;
    double sc = ewma_score(s, now);
    if (!best || sc < best_score) {
      best = s;
      best_score = sc;
    }
  }
  return best;
}

gw_server_t *gw_balancer_pick(gw_upstream_t *up, const char *key, size_t keylen, const gw_server_t *avoid,
                              uint64_t now) {
  gw_server_t *s = NULL;
  for (int pass = 0; pass < 2 && !s; pass++) {
    switch (up->balance) {
      case GW_BALANCE_ROUND_ROBIN: s = pick_round_robin(up, avoid, now); break;
      case GW_BALANCE_LEAST_CONN: s = pick_least_conn(up, avoid, now); break;
      case GW_BALANCE_HASH: s = pick_hash(up, key, keylen, avoid, now); break;
      case GW_BALANCE_EWMA: s = pick_ewma(up, avoid, now); break;
    }
    avoid = NULL; /* the only usable server may be the one to avoid */
  }
  return s;
}

int gw_balancer_any_usable(const gw_upstream_t *up, uint64_t now) {
  for (size_t i = 0; i < up->nservers; i++)
    if (usable(up->servers[i], now)) return 1;
  return 0;
}

/* A failed try counts as an answer this slow for ewma: a server that
 * refuses at once would otherwise keep the best score and get every first
 * try. It decays like any sample, so the server is tried again later. */
#define EWMA_FAILURE_MS 1000.0

double gw_balancer_failure_ms(double latency_ms) {
  return latency_ms > EWMA_FAILURE_MS ? latency_ms : EWMA_FAILURE_MS;
}

void gw_balancer_observe(gw_server_t *s, double latency_ms, uint64_t now) {
  /* Peak EWMA: a slower sample is taken at once, faster ones decay in. */
  double e = s->ewma_ms;
  if (s->ewma_stamp && now > s->ewma_stamp) e *= exp(-(double)(now - s->ewma_stamp) / EWMA_DECAY_MS);
  if (latency_ms > e) e = latency_ms;
  else e = e * 0.9 + latency_ms * 0.1;
  s->ewma_ms = e;
  s->ewma_stamp = now;
}
