/*
 * Unit tests for src/shdict.c: the shared dict's semantics, its heap and
 * LRU invariants under random churn (checked against a model), recovery when
 * a process dies holding the lock, atomic incr across processes, and the
 * GCRA (exact burst, refill, retry times, atomic across processes).
 * Each test runs in its own forked process; the dict lives in an anonymous
 * shared mapping as in the gateway.
 *
 * spec-ldflags: -lpthread
 */
#include "../../src/shdict.c"
#include "../../src/buf.c"
#include "../../src/errors.c"
#include "../../src/log.c"
#include "../../src/mem.c"

#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks_failed;

#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      printf("    %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      checks_failed++;                                                 \
    }                                                                  \
  } while (0)

static gw_shdict_t *make_dict(size_t size) {
  void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) abort();
  gw_shdict_t *d = gw_shdict_init(mem, size, "test");
  if (!d) abort();
  return d;
}

static gw_buf_t copy;

static int set_str(gw_shdict_t *d, const char *k, const char *v, double ttl, int add) {
  gw_shvalue_t val = {GW_SHV_STRING, 0, v, strlen(v)};
  return gw_shdict_set(d, k, strlen(k), &val, ttl, add);
}

static int set_num(gw_shdict_t *d, const char *k, double n) {
  gw_shvalue_t val = {GW_SHV_NUMBER, n, NULL, 0};
  return gw_shdict_set(d, k, strlen(k), &val, 0, 0);
}

static int get(gw_shdict_t *d, const char *k, gw_shvalue_t *out) {
  return gw_shdict_get(d, k, strlen(k), out, &copy);
}

static int has_str(gw_shdict_t *d, const char *k, const char *want) {
  gw_shvalue_t v;
  if (get(d, k, &v) != 0 || v.type != GW_SHV_STRING) return 0;
  return v.len == strlen(want) && memcmp(v.str, want, v.len) == 0;
}

/* Walks the heap and the lists; returns 1 if every invariant holds. */
static int invariants(gw_shdict_t *d) {
  size_t blocks_used = 0, free_blocks = 0, used_bytes = 0;
  int prev_free = 0;
  for (size_t b = d->heap_off; b < d->heap_end;) {
    size_t size = bsize(d, b);
    if (size < MIN_BLOCK || b + size > d->heap_end) return printf("    bad block size\n"), 0;
    if (*tag(d, b + size - WORD) != *tag(d, b)) return printf("    footer mismatch\n"), 0;
    if (bused(d, b)) {
      blocks_used++;
      used_bytes += size;
      prev_free = 0;
    } else {
      if (prev_free) return printf("    two free blocks side by side\n"), 0;
      free_blocks++;
      prev_free = 1;
    }
    b += size;
  }
  size_t n = 0;
  for (size_t b = d->free_head; b; b = link_of(d, b)->next) {
    if (bused(d, b)) return printf("    used block on the free list\n"), 0;
    n++;
  }
  if (n != free_blocks) return printf("    free list has %zu of %zu free blocks\n", n, free_blocks), 0;
  size_t lru = 0;
  for (size_t b = d->lru_head; b; b = entry_of(d, b)->lnext) lru++;
  size_t chained = 0;
  for (uint32_t i = 0; i < d->nbuckets; i++)
    for (size_t b = buckets(d)[i]; b; b = entry_of(d, b)->hnext) chained++;
  if (lru != blocks_used || chained != blocks_used || d->items != blocks_used)
    return printf("    counts: lru %zu chained %zu items %llu used blocks %zu\n", lru, chained,
                  (unsigned long long)d->items, blocks_used), 0;
  if (d->used != used_bytes) return printf("    used bytes\n"), 0;
  return 1;
}

