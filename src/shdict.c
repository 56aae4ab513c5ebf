/*
 * shdict.c: the shared dictionary (see shdict.h).
 *
 * Layout of one dict's area, all positions as offsets from its start:
 *
 *   [gw_shdict_t header][bucket array: nbuckets offsets][heap ............]
 *
 * The heap is a boundary-tag allocator: every block starts with a size word
 * (low bit: in use) and ends with a copy of it, so a freed block merges with
 * free neighbours on both sides in O(1), and free blocks are chained (first
 * fit) through their first two payload words. An entry occupies one block;
 * it sits on the chain of its hash bucket and on the LRU list (most recently
 * used at the head). When an allocation fails, entries are evicted from the
 * LRU tail and the allocation retried: once everything is evicted the heap
 * is one free block again, so any value no bigger than the heap fits.
 *
 * Offset 0 is the header, never an entry or a block, so 0 means "none".
 */
#include "shdict.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "errors.h"
#include "log.h"

/* Placed at the start of the area by gw_shdict_init; shared by every process. */
struct gw_shdict_s {
  pthread_mutex_t lock;              /* process-shared, robust: guards everything below */
  char name[GW_SHDICT_NAME_MAX + 1]; /* as declared, NUL-terminated */
  size_t size;                       /* bytes of the whole area, header included */
  uint32_t busy;                     /* 1 while a holder of the lock may be changing things */
  uint32_t nbuckets;                 /* a power of two */
  size_t buckets_off;                /* size_t[nbuckets], 0 for an empty bucket */
  size_t heap_off;                   /* first block */
  size_t heap_end;                   /* one past the last block */
  size_t free_head;                  /* first free block, 0 if none */
  size_t lru_head;                   /* most recently used entry's block */
  size_t lru_tail;                   /* least recently used entry's block */
  uint64_t items;                    /* entries stored */
  uint64_t used;                     /* bytes of blocks in use */
  uint64_t evictions;                /* entries evicted for room */
  uint64_t resets;                   /* emptied after a holder died */
};

/* The payload of a used block. Owned by the dict; freed by remove_entry. */
typedef struct {
  size_t hnext;   /* next entry's block in the same bucket, 0 at the end */
  size_t lprev;   /* LRU neighbour towards the head (more recent), 0 at the head */
  size_t lnext;   /* LRU neighbour towards the tail, 0 at the tail */
  double expires; /* CLOCK_MONOTONIC seconds, 0 for never */
  double num;     /* number value, or 0/1 for a boolean */
  uint32_t hash;  /* of the key */
  uint32_t vlen;  /* bytes of a string value */
  uint16_t klen;  /* bytes of the key */
  uint8_t type;   /* gw_shv_type_t */
  char data[];    /* the key, then a string value */
} entry_t;

/* The payload of a free block: its links on the free list. */
typedef struct {
  size_t next, prev; /* free blocks, 0 at either end */
} freelink_t;

#define WORD sizeof(size_t)
#define USED ((size_t)1)
#define MIN_BLOCK (2 * WORD + sizeof(freelink_t))
#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

#define AT(d, off) ((char *)(d) + (off))

static size_t *tag(gw_shdict_t *d, size_t b) { return (size_t *)AT(d, b); }
static size_t bsize(gw_shdict_t *d, size_t b) { return *tag(d, b) & ~USED; }
static int bused(gw_shdict_t *d, size_t b) { return (*tag(d, b) & USED) != 0; }
static freelink_t *link_of(gw_shdict_t *d, size_t b) { return (freelink_t *)AT(d, b + WORD); }
static entry_t *entry_of(gw_shdict_t *d, size_t b) { return (entry_t *)AT(d, b + WORD); }
static size_t *buckets(gw_shdict_t *d) { return (size_t *)AT(d, d->buckets_off); }

static void set_block(gw_shdict_t *d, size_t b, size_t size, size_t used) {
  *tag(d, b) = size | used;
  *tag(d, b + size - WORD) = size | used;
}

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t hash_key(const char *k, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 16777619u;
  }
  return h;
}

/* ---- the heap ---- */

