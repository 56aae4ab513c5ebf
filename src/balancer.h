/*
 * balancer.h: choosing a server of an upstream group.
 *
 * - round_robin: smooth weighted round robin: every pick adds each server's
 *   weight to its current weight and takes the largest, which it lowers by
 *   the total; the sequence interleaves servers in proportion to weight.
 * - least_conn: the fewest exchanges in flight relative to weight; ties go
 *   round robin.
 * - hash: a ring of 160 points per unit of weight; a key goes to the first
 *   point at or after its hash, so adding a server moves about 1/n of keys.
 * - ewma: peak-EWMA latency times (in flight + 1), the lowest wins.
 * Servers down by passive health, retired, or unresolved are skipped.
 */
#ifndef GW_BALANCER_H
#define GW_BALANCER_H

#include <stddef.h>
#include <stdint.h>

#include "upstream.h"

/* Recomputes derived state (the hash ring) after the server list changed. */
void gw_balancer_rebuild(gw_upstream_t *up);
gw_server_t *gw_balancer_pick(gw_upstream_t *up, const char *key, size_t keylen, const gw_server_t *avoid,
                              uint64_t now_ms);
/* 1 if a pick would find a server now; no side effects. */
int gw_balancer_any_usable(const gw_upstream_t *up, uint64_t now_ms);
/* Feeds a latency sample to the EWMA of `s`. */
void gw_balancer_observe(gw_server_t *s, double latency_ms, uint64_t now_ms);
/* The latency a failed try that took latency_ms is observed as (ewma). */
double gw_balancer_failure_ms(double latency_ms);
/* The 32-bit hash used by the ring (FNV-1a). */
uint32_t gw_hash32(const char *p, size_t n);

#endif
