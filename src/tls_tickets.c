/*
 * tls_tickets.c: shared, rotating session ticket keys (see tls_tickets.h).
 *
 * The ring must hold every key that may still decrypt: a key decrypts for
 * 3 x rotate after it was made, and rotations are at least `rotate` apart,
 * so at most 4 keys are alive at once; with 8 slots the slot a rotation
 * overwrites is at least 7 rotations old, long dead, even if `rotate` was
 * made shorter by a reload.
 */
#include "tls_tickets.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

/* One key. Lives in the ring; written only under the ring's lock. */
typedef struct {
  uint64_t made;          /* CLOCK_MONOTONIC ms it was made; 0: empty or being written */
  unsigned char name[16]; /* sent in the clear at the start of each ticket */
  unsigned char aes[32];  /* AES-256-CBC key */
  unsigned char hmac[32]; /* HMAC-SHA256 key */
} slot_t;

/* In the shared zone (or `private_ring`); never freed. */
typedef struct {
  int32_t lock; /* pid of the process rotating, 0: free */
  uint32_t pad;
  uint64_t gen; /* rotations so far; slots[gen % SLOTS] is the newest */
  slot_t slots[GW_TICKET_SLOTS];
} ring_t;

static ring_t private_ring;
static ring_t *ring = &private_ring;
static uint64_t rotate_ms = 3600 * 1000; /* this process's setting */

size_t gw_tickets_zone_size(void) { return sizeof(ring_t); }

void gw_tickets_attach(void *mem) {
  memset(mem, 0, sizeof(ring_t));
  ring = mem;
}

void gw_tickets_set_rotate(double seconds) {
  uint64_t ms = gw_seconds_to_ms(seconds);
  rotate_ms = ms > 0 ? ms : 1;
}

long gw_tickets_lifetime(void) {
  long s = (long)(2 * rotate_ms / 1000);
  return s > 0 ? s : 1;
}

static uint64_t generation(void) { return __atomic_load_n(&ring->gen, __ATOMIC_ACQUIRE); }

uint64_t gw_tickets_keys_made(void) {
  uint64_t gen = generation();
  return gen > 0 || __atomic_load_n(&ring->slots[0].made, __ATOMIC_ACQUIRE) ? gen + 1 : 0;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Copies slot `i` into `out`; 0 if it is empty or was being rewritten. */
static int read_slot(unsigned i, slot_t *out) {
  const slot_t *s = &ring->slots[i % GW_TICKET_SLOTS];
  uint64_t before = __atomic_load_n(&s->made, __ATOMIC_ACQUIRE);
  if (before == 0) return 0;
  memcpy(out, (const void *)s, sizeof *out);
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  return __atomic_load_n(&s->made, __ATOMIC_RELAXED) == before && out->made == before;
}

/* Takes the rotation lock; 0 if another live process holds it. */
static int lock_ring(void) {
  int32_t me = (int32_t)getpid(), holder = 0;
  if (__atomic_compare_exchange_n(&ring->lock, &holder, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return 1;
  /* A worker killed (SIGKILL) half-way through a rotation: take over. */
  if (holder != me && kill(holder, 0) != 0 && errno == ESRCH)
    return __atomic_compare_exchange_n(&ring->lock, &holder, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
  return 0;
}

static void unlock_ring(void) { __atomic_store_n(&ring->lock, 0, __ATOMIC_RELEASE); }

/* Makes a new newest key unless someone else already replaced generation
 * `seen` (then theirs is used). Fails only if the lock is busy or
 * RAND_bytes fails; the caller then uses what there is. */
static void rotate(uint64_t seen, uint64_t now) {
  if (!lock_ring()) return;
  uint64_t gen = __atomic_load_n(&ring->gen, __ATOMIC_ACQUIRE);
  slot_t *cur = &ring->slots[gen % GW_TICKET_SLOTS];
  uint64_t made = __atomic_load_n(&cur->made, __ATOMIC_ACQUIRE);
  if (gen != seen && made != 0 && now < made + rotate_ms) {
    unlock_ring();
    return;
  }
  /* An empty ring fills slot 0 as generation 0. */
  uint64_t next = made == 0 && gen == 0 ? 0 : gen + 1;
  slot_t *s = &ring->slots[next % GW_TICKET_SLOTS];
  slot_t fresh;
  if (RAND_bytes(fresh.name, sizeof fresh.name) != 1 || RAND_bytes(fresh.aes, sizeof fresh.aes) != 1 ||
      RAND_bytes(fresh.hmac, sizeof fresh.hmac) != 1) {
    unlock_ring();
    return;
  }
  __atomic_store_n(&s->made, 0, __ATOMIC_RELEASE); /* readers skip it from here */
  __atomic_thread_fence(__ATOMIC_RELEASE);
  memcpy(s->name, fresh.name, sizeof s->name);
  memcpy(s->aes, fresh.aes, sizeof s->aes);
  memcpy(s->hmac, fresh.hmac, sizeof s->hmac);
  __atomic_store_n(&s->made, now ? now : 1, __ATOMIC_RELEASE);
  __atomic_store_n(&ring->gen, next, __ATOMIC_RELEASE);
  unlock_ring();
  OPENSSL_cleanse(&fresh, sizeof fresh);
}

static int set_mac(EVP_MAC_CTX *hctx, unsigned char *key) {
  OSSL_PARAM params[3];
  params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
  params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
  params[2] = OSSL_PARAM_construct_end();
  return EVP_MAC_CTX_set_params(hctx, params) == 1;
}

/* The newest key if it may still encrypt, rotating first when it is due. */
static int current_key(uint64_t now, slot_t *out) {
  for (int tries = 0; tries < 2; tries++) {
    uint64_t gen = generation();
    if (read_slot((unsigned)gen, out) && now < out->made + rotate_ms) return 1;
    rotate(gen, now);
  }
  /* Another worker is rotating right now: its predecessor will do for
   * this ticket if it has not expired. */
  uint64_t gen = generation();
  return read_slot((unsigned)gen, out) && now < out->made + 3 * rotate_ms;
}

int gw_tickets_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                  int enc) {
  uint64_t now = now_ms();
  slot_t k;
  int rc = 0;
  if (enc) {
    if (!current_key(now, &k)) return 0;
    memcpy(name, k.name, sizeof k.name);
    if (RAND_bytes(iv, 16) == 1 /* the AES block */ &&
        EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 && set_mac(hctx, k.hmac))
      rc = 1;
    OPENSSL_cleanse(&k, sizeof k);
    return rc;
  }
  uint64_t gen = generation();
  for (unsigned i = 0; i < GW_TICKET_SLOTS; i++) {
    /* Newest first: the usual case finds its key at once. */
    uint64_t g = gen - i;
    if (g > gen || !read_slot((unsigned)g, &k)) continue;
    if (memcmp(k.name, name, sizeof k.name) != 0) continue;
    if (now >= k.made + 3 * rotate_ms) break; /* expired: a full handshake */
    /* Always 2, renew: every resumption gets a fresh ticket under the
     * current key. RFC 8446 (C.4) asks TLS 1.3 clients not to reuse a
     * ticket, and with 1 the gateway's own upstream client (tls.c) did not
     * resume against this server (OpenSSL 3.0 took the ticket, then made a
     * full handshake; spec/c/test_tls_client.c). */
    if (set_mac(hctx, k.hmac) && EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1) rc = 2;
    break;
  }
  OPENSSL_cleanse(&k, sizeof k);
  return rc;
}
