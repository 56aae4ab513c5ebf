/*
 * shm.h: the gateway's shared memory zone.
 *
 * One anonymous shared mapping, made by the master before it forks the
 * first worker (gw_shm_create) and inherited by every worker, including
 * workers restarted later; it is never unmapped, so it outlives every VM
 * generation and every worker, which is what lets shared dicts and counters
 * survive reloads and crashes. It holds, in this order:
 *
 *   - a header: master pid, start time, sizes;
 *   - one gw_shm_worker_t per worker index: what that worker publishes about
 *     itself for /status and /metrics. Each slot has exactly one writer, the
 *     worker with that index (one at a time: a replacement starts after its
 *     predecessor was reaped), so counters need no lock: the writer stores
 *     them with relaxed atomics and readers load them the same way. The text
 *     part (reload record) is written under a sequence counter (`seq`, odd
 *     while being written) and readers copy it until they see the same even
 *     value before and after;
 *   - the per-worker metrics areas (metrics.h), same single-writer rule;
 *   - upstream health (health.h) and the TLS session ticket keys
 *     (tls_tickets.h), each with its own lock-free protocol;
 *   - the shared dicts declared with gw.shared_dict, one area each
 *     (shdict.h), each with its own process-shared robust lock.
 *
 * The zone does not grow: a dict declared by a reload that was not there at
 * start needs a restart.
 */
#ifndef GW_SHM_H
#define GW_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "metrics.h"
#include "shdict.h"

#define GW_SHM_ERROR_MAX 1024
#define GW_SHM_NOTE_MAX 512

/* What a worker last did about its configuration. Written under the slot's
 * seq by the slot's worker only; copied whole by readers (gw_shm_read_info). */
typedef struct gw_shm_info_s {
  double started_at;                    /* realtime seconds: this worker process started */
  double loaded_at;                     /* realtime seconds: the current generation loaded */
  char config_hash[65];                 /* sha256 (hex) of the file the current generation loaded */
  char last_trigger[24];                /* what asked for the last reload: "SIGHUP", "file change"... */
  double last_reload_at;                /* realtime seconds of the last reload attempt, 0 if none */
  int last_reload_ok;                   /* 1 if it succeeded */
  double last_error_at;                 /* realtime seconds of the last failed reload, 0 if none */
  unsigned last_error_generation;       /* the generation that failed to load */
  char last_error[GW_SHM_ERROR_MAX];    /* its error text, file:line first */
  char restart_needed[GW_SHM_NOTE_MAX]; /* settings changed that only a restart applies, or "" */
} gw_shm_info_t;

/* One per worker index; see the file comment for who writes what. */
typedef struct gw_shm_worker_s {
  int32_t pid;                /* the worker process now in this slot, 0 before its start */
  uint32_t generation;        /* the current VM generation */
  uint32_t generations_alive; /* the current one plus retired ones still finishing */
  uint32_t seq;               /* seqlock over `info` */
  uint64_t requests;          /* requests finished by this slot's workers since start */
  uint64_t connections;       /* connections open now */
  uint64_t lua_memory;        /* bytes of Lua heap over live generations */
  uint64_t reloads_ok;        /* reloads that succeeded */
  uint64_t reloads_failed;    /* reloads that failed (the old generation kept serving) */
  gw_shm_info_t info;         /* under seq */
} gw_shm_worker_t;

/* Creates the zone for `nworkers` worker slots and the dicts declared in
 * `cfg` (master, before forking). Returns 0 or a negative error with a
 * message in err. */
int gw_shm_create(unsigned nworkers, const gw_config_t *cfg, char *err, size_t errlen);
/* 1 once the zone exists in this process (never in `gateway -t`). */
int gw_shm_ready(void);
unsigned gw_shm_nworkers(void);
pid_t gw_shm_master_pid(void);
/* Realtime seconds at which the master made the zone. */
double gw_shm_started_at(void);

/* Slot `i` (0 <= i < nworkers). */
gw_shm_worker_t *gw_shm_worker(unsigned i);
/* The metrics area of worker `i` (0 <= i < nworkers). */
gw_metrics_slot_t *gw_shm_metrics(unsigned i);
/* The dict called `name`, or NULL. */
gw_shdict_t *gw_shm_dict(const char *name, size_t len);
/* The size gw.shared_dict declared for `name` at start, or 0 if none. */
size_t gw_shm_dict_declared(const char *name, size_t len);
size_t gw_shm_ndicts(void);
gw_shdict_t *gw_shm_dict_at(size_t i);

/* Relaxed atomic counters of a slot (single writer: see the file comment). */
static inline void gw_shm_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void gw_shm_add(uint64_t *p, uint64_t v) {
  __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline uint64_t gw_shm_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void gw_shm_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t gw_shm_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* The slot's writer brackets changes to `info` with these. */
void gw_shm_info_begin(gw_shm_worker_t *s);
void gw_shm_info_end(gw_shm_worker_t *s);
/* Copies a slot's `info` consistently (a reader). Gives up after a few
 * tries if its writer died half-way, and copies what is there. */
void gw_shm_read_info(const gw_shm_worker_t *s, gw_shm_info_t *out);

#endif
