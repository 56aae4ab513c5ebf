/*
 * shm.c: the shared memory zone (see shm.h).
 *
 * MAP_NORESERVE: a dict's pages cost memory only once something is written
 * to them, so declaring a generous size is cheap.
 */
#include "shm.h"

#include "health.h"
#include "tls_tickets.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "errors.h"
#include "ffi_time.h"

#define MAGIC 0x67777368u /* "gwsh" */
#define AREA_ALIGN 4096

/* The zone's first bytes. Written by the master before forking, then only read. */
typedef struct {
  uint32_t magic;     /* MAGIC */
  uint32_t nworkers;  /* worker slots */
  pid_t master_pid;   /* the process that made the zone */
  double started_at;  /* realtime seconds */
  size_t size;        /* bytes of the mapping */
  size_t workers_off; /* gw_shm_worker_t[nworkers] */
  size_t metrics_off; /* gw_metrics_slot_t[nworkers] */
  size_t health_off;  /* gw_health_t[GW_HEALTH_SLOTS] (health.h) */
  size_t tickets_off; /* the session ticket keys (tls_tickets.h) */
  size_t ndicts;      /* entries in dicts */
  struct {
    size_t off;      /* where the dict's area starts */
    size_t declared; /* the size gw.shared_dict asked for (the area is rounded up) */
  } dicts[];         /* in declaration order */
} zone_t;

static zone_t *zone; /* NULL until gw_shm_create; inherited across fork */

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

int gw_shm_create(unsigned nworkers, const gw_config_t *cfg, char *err, size_t errlen) {
  size_t head = round_up(sizeof(zone_t) + cfg->ndicts * sizeof(zone->dicts[0]), 64);
  size_t workers_off = head;
  size_t metrics_off = round_up(workers_off + nworkers * sizeof(gw_shm_worker_t), 64);
  size_t health_off = round_up(metrics_off + nworkers * sizeof(gw_metrics_slot_t), 64);
  size_t tickets_off = round_up(health_off + gw_health_zone_size(), 64);
  size_t off = round_up(tickets_off + gw_tickets_zone_size(), AREA_ALIGN);
  size_t dicts_start = off;
  for (size_t i = 0; i < cfg->ndicts; i++) {
    if (cfg->dicts[i].size < GW_SHDICT_MIN_SIZE) {
      snprintf(err, errlen, "shared dict '%s': size %zu is below the minimum %d", cfg->dicts[i].name,
               cfg->dicts[i].size, GW_SHDICT_MIN_SIZE);
      return GW_ECONFIG;
    }
    off = round_up(off + cfg->dicts[i].size, AREA_ALIGN);
  }
  void *mem = mmap(NULL, off, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    int rc = -errno;
    snprintf(err, errlen, "cannot map %zu bytes of shared memory: %s", off, strerror(errno));
    return rc;
  }
  zone_t *z = mem;
  z->magic = MAGIC;
  z->nworkers = nworkers;
  z->master_pid = getpid();
  z->started_at = gw_ffi_now();
  z->size = off;
  z->workers_off = workers_off;
  z->metrics_off = metrics_off;
  z->health_off = health_off;
  gw_health_attach((char *)mem + health_off);
  z->tickets_off = tickets_off;
  gw_tickets_attach((char *)mem + tickets_off);
  z->ndicts = cfg->ndicts;
  /* Each dict gets its declared size rounded up to whole pages. */
  for (size_t i = 0, at = dicts_start; i < cfg->ndicts; i++) {
    size_t size = round_up(cfg->dicts[i].size, AREA_ALIGN);
    z->dicts[i].off = at;
    z->dicts[i].declared = cfg->dicts[i].size;
    at += size;
    if (!gw_shdict_init((char *)mem + at - size, size, cfg->dicts[i].name)) {
      snprintf(err, errlen, "shared dict '%s': cannot make its process-shared lock", cfg->dicts[i].name);
      munmap(mem, off);
      return GW_ECONFIG;
    }
  }
  zone = z;
  return 0;
}

int gw_shm_ready(void) { return zone != NULL; }
unsigned gw_shm_nworkers(void) { return zone ? zone->nworkers : 0; }
pid_t gw_shm_master_pid(void) { return zone ? zone->master_pid : 0; }
double gw_shm_started_at(void) { return zone ? zone->started_at : 0; }

gw_shm_worker_t *gw_shm_worker(unsigned i) {
  if (!zone || i >= zone->nworkers) return NULL;
  return (gw_shm_worker_t *)((char *)zone + zone->workers_off) + i;
}

gw_metrics_slot_t *gw_shm_metrics(unsigned i) {
  if (!zone || i >= zone->nworkers) return NULL;
  return (gw_metrics_slot_t *)((char *)zone + zone->metrics_off) + i;
}

size_t gw_shm_ndicts(void) { return zone ? zone->ndicts : 0; }

gw_shdict_t *gw_shm_dict_at(size_t i) {
  if (!zone || i >= zone->ndicts) return NULL;
  return (gw_shdict_t *)((char *)zone + zone->dicts[i].off);
}

static size_t dict_index(const char *name, size_t len) {
  for (size_t i = 0; i < gw_shm_ndicts(); i++) {
    const char *n = gw_shdict_name(gw_shm_dict_at(i));
    if (strlen(n) == len && memcmp(n, name, len) == 0) return i;
  }
  return SIZE_MAX;
}

gw_shdict_t *gw_shm_dict(const char *name, size_t len) {
  size_t i = dict_index(name, len);
  return i == SIZE_MAX ? NULL : gw_shm_dict_at(i);
}

size_t gw_shm_dict_declared(const char *name, size_t len) {
  size_t i = dict_index(name, len);
  return i == SIZE_MAX ? 0 : zone->dicts[i].declared;
}

void gw_shm_info_begin(gw_shm_worker_t *s) {
  __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
}

void gw_shm_info_end(gw_shm_worker_t *s) {
  __atomic_thread_fence(__ATOMIC_RELEASE);
  __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
}

void gw_shm_read_info(const gw_shm_worker_t *s, gw_shm_info_t *out) {
  for (int tries = 0; tries < 1000; tries++) {
    uint32_t before = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (before & 1) {
      sched_yield();
      continue;
    }
    memcpy(out, (const void *)&s->info, sizeof *out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == before) return;
  }
  /* The writer died half-way (its replacement resets seq): take what is there. */
  memcpy(out, (const void *)&s->info, sizeof *out);
  out->last_error[sizeof out->last_error - 1] = '\0';
  out->restart_needed[sizeof out->restart_needed - 1] = '\0';
  out->config_hash[sizeof out->config_hash - 1] = '\0';
  out->last_trigger[sizeof out->last_trigger - 1] = '\0';
}