static void free_push(gw_shdict_t *d, size_t b) {
  freelink_t *l = link_of(d, b);
  l->prev = 0;
  l->next = d->free_head;
  if (d->free_head) link_of(d, d->free_head)->prev = b;
  d->free_head = b;
}

static void free_unlink(gw_shdict_t *d, size_t b) {
  freelink_t *l = link_of(d, b);
  if (l->prev) link_of(d, l->prev)->next = l->next;
  else d->free_head = l->next;
  if (l->next) link_of(d, l->next)->prev = l->prev;
}

/* A block of exactly `total` bytes (a multiple of 8, >= MIN_BLOCK), or 0. */
static size_t heap_alloc(gw_shdict_t *d, size_t total) {
  for (size_t b = d->free_head; b; b = link_of(d, b)->next) {
    size_t size = bsize(d, b);
    if (size < total) continue;
    free_unlink(d, b);
    if (size - total >= MIN_BLOCK) {
      set_block(d, b + total, size - total, 0);
      free_push(d, b + total);
      size = total;
    }
    set_block(d, b, size, USED);
    d->used += size;
    return b;
  }
  return 0;
}

static void heap_free(gw_shdict_t *d, size_t b) {
  size_t size = bsize(d, b);
  d->used -= size;
  size_t next = b + size;
  if (next < d->heap_end && !bused(d, next)) {
    free_unlink(d, next);
    size += bsize(d, next);
  }
  if (b > d->heap_off) {
    size_t prev_size = *tag(d, b - WORD) & ~USED;
    size_t prev = b - prev_size;
    if (!bused(d, prev)) {
      free_unlink(d, prev);
      b = prev;
      size += prev_size;
    }
  }
  set_block(d, b, size, 0);
  free_push(d, b);
}

/* Empties the dict: every bucket empty, the heap one free block. */
static void reset(gw_shdict_t *d) {
  memset(buckets(d), 0, d->nbuckets * sizeof(size_t));
  d->free_head = d->lru_head = d->lru_tail = 0;
  d->items = d->used = 0;
  set_block(d, d->heap_off, d->heap_end - d->heap_off, 0);
  free_push(d, d->heap_off);
}

/* ---- entries ---- */

static void lru_unlink(gw_shdict_t *d, size_t b) {
  entry_t *e = entry_of(d, b);
  if (e->lprev) entry_of(d, e->lprev)->lnext = e->lnext;
  else d->lru_head = e->lnext;
  if (e->lnext) entry_of(d, e->lnext)->lprev = e->lprev;
  else d->lru_tail = e->lprev;
}

static void lru_push(gw_shdict_t *d, size_t b) {
  entry_t *e = entry_of(d, b);
  e->lprev = 0;
  e->lnext = d->lru_head;
  if (d->lru_head) entry_of(d, d->lru_head)->lprev = b;
  d->lru_head = b;
  if (!d->lru_tail) d->lru_tail = b;
}

static void lru_touch(gw_shdict_t *d, size_t b) {
  if (d->lru_head == b) return;
  lru_unlink(d, b);
  lru_push(d, b);
}

static size_t find(gw_shdict_t *d, const char *key, size_t klen, uint32_t hash) {
  for (size_t b = buckets(d)[hash & (d->nbuckets - 1)]; b; b = entry_of(d, b)->hnext) {
    entry_t *e = entry_of(d, b);
    if (e->hash == hash && e->klen == klen && memcmp(e->data, key, klen) == 0) return b;
  }
  return 0;
}

static void remove_entry(gw_shdict_t *d, size_t b) {
  entry_t *e = entry_of(d, b);
  size_t *slot = &buckets(d)[e->hash & (d->nbuckets - 1)];
  while (*slot != b) slot = &entry_of(d, *slot)->hnext;
  *slot = e->hnext;
  lru_unlink(d, b);
  heap_free(d, b);
  d->items--;
}

static int expired(const entry_t *e, double now) { return e->expires > 0 && e->expires <= now; }

/* The live entry for key, or 0; an expired one is freed on the way. */
static size_t lookup(gw_shdict_t *d, const char *key, size_t klen, uint32_t hash, double now) {
  size_t b = find(d, key, klen, hash);
  if (b && expired(entry_of(d, b), now)) {
    remove_entry(d, b);
    b = 0;
  }
  return b;
}

