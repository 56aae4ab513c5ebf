/*
 * test_balancer.c: the balancing algorithms of src/balancer.c.
 *
 * Groups are built by hand (no src/upstream.c: no resolution, no registry);
 * balancer.c needs nothing of upstream.c but the types of upstream.h. Each
 * server gets a private health entry (src/health.c without a shared zone),
 * and "down" is set through it as passive or active health would.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/log.c"
#include "../../src/health.c"
#include "../../src/balancer.c"

#include "runner.h"

#define NOW 1000000u /* ms; any fixed "now" */

static gw_server_t *server(const char *addr, int weight) {
  gw_server_t *s = gw_xcalloc(1, sizeof *s);
  s->addr = gw_xstrndup(addr, strlen(addr));
  s->weight = weight;
  s->resolved = 1;
  s->health = gw_health_get("g", addr);
  return s;
}

/* Passive health: down until `until` (ms); 0 brings it back. */
static void down_until(gw_server_t *s, uint64_t until) { s->health->down_until = until; }

/* A group of n servers named "a".."z" (addresses 10.0.0.N:80), weights given. */
static gw_upstream_t *group(gw_balance_t balance, size_t n, const int *weights) {
  gw_upstream_t *up = gw_xcalloc(1, sizeof *up);
  up->name = gw_xstrndup("g", 1);
  up->balance = balance;
  up->servers = gw_xcalloc(n ? n : 1, sizeof *up->servers);
  for (size_t i = 0; i < n; i++) {
    char addr[32];
    snprintf(addr, sizeof addr, "10.0.0.%zu:80", i + 1);
    up->servers[i] = server(addr, weights ? weights[i] : 1);
  }
  up->nservers = n;
  gw_balancer_rebuild(up);
  return up;
}

/* The letter of a picked server: 'a' for servers[0], ... ; '-' for NULL. */
static char letter(const gw_upstream_t *up, const gw_server_t *s) {
  for (size_t i = 0; i < up->nservers; i++)
    if (up->servers[i] == s) return (char)('a' + i);
  return s ? '?' : '-';
}

/* n picks as a string of letters. */
static void picks(gw_upstream_t *up, int n, const gw_server_t *avoid, char *out) {
  for (int i = 0; i < n; i++) out[i] = letter(up, gw_balancer_pick(up, NULL, 0, avoid, NOW));
  out[n] = '\0';
}

/* ---- round robin ---- */

TEST(round_robin_smooth_weighted_sequence) {
  /* nginx's smooth weighted round robin with weights 5, 1, 1 gives
   * a a b a c a a, then again: never five a's in a row. */
  const int w[] = {5, 1, 1};
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 3, w);
  char got[32];
  picks(up, 21, NULL, got);
  CHECK_STR_EQ(got, "aabacaaaabacaaaabacaa");
}

TEST(round_robin_equal_weights_rotate) {
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 3, NULL);
  char got[16];
  picks(up, 9, NULL, got);
  CHECK_STR_EQ(got, "abcabcabc");
}

TEST(round_robin_proportions) {
  const int w[] = {3, 2, 1, 4};
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 4, w);
  int count[4] = {0};
  for (int i = 0; i < 1000; i++) {
    char l = letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW));
    REQUIRE(l >= 'a' && l <= 'd');
    count[l - 'a']++;
  }
  CHECK_EQ(count[0], 300);
  CHECK_EQ(count[1], 200);
  CHECK_EQ(count[2], 100);
  CHECK_EQ(count[3], 400);
}

TEST(round_robin_skips_down_server) {
  const int w[] = {5, 1, 1};
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 3, w);
  down_until(up->servers[0], NOW + 1); /* still cooling down */
  char got[16];
  picks(up, 6, NULL, got);
  CHECK_STR_EQ(got, "bcbcbc");
  CHECK(gw_balancer_any_usable(up, NOW));
  /* Once its cool-down has passed (down_until <= now) it is back. */
  int a = 0;
  for (int i = 0; i < 7; i++)
    if (letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW + 1)) == 'a') a++;
  CHECK(a >= 4);
}