static void test_basic(void) {
  gw_shdict_t *d = make_dict(1 << 20);
  gw_shvalue_t v;
  CHECK(get(d, "missing", &v) == GW_ENOTFOUND);
  CHECK(set_str(d, "a", "hello", 0, 0) == 0);
  CHECK(has_str(d, "a", "hello"));
  CHECK(set_str(d, "a", "world!", 0, 0) == 0);
  CHECK(has_str(d, "a", "world!"));
  CHECK(set_str(d, "a", "x", 0, 1) == GW_EEXISTS);
  CHECK(set_str(d, "b", "", 0, 1) == 0);
  CHECK(has_str(d, "b", ""));
  CHECK(set_num(d, "n", 2.5) == 0);
  CHECK(get(d, "n", &v) == 0 && v.type == GW_SHV_NUMBER && v.num == 2.5);
  gw_shvalue_t t = {GW_SHV_BOOL, 1, NULL, 0};
  CHECK(gw_shdict_set(d, "t", 1, &t, 0, 0) == 0);
  CHECK(get(d, "t", &v) == 0 && v.type == GW_SHV_BOOL && v.num == 1);
  gw_shvalue_t nil = {GW_SHV_NIL, 0, NULL, 0};
  CHECK(gw_shdict_set(d, "t", 1, &nil, 0, 0) == 0);
  CHECK(get(d, "t", &v) == GW_ENOTFOUND);
  CHECK(gw_shdict_delete(d, "a", 1) == 0);
  CHECK(gw_shdict_delete(d, "a", 1) == GW_ENOTFOUND);
  CHECK(get(d, "a", &v) == GW_ENOTFOUND);
  /* Keys are bytes: embedded NULs and long keys. */
  char key[GW_SHDICT_KEY_MAX];
  memset(key, 'k', sizeof key);
  key[3] = '\0';
  gw_shvalue_t s = {GW_SHV_STRING, 0, "long", 4};
  CHECK(gw_shdict_set(d, key, sizeof key, &s, 0, 0) == 0);
  CHECK(gw_shdict_get(d, key, sizeof key, &v, &copy) == 0 && v.len == 4);
  CHECK(gw_shdict_get(d, key, 3, &v, &copy) == GW_ENOTFOUND);
  CHECK(invariants(d));
}

static void test_incr(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  double out = 0, init = 10;
  CHECK(gw_shdict_incr(d, "c", 1, 1, NULL, 0, &out) == GW_ENOTFOUND);
  CHECK(gw_shdict_incr(d, "c", 1, 1, &init, 0, &out) == 0 && out == 11);
  CHECK(gw_shdict_incr(d, "c", 1, -3, &init, 0, &out) == 0 && out == 8);
  CHECK(gw_shdict_incr(d, "c", 1, 0.5, NULL, 0, &out) == 0 && out == 8.5);
  CHECK(set_str(d, "s", "text", 0, 0) == 0);
  CHECK(gw_shdict_incr(d, "s", 1, 1, &init, 0, &out) == GW_ENOTNUM);
  CHECK(invariants(d));
}

static void test_ttl(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  gw_shvalue_t v;
  CHECK(set_str(d, "short", "x", 0.05, 0) == 0);
  CHECK(set_str(d, "long", "y", 10, 0) == 0);
  double out, init = 0;
  CHECK(gw_shdict_incr(d, "cnt", 3, 1, &init, 0.05, &out) == 0 && out == 1);
  CHECK(has_str(d, "short", "x"));
  usleep(80 * 1000);
  CHECK(get(d, "short", &v) == GW_ENOTFOUND);
  CHECK(has_str(d, "long", "y"));
  /* An expired key can be added again, and incr starts over. */
  CHECK(gw_shdict_incr(d, "cnt", 3, 1, &init, 0, &out) == 0 && out == 1);
  CHECK(set_str(d, "short", "again", 0, 1) == 0);
  CHECK(has_str(d, "short", "again"));
  CHECK(invariants(d));
}

static void test_lru_eviction(void) {
  gw_shdict_t *d = make_dict(GW_SHDICT_MIN_SIZE);
  char key[32], val[200];
  memset(val, 'v', sizeof val - 1);
  val[sizeof val - 1] = '\0';
  int n = 0;
  /* Fill well past capacity; key0 is read after every write so it stays recent. */
  for (n = 0; n < 400; n++) {
    snprintf(key, sizeof key, "key%d", n);
    CHECK(set_str(d, key, val, 0, 0) == 0);
    CHECK(has_str(d, "key0", val));
  }
  CHECK(d->evictions > 0);
  CHECK(has_str(d, "key0", val));  /* recently used: kept */
  CHECK(!has_str(d, "key1", val)); /* least recently used: evicted */
  CHECK(has_str(d, "key399", val));
  CHECK(invariants(d));
  /* A value bigger than the dict fails and leaves the dict usable. */
  size_t big = GW_SHDICT_MIN_SIZE * 2;
  char *huge = calloc(1, big);
  gw_shvalue_t hv = {GW_SHV_STRING, 0, huge, big};
  CHECK(gw_shdict_set(d, "huge", 4, &hv, 0, 0) == GW_ENOSPACE);
  free(huge);
  CHECK(has_str(d, "key399", val));
  /* A value nearly as big as the heap evicts everything and fits. */
  size_t cap = d->heap_end - d->heap_off - 200;
  char *most = calloc(1, cap);
  gw_shvalue_t mv = {GW_SHV_STRING, 0, most, cap};
  CHECK(gw_shdict_set(d, "most", 4, &mv, 0, 0) == 0);
  CHECK(d->items == 1);
  free(most);
  CHECK(invariants(d));
}