/* Stores a new entry (the key must not be present). */
static int insert(gw_shdict_t *d, const char *key, size_t klen, uint32_t hash, const gw_shvalue_t *v,
                  double ttl, double now) {
  size_t vlen = v->type == GW_SHV_STRING ? v->len : 0;
  size_t total = ALIGN8(2 * WORD + sizeof(entry_t) + klen + vlen);
  if (total < MIN_BLOCK) total = MIN_BLOCK;
  if (total > d->heap_end - d->heap_off || vlen > UINT32_MAX) return GW_ENOSPACE;
  size_t b;
  while ((b = heap_alloc(d, total)) == 0) {
    /* Every entry evicted means the heap is one block that fits `total`. */
    size_t victim = d->lru_tail;
    if (!victim) return GW_ENOSPACE;
    remove_entry(d, victim);
    d->evictions++;
  }
  entry_t *e = entry_of(d, b);
  e->expires = ttl > 0 ? now + ttl : 0;
  e->num = v->type == GW_SHV_STRING ? 0 : v->num;
  e->hash = hash;
  e->vlen = (uint32_t)vlen;
  e->klen = (uint16_t)klen;
  e->type = (uint8_t)v->type;
  memcpy(e->data, key, klen);
  if (vlen) memcpy(e->data + klen, v->str, vlen);
  size_t *slot = &buckets(d)[hash & (d->nbuckets - 1)];
  e->hnext = *slot;
  *slot = b;
  lru_push(d, b);
  d->items++;
  return 0;
}

/* ---- locking ---- */

/* Takes the lock. A holder that died left `busy` set and possibly a
 * half-made change: the dict is emptied rather than trusted. */
static void lock(gw_shdict_t *d) {
  int rc = pthread_mutex_lock(&d->lock);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(&d->lock);
    if (d->busy) {
      reset(d);
      d->resets++;
      gw_log_warn("shared dict '%s': a process died while changing it; it was emptied", d->name);
    }
  }
  d->busy = 1;
}

static void unlock(gw_shdict_t *d) {
  d->busy = 0;
  pthread_mutex_unlock(&d->lock);
}

/* ---- the API ---- */

gw_shdict_t *gw_shdict_init(void *mem, size_t size, const char *name) {
  gw_shdict_t *d = mem;
  memset(d, 0, sizeof *d);
  pthread_mutexattr_t attr;
  if (pthread_mutexattr_init(&attr) != 0) return NULL;
  int rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (rc == 0) rc = pthread_mutex_init(&d->lock, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) return NULL;
  snprintf(d->name, sizeof d->name, "%s", name);
  d->size = size & ~(size_t)7;
  /* About one bucket per 512 bytes: chains stay short for entries of a few
   * hundred bytes, and the array costs under 2% of the area. */
  uint32_t nb = 16;
  while ((size_t)nb * 512 < size && nb < (1u << 30)) nb <<= 1;
  d->nbuckets = nb;
  d->buckets_off = ALIGN8(sizeof *d);
  d->heap_off = d->buckets_off + (size_t)nb * sizeof(size_t);
  d->heap_end = d->size;
  reset(d);
  return d;
}

const char *gw_shdict_name(const gw_shdict_t *d) { return d->name; }
size_t gw_shdict_size(const gw_shdict_t *d) { return d->size; }

int gw_shdict_get(gw_shdict_t *d, const char *key, size_t klen, gw_shvalue_t *out, gw_buf_t *copy) {
  uint32_t hash = hash_key(key, klen);
  lock(d);
  size_t b = lookup(d, key, klen, hash, now_mono());
  if (!b) {
    unlock(d);
    return GW_ENOTFOUND;
  }
  lru_touch(d, b);
  entry_t *e = entry_of(d, b);
  out->type = e->type;
  out->num = e->num;
  out->str = NULL;
  out->len = 0;
  if (e->type == GW_SHV_STRING) {
    /* Copied under the lock: once it is released another worker may free it. */
    copy->len = 0;
    gw_buf_append(copy, e->data + e->klen, e->vlen);
    out->str = copy->base ? copy->base : "";
    out->len = e->vlen;
  }
  unlock(d);
  return 0;
}

