/*
 * health.c: shared upstream health and circuit breakers (see health.h).
 *
 * The table is open-addressed by key. A slot's key is set once, by the
 * first process to claim it (CAS from 0), and never cleared: groups and
 * servers are few and bounded by the configuration, and a slot reused after
 * a reload by the same group and address keeps its state, which is the
 * point. A full table degrades to private entries (per worker), logged once.
 */
#include "health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "mem.h"

static gw_health_t *table; /* GW_HEALTH_SLOTS entries in the shared zone, or NULL */

size_t gw_health_zone_size(void) { return GW_HEALTH_SLOTS * sizeof(gw_health_t); }

void gw_health_attach(void *mem) { table = mem; }

gw_health_t *gw_health_table(size_t *n) {
  *n = table ? GW_HEALTH_SLOTS : 0;
  return table;
}

static uint64_t key_of(const char *group, const char *addr) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
  for (const char *p = group; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
  h = (h ^ 0xff) * 1099511628211ULL; /* separator: ("ab","c") != ("a","bc") */
  for (const char *p = addr; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
  return h ? h : 1;
}

static gw_health_t *private_entry(const char *group, const char *addr) {
  gw_health_t *h = gw_xcalloc(1, sizeof *h);
  h->key = key_of(group, addr);
  snprintf(h->name, sizeof h->name, "%s%s%s", group, *addr ? " " : "", addr);
  return h;
}

gw_health_t *gw_health_get(const char *group, const char *addr) {
  if (!table) return private_entry(group, addr);
  uint64_t key = key_of(group, addr);
  for (size_t i = 0; i < GW_HEALTH_SLOTS; i++) {
    gw_health_t *h = &table[(key + i) % GW_HEALTH_SLOTS];
    uint64_t k = __atomic_load_n(&h->key, __ATOMIC_ACQUIRE);
    if (k == key) return h;
    if (k != 0) continue;
    uint64_t expected = 0;
    if (__atomic_compare_exchange_n(&h->key, &expected, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      /* Readers show the name only once key is set; a race shows it blank. */
      snprintf(h->name, sizeof h->name, "%s%s%s", group, *addr ? " " : "", addr);
      return h;
    }
    if (expected == key) return h;
  }
  static int warned;
  if (!warned++) gw_log_warn("upstream health table full: health of new servers is per worker");
  return private_entry(group, addr);
}

int gw_health_down(const gw_health_t *h, uint64_t now) {
  return gw_health_load(&h->down_until) > now || gw_health_load32(&h->active_down);
}

void gw_health_observe(gw_health_t *h, uint64_t ns) {
  __atomic_add_fetch(&h->dur_buckets[gw_metrics_bucket((double)ns / 1e9)], 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&h->dur_count, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&h->dur_sum_ns, ns, __ATOMIC_RELAXED);
}

int gw_health_report(gw_health_t *h, int ok, int failures, double cooldown, uint64_t now) {
  __atomic_add_fetch(&h->requests, 1, __ATOMIC_RELAXED);
  if (ok) {
    __atomic_store_n(&h->fails, 0, __ATOMIC_RELAXED);
    return 0;
  }
  __atomic_add_fetch(&h->failures, 1, __ATOMIC_RELAXED);
  uint32_t n = __atomic_add_fetch(&h->fails, 1, __ATOMIC_RELAXED);
  if (failures <= 0 || n < (uint32_t)failures) return 0;
  /* Only the report that reaches the threshold marks it (others race to 0). */
  uint32_t expected = n;
  if (!__atomic_compare_exchange_n(&h->fails, &expected, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return 0;
  __atomic_store_n(&h->down_until, now + gw_seconds_to_ms(cooldown), __ATOMIC_RELAXED);
  return 1;
}

int gw_breaker_allow(gw_health_t *g, uint64_t now, int *probe) {
  *probe = 0;
  uint32_t st = gw_health_load32(&g->breaker);
  if (st == GW_BREAKER_CLOSED) return 1;
  if (st == GW_BREAKER_OPEN) {
    if (gw_health_load(&g->open_until) > now) return 0;
    /* Cooldown over: half-open, and this exchange may be the probe. */
    __atomic_store_n(&g->breaker, GW_BREAKER_HALF_OPEN, __ATOMIC_RELAXED);
  }
  uint32_t expected = 0;
  if (__atomic_compare_exchange_n(&g->probe, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
    *probe = 1;
    return 1;
  }
  return 0;
}

void gw_breaker_report(gw_health_t *g, int ok, int probe, int failures, double window, double cooldown,
                       uint64_t now) {
  if (failures <= 0) return;
  if (probe) {
    if (ok) {
      __atomic_store_n(&g->window_fails, 0, __ATOMIC_RELAXED);
      __atomic_store_n(&g->window_start, now, __ATOMIC_RELAXED);
      __atomic_store_n(&g->breaker, GW_BREAKER_CLOSED, __ATOMIC_RELAXED);
    } else {
      __atomic_store_n(&g->open_until, now + gw_seconds_to_ms(cooldown), __ATOMIC_RELAXED);
      __atomic_store_n(&g->breaker, GW_BREAKER_OPEN, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&g->probe, 0, __ATOMIC_RELEASE);
    return;
  }
  if (ok || gw_health_load32(&g->breaker) != GW_BREAKER_CLOSED) return;
  uint64_t start = gw_health_load(&g->window_start);
  if (now - start > gw_seconds_to_ms(window)) {
    /* A new window; a racing reset loses at most a failure or two. */
    __atomic_store_n(&g->window_start, now, __ATOMIC_RELAXED);
    __atomic_store_n(&g->window_fails, 0, __ATOMIC_RELAXED);
  }
  uint32_t n = __atomic_add_fetch(&g->window_fails, 1, __ATOMIC_RELAXED);
  if (n >= (uint32_t)failures) {
    __atomic_store_n(&g->open_until, now + gw_seconds_to_ms(cooldown), __ATOMIC_RELAXED);
    __atomic_store_n(&g->breaker, GW_BREAKER_OPEN, __ATOMIC_RELAXED);
    gw_log_warn("upstream %s: circuit breaker open for %.1f s after %u failures", g->name, cooldown, n);
  }
}