TEST(round_robin_skips_retired_and_unresolved) {
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 3, NULL);
  up->servers[0]->retired = 1;
  up->servers[2]->resolved = 0;
  char got[8];
  picks(up, 4, NULL, got);
  CHECK_STR_EQ(got, "bbbb");
}

TEST(round_robin_avoid) {
  const int w[] = {5, 1, 1};
  gw_upstream_t *up = group(GW_BALANCE_ROUND_ROBIN, 3, w);
  gw_server_t *a = up->servers[0];
  for (int i = 0; i < 20; i++) {
    gw_server_t *s = gw_balancer_pick(up, NULL, 0, a, NOW);
    CHECK_MSG(s != NULL && s != a, "pick %d with avoid=a gave %c", i, letter(up, s));
  }
  /* When the avoided server is the only usable one, it is still picked. */
  down_until(up->servers[1], NOW + 5000);
  down_until(up->servers[2], NOW + 5000);
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, a, NOW), a);
}

TEST(active_health_down_is_skipped) {
  const gw_balance_t kinds[] = {GW_BALANCE_ROUND_ROBIN, GW_BALANCE_LEAST_CONN, GW_BALANCE_HASH,
                                GW_BALANCE_EWMA};
  for (size_t k = 0; k < 4; k++) {
    gw_upstream_t *up = group(kinds[k], 3, NULL);
    up->servers[0]->health->active_down = 1; /* active checks failing */
    up->servers[2]->health->active_down = 1;
    for (int i = 0; i < 20; i++) {
      char key[16];
      snprintf(key, sizeof key, "k%d", i);
      char l = letter(up, gw_balancer_pick(up, key, strlen(key), NULL, NOW));
      CHECK_MSG(l == 'b', "balance %d picked %c, not the only healthy server", (int)kinds[k], l);
    }
    up->servers[1]->health->active_down = 1;
    CHECK_EQ(gw_balancer_any_usable(up, NOW), 0);
    CHECK(gw_balancer_pick(up, "k", 1, NULL, NOW) == NULL);
  }
}

TEST(all_down_gives_null) {
  const gw_balance_t kinds[] = {GW_BALANCE_ROUND_ROBIN, GW_BALANCE_LEAST_CONN, GW_BALANCE_HASH,
                                GW_BALANCE_EWMA};
  for (size_t k = 0; k < 4; k++) {
    gw_upstream_t *up = group(kinds[k], 3, NULL);
    for (int i = 0; i < 3; i++) down_until(up->servers[i], NOW + 10);
    CHECK_MSG(gw_balancer_pick(up, "key", 3, NULL, NOW) == NULL, "balance %d picked a down server",
              (int)kinds[k]);
    CHECK_MSG(gw_balancer_pick(up, "key", 3, up->servers[0], NOW) == NULL, "balance %d (avoid)",
              (int)kinds[k]);
    CHECK_EQ(gw_balancer_any_usable(up, NOW), 0);
    CHECK_EQ(gw_balancer_any_usable(up, NOW + 10), 1);
  }
  gw_upstream_t *empty = group(GW_BALANCE_HASH, 0, NULL);
  CHECK(gw_balancer_pick(empty, "k", 1, NULL, NOW) == NULL);
  CHECK_EQ(gw_balancer_any_usable(empty, NOW), 0);
  empty->balance = GW_BALANCE_ROUND_ROBIN;
  CHECK(gw_balancer_pick(empty, "k", 1, NULL, NOW) == NULL);
}

/* ---- least_conn ---- */

TEST(least_conn_fewest_in_flight) {
  gw_upstream_t *up = group(GW_BALANCE_LEAST_CONN, 3, NULL);
  up->servers[0]->active = 3;
  up->servers[1]->active = 1;
  up->servers[2]->active = 2;
  for (int i = 0; i < 5; i++) CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'b');
  up->servers[1]->active = 4;
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'c');
}