int gw_shdict_set(gw_shdict_t *d, const char *key, size_t klen, const gw_shvalue_t *v, double ttl, int add) {
  uint32_t hash = hash_key(key, klen);
  double now = now_mono();
  lock(d);
  size_t b = lookup(d, key, klen, hash, now);
  int rc = 0;
  if (b && add) {
    rc = GW_EEXISTS;
  } else {
    if (b) remove_entry(d, b);
    if (v->type != GW_SHV_NIL) rc = insert(d, key, klen, hash, v, ttl, now);
  }
  unlock(d);
  return rc;
}

int gw_shdict_incr(gw_shdict_t *d, const char *key, size_t klen, double by, const double *init, double ttl,
                   double *out) {
  uint32_t hash = hash_key(key, klen);
  double now = now_mono();
  lock(d);
  size_t b = lookup(d, key, klen, hash, now);
  int rc = 0;
  if (b) {
    entry_t *e = entry_of(d, b);
    if (e->type != GW_SHV_NUMBER) {
      rc = GW_ENOTNUM;
    } else {
      e->num += by;
      *out = e->num;
      lru_touch(d, b);
    }
  } else if (!init) {
    rc = GW_ENOTFOUND;
  } else {
    gw_shvalue_t v = {GW_SHV_NUMBER, *init + by, NULL, 0};
    rc = insert(d, key, klen, hash, &v, ttl, now);
    if (rc == 0) *out = v.num;
  }
  unlock(d);
  return rc;
}

int gw_shdict_gcra(gw_shdict_t *d, const char *key, size_t klen, double emission_ms, double tolerance_ms,
                   double now_ms, gw_shdict_gcra_t *out) {
  uint32_t hash = hash_key(key, klen);
  lock(d);
  double mono = now_mono(); /* under the lock: decisions and clock agree */
  if (now_ms < 0) now_ms = mono * 1000.0;
  size_t b = lookup(d, key, klen, hash, mono);
  int rc = 0;
  double tat = now_ms;
  if (b) {
    entry_t *e = entry_of(d, b);
    if (e->type != GW_SHV_NUMBER) {
      unlock(d);
      return GW_ENOTNUM;
    }
    if (e->num > tat) tat = e->num;
  }
  /* Ahead of schedule by tat - now; conforming while that is <= tolerance.
   * The small slack absorbs rounding in emission_ms (e.g. 1000 / 3). */
  double ahead = tat - now_ms;
  double slack = emission_ms * 1e-9;
  if (ahead > tolerance_ms + slack) {
    out->allowed = 0;
    out->remaining = 0;
    out->reset_ms = ahead;
    out->retry_after_ms = ahead - tolerance_ms;
    if (b) lru_touch(d, b);
    unlock(d);
    return 0;
  }
  double new_tat = tat + emission_ms;
  double ttl_s = (new_tat - now_ms) / 1000.0;
  if (b) {
    entry_t *e = entry_of(d, b);
    e->num = new_tat;
    e->expires = mono + ttl_s;
    lru_touch(d, b);
  } else {
    gw_shvalue_t v = {GW_SHV_NUMBER, new_tat, NULL, 0};
    rc = insert(d, key, klen, hash, &v, ttl_s, mono);
  }
  if (rc == 0) {
    out->allowed = 1;
    out->remaining = floor((tolerance_ms + emission_ms - (new_tat - now_ms)) / emission_ms + 1e-9);
    if (out->remaining < 0) out->remaining = 0;
    out->reset_ms = new_tat - now_ms;
    out->retry_after_ms = 0;
  }
  unlock(d);
  return rc;
}

int gw_shdict_delete(gw_shdict_t *d, const char *key, size_t klen) {
  uint32_t hash = hash_key(key, klen);
  lock(d);
  size_t b = find(d, key, klen, hash);
  if (b) remove_entry(d, b);
  unlock(d);
  return b ? 0 : GW_ENOTFOUND;
}

void gw_shdict_stats(gw_shdict_t *d, gw_shdict_stats_t *out) {
  lock(d);
  out->items = d->items;
  out->used = d->used;
  out->capacity = d->heap_end - d->heap_off;
  out->evictions = d->evictions;
  out->resets = d->resets;
  unlock(d);
}
