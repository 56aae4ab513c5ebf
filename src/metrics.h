/*
 * metrics.h: request counters and latency histograms, kept per worker in
 * shared memory and summed over all workers into Prometheus text.
 *
 * Each worker index owns one gw_metrics_slot_t in the shared zone (shm.h)
 * and is its only writer, so recording a request takes no lock: counters are
 * stored with relaxed atomics, and a new route or (route, status) pair is
 * published by a release store of its `used`/`key` word after its contents
 * are written. Any worker can read every slot to render /metrics. Slots
 * outlive worker processes, so the counters of a restarted worker continue
 * (Prometheus counters never go back) and survive reloads.
 *
 * Routes are the matched pattern ("" when nothing matched), up to
 * GW_METRICS_ROUTE_MAX - 1 bytes. A worker tracks up to GW_METRICS_ROUTES - 1
 * distinct routes; more go to the route "(other)". Pairs that find no room
 * are counted in gateway_metrics_dropped_total.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stdint.h>

#include "buf.h"

#define GW_METRICS_ROUTES 256
#define GW_METRICS_SERIES 1024
#define GW_METRICS_ROUTE_MAX 200
#define GW_METRICS_BUCKETS 11 /* finite bucket bounds; +Inf comes on top */

/* One route of one worker: its latency histogram. */
typedef struct gw_metrics_route_s {
  uint32_t used;                            /* 1 once name is published */
  uint32_t len;                             /* bytes of name */
  char name[GW_METRICS_ROUTE_MAX];          /* the pattern, NUL-terminated */
  uint64_t buckets[GW_METRICS_BUCKETS + 1]; /* requests per bucket, not cumulative; last: above all bounds */
  uint64_t count;                           /* requests */
  uint64_t sum_ns;                          /* their summed duration */
} gw_metrics_route_t;

/* One (route, status) request counter of one worker. */
typedef struct gw_metrics_series_s {
  uint32_t key;   /* (route index + 1) << 10 | status; 0 while free */
  uint32_t _pad;  /* keeps count 8-byte aligned */
  uint64_t count; /* requests */
} gw_metrics_series_t;

/* Lives in the shared zone, one per worker index; see the file comment. */
typedef struct gw_metrics_slot_s {
  gw_metrics_route_t routes[GW_METRICS_ROUTES];  /* open addressing by name; the last is "(other)" */
  gw_metrics_series_t series[GW_METRICS_SERIES]; /* open addressing by key */
  uint64_t dropped;                              /* requests not counted by (route, status): no room */
} gw_metrics_slot_t;

/* This process writes to worker slot `index` from now on. */
void gw_metrics_init(unsigned index);
/* Records one finished request: the route pattern (NULL: none matched),
 * the status sent, and its duration. Called once per request, where the
 * request ends (conn.c). */
void gw_metrics_request(const char *route, int status, double seconds);
/* The histogram bucket of a duration: 0 .. GW_METRICS_BUCKETS (above all bounds). */
unsigned gw_metrics_bucket(double seconds);
/* Appends the Prometheus text exposition (format 0.0.4) of every worker's
 * counters, summed, to `out`. */
void gw_metrics_render(gw_buf_t *out);

#endif