/* Random operations against a model, in a dict big enough to never evict. */
#define MODEL_KEYS 300
static void test_random_against_model(void) {
  gw_shdict_t *d = make_dict(4 << 20);
  static char model[MODEL_KEYS][600];
  static int present[MODEL_KEYS];
  srand(42);
  for (int i = 0; i < 200000; i++) {
    int k = rand() % MODEL_KEYS, op = rand() % 4;
    char key[16];
    snprintf(key, sizeof key, "k%d", k);
    if (op <= 1) {
      int len = rand() % 500;
      for (int j = 0; j < len; j++) model[k][j] = (char)('a' + (i + j) % 26);
      model[k][len] = '\0';
      CHECK(set_str(d, key, model[k], 0, 0) == 0);
      present[k] = 1;
    } else if (op == 2) {
      CHECK(gw_shdict_delete(d, key, strlen(key)) == (present[k] ? 0 : GW_ENOTFOUND));
      present[k] = 0;
    } else {
      gw_shvalue_t v;
      if (present[k]) CHECK(has_str(d, key, model[k]));
      else CHECK(get(d, key, &v) == GW_ENOTFOUND);
    }
    if (checks_failed) return;
  }
  CHECK(d->evictions == 0);
  CHECK(invariants(d));
}

/* Random churn with evictions: only the invariants can be checked. */
static void test_random_churn(void) {
  gw_shdict_t *d = make_dict(64 << 10);
  srand(7);
  static char val[3000];
  memset(val, 'x', sizeof val);
  for (int i = 0; i < 100000; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", rand() % 2000);
    gw_shvalue_t v = {GW_SHV_STRING, 0, val, (size_t)(rand() % 3000)};
    int r = rand() % 10;
    if (r < 6) CHECK(gw_shdict_set(d, key, strlen(key), &v, rand() % 3 ? 0 : 0.001, 0) == 0);
    else if (r < 8) gw_shdict_delete(d, key, strlen(key));
    else get(d, key, &v);
    if (i % 5000 == 0) CHECK(invariants(d));
    if (checks_failed) return;
  }
  CHECK(d->evictions > 0);
  CHECK(invariants(d));
}