TEST(least_conn_relative_to_weight) {
  /* a: 4 in flight on weight 4 (1 each); b: 2 on weight 1 (2 each). */
  const int w[] = {4, 1};
  gw_upstream_t *up = group(GW_BALANCE_LEAST_CONN, 2, w);
  up->servers[0]->active = 4;
  up->servers[1]->active = 2;
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'a');
  up->servers[0]->active = 9; /* 2.25 each against 2 */
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'b');
}

TEST(least_conn_follows_load) {
  /* Picks that each stay in flight spread evenly over equal servers. */
  gw_upstream_t *up = group(GW_BALANCE_LEAST_CONN, 3, NULL);
  int count[3] = {0};
  for (int i = 0; i < 30; i++) {
    gw_server_t *s = gw_balancer_pick(up, NULL, 0, NULL, NOW);
    REQUIRE(s != NULL);
    s->active++;
    count[letter(up, s) - 'a']++;
  }
  CHECK_EQ(count[0], 10);
  CHECK_EQ(count[1], 10);
  CHECK_EQ(count[2], 10);
}

/* balancer.h: "least_conn: the fewest exchanges in flight relative to
 * weight; ties go round robin." With nothing in flight (every exchange
 * finished before the next pick) all servers tie. */
TEST(least_conn_ties_go_round_robin) {
  gw_upstream_t *up = group(GW_BALANCE_LEAST_CONN, 3, NULL);
  int count[3] = {0};
  for (int i = 0; i < 30; i++) {
    gw_server_t *s = gw_balancer_pick(up, NULL, 0, NULL, NOW);
    REQUIRE(s != NULL);
    count[letter(up, s) - 'a']++;
  }
  CHECK_MSG(count[0] == 10 && count[1] == 10 && count[2] == 10,
            "30 tied picks went a=%d b=%d c=%d", count[0], count[1], count[2]);
}

TEST(least_conn_down_and_avoid) {
  gw_upstream_t *up = group(GW_BALANCE_LEAST_CONN, 3, NULL);
  up->servers[0]->active = 0;
  up->servers[1]->active = 5;
  up->servers[2]->active = 7;
  gw_server_t *a = up->servers[0];
  down_until(up->servers[0], NOW + 100);
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'b');
  down_until(up->servers[0], 0);
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW)), 'a');
  CHECK_EQ(letter(up, gw_balancer_pick(up, NULL, 0, a, NOW)), 'b');
  down_until(up->servers[1], NOW + 100);
  down_until(up->servers[2], NOW + 100);
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, a, NOW), a);
}

/* ---- hash ring ---- */

static char hash_pick(gw_upstream_t *up, const char *key, const gw_server_t *avoid) {
  return letter(up, gw_balancer_pick(up, key, strlen(key), avoid, NOW));
}

TEST(hash_ring_built) {
  const int w[] = {1, 2, 3};
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, w);
  CHECK_EQ(up->nring, 160 * 6);
  REQUIRE(up->ring != NULL && up->ring_server != NULL);
  int sorted = 1, per[3] = {0};
  for (size_t i = 0; i < up->nring; i++) {
    if (i && up->ring[i - 1] > up->ring[i]) sorted = 0;
    REQUIRE(up->ring_server[i] < 3);
    per[up->ring_server[i]]++;
  }
  CHECK(sorted);
  CHECK_EQ(per[0], 160);
  CHECK_EQ(per[1], 320);
  CHECK_EQ(per[2], 480);
  /* Other balancers keep no ring. */
  up->balance = GW_BALANCE_ROUND_ROBIN;
  gw_balancer_rebuild(up);
  CHECK(up->ring == NULL && up->nring == 0);
}

