/*
 * health.h: what all workers agree on about upstream servers: passive and
 * active health, and each group's circuit breaker.
 *
 * One gw_health_t per server (keyed by group name and address) and one per
 * group (the breaker, address ""), in a fixed table in the shared memory
 * zone. Entries are claimed with a compare-and-swap on their key and
 * updated with atomics, so no lock is taken on the request path and a
 * worker that dies mid-update leaves nothing locked. Times are
 * CLOCK_MONOTONIC milliseconds (uv_hrtime), the same in every process.
 * Without a zone (gateway -t, the master) each server gets a private entry.
 */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define GW_HEALTH_SLOTS 4096

typedef enum { GW_BREAKER_CLOSED = 0, GW_BREAKER_OPEN = 1, GW_BREAKER_HALF_OPEN = 2 } gw_breaker_state_t;

/* Lives in the shared zone (or privately, see above); never freed. */
typedef struct gw_health_s {
  uint64_t key;         /* hash of group and address; 0: free slot */
  char name[96];        /* "group" or "group address", for /status (written once) */
  uint32_t fails;       /* consecutive passive failures */
  uint32_t active_down; /* 1 while active checks say the server is down */
  uint32_t active_ok;   /* consecutive successful active checks */
  uint32_t active_bad;  /* consecutive failed active checks */
  uint64_t down_until;  /* passive health: down until this time (ms) */
  uint64_t requests;    /* exchanges reported, all workers */
  uint64_t failures;    /* of which failed */
  /* The breaker (group entries only). */
  uint32_t breaker;      /* gw_breaker_state_t */
  uint32_t probe;        /* 1 while the half-open probe is in flight */
  uint64_t window_start; /* ms: start of the failure-counting window */
  uint32_t window_fails; /* failures in the window */
  uint32_t pad;
  uint64_t open_until; /* ms: the breaker half-opens then */
  /* Latency of the tries that reached the server (server entries only):
   * per bucket of metrics.h's bounds (not cumulative; the last is above
   * all), their number and summed nanoseconds, all workers. */
  uint64_t dur_buckets[GW_METRICS_BUCKETS + 1];
  uint64_t dur_count;
  uint64_t dur_sum_ns;
} gw_health_t;

/* The entry for `group` and `addr` ("" for the group's breaker): found or
 * claimed in the shared table, or a private one. Never NULL. */
gw_health_t *gw_health_get(const char *group, const char *addr);
/* The shared table (for /status and /metrics); *n set to its size. */
gw_health_t *gw_health_table(size_t *n);
/* The bytes the shared zone needs for the table. */
size_t gw_health_zone_size(void);
/* Gives the table its memory (the master, when making the zone). */
void gw_health_attach(void *mem);

static inline uint64_t gw_health_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t gw_health_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* 1 if passive or active health has the server out now. */
int gw_health_down(const gw_health_t *h, uint64_t now_ms);
/* Passive health: one exchange's outcome. After `failures` consecutive
 * failures (0: never) the server is down for `cooldown` seconds. Returns 1
 * when this report marked it down. */
int gw_health_report(gw_health_t *h, int ok, int failures, double cooldown, uint64_t now_ms);

/* One try's latency (connect to the end of the answer, or to its failure),
 * for gateway_upstream_duration_seconds. */
void gw_health_observe(gw_health_t *h, uint64_t ns);

/* The breaker of a group: may an exchange start now? Half-open lets one
 * probe through (and *probe is set: report its outcome with probe = 1). */
int gw_breaker_allow(gw_health_t *g, uint64_t now_ms, int *probe);
/* An exchange's outcome for the breaker: `failures` within `window`
 * seconds open it for `cooldown` seconds. */
void gw_breaker_report(gw_health_t *g, int ok, int probe, int failures, double window, double cooldown,
                       uint64_t now_ms);

#endif