static void test_owner_died(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  CHECK(set_str(d, "a", "1", 0, 0) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    lock(d); /* and die holding it, mid-change */
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  gw_log_set_level(GW_LOG_ERROR); /* the warning is expected */
  gw_shvalue_t v;
  CHECK(get(d, "a", &v) == GW_ENOTFOUND); /* emptied, not trusted */
  CHECK(d->resets == 1);
  CHECK(set_str(d, "b", "2", 0, 0) == 0);
  CHECK(has_str(d, "b", "2"));
  CHECK(invariants(d));
}

static void test_incr_across_processes(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  enum { PROCS = 4, EACH = 20000 };
  pid_t pids[PROCS];
  for (int p = 0; p < PROCS; p++) {
    pids[p] = fork();
    if (pids[p] == 0) {
      double out, init = 0;
      for (int i = 0; i < EACH; i++) gw_shdict_incr(d, "n", 1, 1, &init, 0, &out);
      _exit(0);
    }
  }
  for (int p = 0; p < PROCS; p++) waitpid(pids[p], NULL, 0);
  gw_shvalue_t v;
  CHECK(get(d, "n", &v) == 0 && v.num == PROCS * EACH);
}

static int gcra(gw_shdict_t *d, const char *k, double t, double tau, double now, gw_shdict_gcra_t *o) {
  return gw_shdict_gcra(d, k, strlen(k), t, tau, now, o);
}

/* 10 per second, burst 10: T = 100 ms, tolerance 900 ms. */
static void test_gcra(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  gw_shdict_gcra_t o;
  double now = 5000;
  for (int i = 0; i < 10; i++) {
    CHECK(gcra(d, "k", 100, 900, now, &o) == 0 && o.allowed == 1);
    CHECK(o.remaining == 9 - i);
    CHECK(o.reset_ms == 100 * (i + 1));
    CHECK(o.retry_after_ms == 0);
  }
  CHECK(gcra(d, "k", 100, 900, now, &o) == 0 && o.allowed == 0);
  CHECK(o.remaining == 0 && o.retry_after_ms == 100 && o.reset_ms == 1000);
  /* A refusal changes nothing: the same answer again. */
  CHECK(gcra(d, "k", 100, 900, now + 50, &o) == 0 && o.allowed == 0 && o.retry_after_ms == 50);
  /* One emission interval later, exactly one more conforms. */
  CHECK(gcra(d, "k", 100, 900, now + 100, &o) == 0 && o.allowed == 1 && o.remaining == 0);
  CHECK(gcra(d, "k", 100, 900, now + 100, &o) == 0 && o.allowed == 0);
  /* After a full period the whole burst is back. */
  CHECK(gcra(d, "k", 100, 900, now + 1100, &o) == 0 && o.allowed == 1 && o.remaining == 9);
  /* Keys are independent; a string value is not a TAT. */
  CHECK(gcra(d, "other", 100, 900, now, &o) == 0 && o.allowed == 1 && o.remaining == 9);
  CHECK(set_str(d, "s", "x", 0, 0) == 0);
  CHECK(gcra(d, "s", 100, 900, now, &o) == GW_ENOTNUM);
  /* Burst 1 (tolerance 0): strictly one per interval. A rate of 3/s
   * (T = 333.33 ms) does not lose a request to rounding. */
  CHECK(gcra(d, "one", 1000.0 / 3, 0, now, &o) == 0 && o.allowed == 1 && o.remaining == 0);
  CHECK(gcra(d, "one", 1000.0 / 3, 0, now + 300, &o) == 0 && o.allowed == 0);
  CHECK(gcra(d, "one", 1000.0 / 3, 0, now + 1000.0 / 3, &o) == 0 && o.allowed == 1);
  CHECK(gcra(d, "three", 1000.0 / 3, 2000.0 / 3, now, &o) == 0 && o.remaining == 2);
}

/* The stored TAT expires once the key is back to a full burst. */
static void test_gcra_ttl(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  gw_shdict_gcra_t o;
  CHECK(gcra(d, "k", 30, 0, -1, &o) == 0 && o.allowed == 1);
  gw_shvalue_t v;
  CHECK(get(d, "k", &v) == 0 && v.type == GW_SHV_NUMBER);
  CHECK(gcra(d, "k", 30, 0, -1, &o) == 0 && o.allowed == 0 && o.retry_after_ms > 0);
  usleep(60 * 1000);
  CHECK(get(d, "k", &v) == GW_ENOTFOUND);
  CHECK(gcra(d, "k", 30, 0, -1, &o) == 0 && o.allowed == 1);
}

/* Many processes hammering one key on the real clock: no more than the
 * burst plus what the rate refills in the elapsed time gets through. */
static void test_gcra_across_processes(void) {
  gw_shdict_t *d = make_dict(1 << 16);
  gw_shvalue_t cnt = {GW_SHV_NUMBER, 0, NULL, 0};
  gw_shdict_set(d, "allowed", 7, &cnt, 0, 0);
  enum { PROCS = 4, EACH = 5000 };
  double start = now_mono();
  pid_t pids[PROCS];
  for (int p = 0; p < PROCS; p++) {
    pids[p] = fork();
    if (pids[p] == 0) {
      gw_shdict_gcra_t o;
      double out;
      /* 1 per 10 s, burst 50: the refill is negligible during the test. */
      for (int i = 0; i < EACH; i++) {
        if (gcra(d, "k", 10000, 49 * 10000.0, -1, &o) == 0 && o.allowed)
          gw_shdict_incr(d, "allowed", 7, 1, NULL, 0, &out);
      }
      _exit(0);
    }
  }
  for (int p = 0; p < PROCS; p++) waitpid(pids[p], NULL, 0);
  double elapsed = now_mono() - start;
  gw_shvalue_t v;
  CHECK(get(d, "allowed", &v) == 0);
  CHECK(v.num >= 50 && v.num <= 50 + (int)(elapsed / 10.0) + 1);
  if (elapsed < 10) CHECK(v.num == 50);
}

typedef struct {
  const char *name;
  void (*fn)(void);
} test_t;

static const test_t tests[] = {
    {"basic", test_basic},
    {"incr", test_incr},
    {"ttl", test_ttl},
    {"lru_eviction", test_lru_eviction},
    {"random_against_model", test_random_against_model},
    {"random_churn", test_random_churn},
    {"owner_died", test_owner_died},
    {"incr_across_processes", test_incr_across_processes},
    {"gcra", test_gcra},
    {"gcra_ttl", test_gcra_ttl},
    {"gcra_across_processes", test_gcra_across_processes},
};

int main(void) {
  int passed = 0, failed = 0;
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      tests[i].fn();
      fflush(stdout);
      _exit(checks_failed ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    printf("%s %s\n", ok ? "ok  " : "FAIL", tests[i].name);
    ok ? passed++ : failed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