TEST(hash_same_key_same_server) {
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, NULL);
  int used[3] = {0};
  for (int i = 0; i < 300; i++) {
    char key[32];
    snprintf(key, sizeof key, "user-%d", i);
    char first = hash_pick(up, key, NULL);
    REQUIRE(first >= 'a' && first <= 'c');
    used[first - 'a']++;
    for (int k = 0; k < 3; k++) CHECK_EQ(hash_pick(up, key, NULL), first);
  }
  /* Every server gets some keys. */
  CHECK(used[0] > 30 && used[1] > 30 && used[2] > 30);
  /* A rebuild with the same servers maps every key the same way. */
  char before[300];
  for (int i = 0; i < 300; i++) {
    char key[32];
    snprintf(key, sizeof key, "user-%d", i);
    before[i] = hash_pick(up, key, NULL);
  }
  gw_balancer_rebuild(up);
  int moved = 0;
  for (int i = 0; i < 300; i++) {
    char key[32];
    snprintf(key, sizeof key, "user-%d", i);
    if (hash_pick(up, key, NULL) != before[i]) moved++;
  }
  CHECK_EQ(moved, 0);
  /* No key (NULL) hashes like the empty key, consistently. */
  char n1 = letter(up, gw_balancer_pick(up, NULL, 0, NULL, NOW));
  char n2 = letter(up, gw_balancer_pick(up, "", 0, NULL, NOW));
  CHECK_EQ(n1, n2);
}

TEST(hash_adding_a_server_moves_about_a_quarter) {
  enum { KEYS = 10000 };
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, NULL);
  static char before[KEYS];
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "key-%d", i);
    before[i] = hash_pick(up, key, NULL);
  }
  /* Add a fourth server, keeping the first three (as a reload does). */
  up->servers = gw_xrealloc(up->servers, 4 * sizeof *up->servers);
  up->servers[3] = server("10.0.0.4:80", 1);
  up->nservers = 4;
  gw_balancer_rebuild(up);
  int moved = 0, moved_elsewhere = 0;
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "key-%d", i);
    char now = hash_pick(up, key, NULL);
    if (now != before[i]) {
      moved++;
      if (now != 'd') moved_elsewhere++;
    }
  }
  printf("    %d of %d keys moved (%.1f%%)\n", moved, KEYS, 100.0 * moved / KEYS);
  CHECK_MSG(moved >= KEYS * 15 / 100 && moved <= KEYS * 40 / 100, "%d of %d keys moved", moved,
            KEYS);
  CHECK_EQ(moved_elsewhere, 0);
}

TEST(hash_weights_share_keys) {
  const int w[] = {1, 1, 2};
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, w);
  int count[3] = {0};
  for (int i = 0; i < 10000; i++) {
    char key[32];
    snprintf(key, sizeof key, "/path/%d", i);
    count[hash_pick(up, key, NULL) - 'a']++;
  }
  CHECK_MSG(count[2] > 4000 && count[2] < 6000, "weight-2 server got %d of 10000", count[2]);
  CHECK_MSG(count[0] > 1500 && count[1] > 1500, "a=%d b=%d", count[0], count[1]);
}

TEST(hash_down_server_skipped) {
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, NULL);
  gw_server_t *b = up->servers[1];
  enum { KEYS = 2000 };
  static char before[KEYS];
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    before[i] = hash_pick(up, key, NULL);
  }
  down_until(b, NOW + 30000);
  int to_b = 0, others_moved = 0;
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    char now = hash_pick(up, key, NULL);
    if (now == 'b') to_b++;
    /* Keys of the servers that are up stay where they were. */
    if (before[i] != 'b' && now != before[i]) others_moved++;
  }
  CHECK_EQ(to_b, 0);
  CHECK_EQ(others_moved, 0);
  /* When b is back its keys go back to it. */
  down_until(b, NOW);
  int back = 0;
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    if (hash_pick(up, key, NULL) == before[i]) back++;
  }
  CHECK_EQ(back, KEYS);
}

