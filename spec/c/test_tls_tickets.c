/*
 * test_tls_tickets.c: src/tls_tickets.c without TLS: the ticket key
 * callback driven by hand, with a short rotation period (100 ms), and the
 * ring shared with forked processes as the workers share it.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/tls_tickets.c"

#include <openssl/core_names.h>
#include <sys/mman.h>
#include <time.h>

#include "runner.h"

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* One call of the callback, as OpenSSL makes it: enc = 1 fills `name`;
 * enc = 0 reads it. Returns the callback's result. */
static int call(unsigned char name[16], int enc) {
  unsigned char iv[16] = {0};
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *h = EVP_MAC_CTX_new(mac);
  int rc = gw_tickets_cb(NULL, name, iv, c, h, enc);
  EVP_MAC_CTX_free(h);
  EVP_MAC_free(mac);
  EVP_CIPHER_CTX_free(c);
  return rc;
}

/* A fresh shared ring, as the master makes it before forking. */
static void shared_ring(void) {
  void *mem = mmap(NULL, gw_tickets_zone_size(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) abort();
  gw_tickets_attach(mem);
}

TEST(one_key_until_rotation_then_renewal_then_expiry) {
  shared_ring();
  gw_tickets_set_rotate(0.1); /* 100 ms: tickets live 200 ms, a key decrypts 300 ms */
  CHECK_EQ(gw_tickets_lifetime(), 1L); /* whole seconds, at least 1 */
  CHECK_EQ(gw_tickets_keys_made(), 0u);
  unsigned char k0[16], again[16], k1[16];
  CHECK_EQ(call(k0, 1), 1);
  CHECK_EQ(gw_tickets_keys_made(), 1u);
  CHECK_EQ(call(again, 1), 1);
  CHECK(memcmp(k0, again, 16) == 0); /* the same key within its period */
  CHECK_EQ(call(k0, 0), 2);          /* decrypts (2: and the ticket is renewed) */
  CHECK_EQ(call(again, 1), 1);       /* the renewal, still under k0 */
  CHECK(memcmp(k0, again, 16) == 0);
  sleep_ms(130);
  CHECK_EQ(call(k0, 0), 2); /* still decrypts after the rotation is due */
  CHECK_EQ(call(k1, 1), 1); /* the renewal: a new key */
  CHECK(memcmp(k0, k1, 16) != 0);
  CHECK_EQ(gw_tickets_keys_made(), 2u);
  CHECK_EQ(call(k0, 0), 2); /* the old key still decrypts */
  CHECK_EQ(call(k1, 0), 2);
  sleep_ms(200); /* k0 was made 330 ms ago: expired */
  CHECK_EQ(call(k0, 0), 0);
  unsigned char unknown[16] = {1, 2, 3};
  CHECK_EQ(call(unknown, 0), 0);
}

TEST(an_idle_ring_makes_no_key) {
  shared_ring();
  gw_tickets_set_rotate(0.05);
  unsigned char name[16] = {0};
  CHECK_EQ(call(name, 0), 0); /* decrypting never makes a key */
  sleep_ms(60);
  CHECK_EQ(gw_tickets_keys_made(), 0u);
}

TEST(workers_share_keys_through_the_ring) {
  shared_ring();
  gw_tickets_set_rotate(10);
  unsigned char name[16];
  pid_t child = fork();
  if (child == 0) _exit(call(name, 1) == 1 ? 0 : 1); /* a "worker" issues a ticket */
  int st = 0;
  waitpid(child, &st, 0);
  REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK_EQ(gw_tickets_keys_made(), 1u);
  unsigned char mine[16];
  CHECK_EQ(call(mine, 1), 1); /* this process uses the child's key */
  CHECK_EQ(gw_tickets_keys_made(), 1u);
  child = fork();
  if (child == 0) _exit(call(mine, 0) == 2 ? 0 : 1); /* and another decrypts with it */
  waitpid(child, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(a_dead_lock_holder_is_replaced) {
  shared_ring();
  gw_tickets_set_rotate(10);
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, NULL, 0);
  ring->lock = (int32_t)dead; /* killed half-way through a rotation */
  unsigned char name[16];
  CHECK_EQ(call(name, 1), 1);
  CHECK_EQ(gw_tickets_keys_made(), 1u);
  CHECK_EQ(ring->lock, 0);
  /* A live holder (this process's parent stands in) is waited for, not
   * replaced: no key can be made, so no ticket is issued. */
  shared_ring();
  ring->lock = (int32_t)getppid();
  CHECK_EQ(call(name, 1), 0);
  CHECK_EQ(gw_tickets_keys_made(), 0u);
}

TEST_LIST(T(one_key_until_rotation_then_renewal_then_expiry), T(an_idle_ring_makes_no_key),
          T(workers_share_keys_through_the_ring), T(a_dead_lock_holder_is_replaced))
