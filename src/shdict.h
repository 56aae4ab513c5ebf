/*
 * shdict.h: a key/value dictionary that lives in one area of shared memory
 * and is used by every worker at once (gw.shared.NAME in Lua).
 *
 * The area is formatted once by the master (gw_shdict_init) before it forks;
 * workers only call the operations below. Everything inside the area refers
 * to itself by offsets from its start, never by pointers. One process-shared
 * robust mutex guards the whole dict: each operation is a short critical
 * section that runs no Lua and makes no system call besides the lock.
 *
 * Keys are byte strings of 1 to GW_SHDICT_KEY_MAX bytes (callers check). Values are strings, numbers
 * (doubles) or booleans, each with an optional time to live (seconds, on
 * CLOCK_MONOTONIC, which every process of the machine shares). An expired
 * entry is invisible and freed when next touched or when room is needed.
 * When a new value does not fit, the least recently used entries are
 * evicted until it does; only a value bigger than the whole dict fails.
 *
 * If a process dies while holding the lock (a worker killed mid-operation),
 * the next locker gets EOWNERDEAD: the dict may be half-changed, so it is
 * emptied and made consistent again, and a warning is logged. That trades
 * the dict's contents for never reading a torn structure.
 */
#ifndef GW_SHDICT_H
#define GW_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct gw_shdict_s gw_shdict_t;

typedef enum { GW_SHV_NIL = 0, GW_SHV_BOOL, GW_SHV_NUMBER, GW_SHV_STRING } gw_shv_type_t;

/* A value going in or out. For strings, `str`/`len` point at the caller's
 * bytes going in, and into the caller's copy buffer coming out. */
typedef struct gw_shvalue_s {
  int type;        /* gw_shv_type_t */
  double num;      /* the number, or 0/1 for a boolean */
  const char *str; /* string bytes (not NUL-terminated) */
  size_t len;      /* string length */
} gw_shvalue_t;

#define GW_SHDICT_MIN_SIZE 16384
#define GW_SHDICT_KEY_MAX 65535
#define GW_SHDICT_NAME_MAX 63

/* Formats `size` bytes at `mem` (shared memory, 8-byte aligned, size >=
 * GW_SHDICT_MIN_SIZE) as an empty dict called `name`. Returns the dict, or
 * NULL if the process-shared robust mutex cannot be made. */
gw_shdict_t *gw_shdict_init(void *mem, size_t size, const char *name);
const char *gw_shdict_name(const gw_shdict_t *d);
size_t gw_shdict_size(const gw_shdict_t *d);

/* Looks `key` up. Returns 0 and fills `out` (a string is copied into `copy`,
 * which `out->str` then points into, valid until `copy` changes), or
 * GW_ENOTFOUND when absent or expired. */
int gw_shdict_get(gw_shdict_t *d, const char *key, size_t klen, gw_shvalue_t *out, gw_buf_t *copy);

/* Stores `v` under `key` for `ttl` seconds (0: no expiry). With `add`, fails
 * with GW_EEXISTS when a live value is there. A GW_SHV_NIL value deletes.
 * Returns 0, GW_EEXISTS, or GW_ENOSPACE (bigger than the whole dict). */
int gw_shdict_set(gw_shdict_t *d, const char *key, size_t klen, const gw_shvalue_t *v, double ttl, int add);

/* Adds `by` to the number under `key` and stores the sum in *out. A missing
 * key is created with *init + by and `ttl` when init is not NULL, else it
 * fails with GW_ENOTFOUND. An existing entry keeps its expiry. Returns 0,
 * GW_ENOTFOUND, GW_ENOTNUM (the value is not a number) or GW_ENOSPACE. */
int gw_shdict_incr(gw_shdict_t *d, const char *key, size_t klen, double by, const double *init, double ttl,
                   double *out);

/* What one GCRA decision reports (all times in milliseconds). */
typedef struct gw_shdict_gcra_s {
  int allowed;           /* 1: the request conforms and was counted */
  double remaining;      /* requests that could still go back to back now */
  double reset_ms;       /* until the limiter is back to a full burst */
  double retry_after_ms; /* until this request would conform (0 when allowed) */
} gw_shdict_gcra_t;

/* The generic cell rate algorithm on `key`, as one critical section: the
 * value is the theoretical arrival time (TAT, ms on CLOCK_MONOTONIC), kept
 * with a TTL of TAT - now so an idle key disappears once it is back to a
 * full burst. `emission_ms` (> 0) is the spacing of requests at the
 * sustained rate, `tolerance_ms` (>= 0) how far ahead of the schedule a
 * request may come (burst - 1 emission intervals). A conforming request
 * moves the TAT to max(TAT, now) + emission_ms; a refused one changes
 * nothing. `now_ms` < 0 reads CLOCK_MONOTONIC under the lock, so every
 * worker uses one clock and decisions are ordered by the lock (tests pass
 * their own time). Returns 0 with *out filled, GW_ENOTNUM (the key holds
 * something else) or GW_ENOSPACE. */
int gw_shdict_gcra(gw_shdict_t *d, const char *key, size_t klen, double emission_ms, double tolerance_ms,
                   double now_ms, gw_shdict_gcra_t *out);

/* Removes `key`. Returns 0, or GW_ENOTFOUND when it was not there. */
int gw_shdict_delete(gw_shdict_t *d, const char *key, size_t klen);

/* A consistent snapshot of the dict's counters (taken under the lock). */
typedef struct gw_shdict_stats_s {
  uint64_t items;     /* entries stored, expired ones not yet freed included */
  uint64_t used;      /* bytes of the heap in use by entries */
  uint64_t capacity;  /* bytes of the heap */
  uint64_t evictions; /* entries dropped to make room, since start */
  uint64_t resets;    /* times the dict was emptied after a holder died */
} gw_shdict_stats_t;
void gw_shdict_stats(gw_shdict_t *d, gw_shdict_stats_t *out);

#endif