TEST(hash_avoid) {
  gw_upstream_t *up = group(GW_BALANCE_HASH, 3, NULL);
  int checked = 0;
  for (int i = 0; i < 200; i++) {
    char key[32];
    snprintf(key, sizeof key, "retry-%d", i);
    char first = hash_pick(up, key, NULL);
    gw_server_t *s = up->servers[first - 'a'];
    char again = hash_pick(up, key, s);
    CHECK_MSG(again != first && again >= 'a' && again <= 'c',
              "key %s: avoid=%c gave %c", key, first, again);
    /* The retry target is stable for a key too. */
    CHECK_EQ(hash_pick(up, key, s), again);
    checked++;
  }
  CHECK_EQ(checked, 200);
  /* The only usable server is picked even when it is the one to avoid. */
  down_until(up->servers[0], NOW + 1);
  down_until(up->servers[2], NOW + 1);
  CHECK_EQ(hash_pick(up, "anything", up->servers[1]), 'b');
}

TEST(hash32_is_stable_and_spread) {
  CHECK_EQ(gw_hash32("abc", 3), gw_hash32("abc", 3));
  CHECK_NE(gw_hash32("abc", 3), gw_hash32("abd", 3));
  CHECK_NE(gw_hash32("", 0), gw_hash32("a", 1));
  /* Only n bytes are read. */
  CHECK_EQ(gw_hash32("key-1xyz", 5), gw_hash32("key-1", 5));
  /* Short sequential keys spread over the top bits too. */
  int buckets[16] = {0};
  for (int i = 0; i < 16000; i++) {
    char key[16];
    int n = snprintf(key, sizeof key, "%d", i);
    buckets[gw_hash32(key, (size_t)n) >> 28]++;
  }
  for (int i = 0; i < 16; i++) CHECK_MSG(buckets[i] > 800 && buckets[i] < 1200, "bucket %d: %d", i, buckets[i]);
}

/* ---- ewma ---- */

TEST(ewma_prefers_fast_and_decays) {
  gw_upstream_t *up = group(GW_BALANCE_EWMA, 2, NULL);
  gw_server_t *a = up->servers[0], *b = up->servers[1];
  gw_balancer_observe(a, 200, NOW);
  gw_balancer_observe(b, 10, NOW);
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, NULL, NOW), b);
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, b, NOW), a); /* avoid */
  /* Peak: a slow sample is taken at once. */
  gw_balancer_observe(b, 500, NOW);
  CHECK(b->ewma_ms >= 500);
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, NULL, NOW), a);
  /* A fast sample pulls it down only partly. */
  gw_balancer_observe(b, 0, NOW);
  CHECK(b->ewma_ms > 400 && b->ewma_ms < 500);
  /* In-flight exchanges count: (e + 1) * (active + 1). */
  b->ewma_ms = 10;
  a->ewma_ms = 30;
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, NULL, NOW), b);
  b->active = 5;
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, NULL, NOW), a);
  /* Time decays a past peak. */
  b->active = 0;
  a->ewma_ms = 1000;
  a->ewma_stamp = NOW;
  b->ewma_ms = 20;
  b->ewma_stamp = NOW + 100000;
  CHECK_PTR_EQ(gw_balancer_pick(up, NULL, 0, NULL, NOW + 100000), a);
}

TEST_LIST(T(round_robin_smooth_weighted_sequence), T(round_robin_equal_weights_rotate),
          T(round_robin_proportions), T(round_robin_skips_down_server),
          T(round_robin_skips_retired_and_unresolved), T(round_robin_avoid),
          T(active_health_down_is_skipped), T(all_down_gives_null),
          T(least_conn_fewest_in_flight), T(least_conn_relative_to_weight),
          T(least_conn_follows_load), T(least_conn_ties_go_round_robin),
          T(least_conn_down_and_avoid), T(hash_ring_built), T(hash_same_key_same_server),
          T(hash_adding_a_server_moves_about_a_quarter), T(hash_weights_share_keys),
          T(hash_down_server_skipped), T(hash_avoid), T(hash32_is_stable_and_spread),
          T(ewma_prefers_fast_and_decays))
