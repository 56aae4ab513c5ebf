/*
 * tls_record.c: TLS 1.3 application records after the handshake (see
 * tls_record.h for what and why).
 *
 * The AEAD. OpenSSL 3.0's EVP layer asks the cipher implementation for its
 * IV length through a named-parameter lookup on every EVP_CipherInit (about
 * 700 instructions, a third of a small record's whole cost), and TLS 1.3
 * needs a fresh nonce per record. So this file looks up, once, the very
 * implementation EVP would use (EVP_CIPHER_fetch, then that cipher's
 * provider's dispatch table: OSSL_PROVIDER_query_operation, the provider
 * interface of provider-cipher(7)) and calls its init/update/final
 * functions directly, as EVP itself does underneath. Before a suite is
 * used, a known-answer check seals the same record through EVP and through
 * the direct calls and requires identical bytes, and checks that a
 * tampered record does not open: if anything differs, the suite stays with
 * OpenSSL's record layer.
 *
 * Keys (RFC 8446 7.1, 7.3): key = HKDF-Expand-Label(secret, "key", "", n),
 * iv = HKDF-Expand-Label(secret, "iv", "", 12), and a KeyUpdate replaces
 * the secret with HKDF-Expand-Label(secret, "traffic upd", "", hash size);
 * each output is one HMAC block (see expand_label and hmac).
 */
#include "tls_record.h"

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aesgcm.h"
#include "errors.h"
#include "mem.h"

uint64_t gw_tls_rec_rekey_after = (uint64_t)1 << 24;
int gw_tls_rec_own_aesgcm = 1;

/* Records up to this many bytes of plaintext go through aesgcm.c when the
 * suite is AES-GCM; longer ones through OpenSSL, which has a higher fixed
 * cost per record and a lower one per byte. Sealing one record on an AMD
 * EPYC (aead_seal, both ways): 50 bytes 57 vs 142 ns, 122 bytes 87 vs
 * 159, 256 bytes 117 vs 182; about even from 384 bytes on. */
#define OWN_AES_MAX 256

#define MAX_PLAIN 16384              /* RFC 8446 5.1 */
#define MAX_CIPHER (MAX_PLAIN + 256) /* RFC 8446 5.2 */
#define TAG_LEN 16
#define IV_LEN 12
#define HEADER_LEN 5
#define MAX_EMPTY_IN_A_ROW 32   /* OpenSSL's MAX_EMPTY_RECORDS */
#define MAX_WARNINGS_IN_A_ROW 5 /* OpenSSL's MAX_WARN_ALERT_COUNT: the 5th fails */

enum { REC_ALERT = 21, REC_HANDSHAKE = 22, REC_DATA = 23 };
enum { HS_KEY_UPDATE = 24 };
enum {
  ALERT_CLOSE_NOTIFY = 0,
  ALERT_UNEXPECTED_MESSAGE = 10,
  ALERT_BAD_RECORD_MAC = 20,
  ALERT_RECORD_OVERFLOW = 22,
  ALERT_ILLEGAL_PARAMETER = 47,
  ALERT_DECODE_ERROR = 50,
  ALERT_PROTOCOL_VERSION = 70,
  ALERT_INTERNAL_ERROR = 80,
  ALERT_USER_CANCELED = 90,
};

/* What gw_tls_rec_read's record loop does next. */
enum { GO_ON = 0, STOP_EOF = 1, STOP_FAILED = 2 };

/* A TLS 1.3 suite and, once looked up, the cipher implementation that
 * serves it. Process-wide, filled on first use, never freed (`cipher`
 * keeps the provider loaded). */
typedef struct {
  uint16_t code;    /* the suite's code point */
  const char *name; /* OpenSSL's name for its AEAD */
  size_t key_len;
  const char *md; /* the suite's hash, for HKDF */
  size_t hash_len;
  int state;          /* 0: not looked up yet; 1: usable; -1: not usable */
  int own_aes;        /* 1: an AES-GCM suite whose short records aesgcm.c seals (checked) */
  EVP_CIPHER *cipher; /* fetched at lookup; NULL after it if OpenSSL has no such cipher */
  void *provctx;
  OSSL_FUNC_cipher_newctx_fn *newctx;
  OSSL_FUNC_cipher_freectx_fn *freectx;
  OSSL_FUNC_cipher_encrypt_init_fn *einit;
  OSSL_FUNC_cipher_decrypt_init_fn *dinit;
  OSSL_FUNC_cipher_update_fn *update;
  OSSL_FUNC_cipher_final_fn *final;
  OSSL_FUNC_cipher_get_ctx_params_fn *get_params;
  OSSL_FUNC_cipher_set_ctx_params_fn *set_params;
} suite_t;

static suite_t suites[] = {
    {.code = 0x1301, .name = "AES-128-GCM", .key_len = 16, .md = "SHA256", .hash_len = 32},
    {.code = 0x1302, .name = "AES-256-GCM", .key_len = 32, .md = "SHA384", .hash_len = 48},
    {.code = 0x1303, .name = "ChaCha20-Poly1305", .key_len = 32, .md = "SHA256", .hash_len = 32},
};

/* One direction of the connection: its secret, key and sequence number. */
typedef struct {
  const suite_t *suite;
  /* The provider's cipher context, for records aesgcm.c does not take:
   * made and keyed (ctx_keyed) when the first such record comes, so that a
   * connection of short records never holds one (2 kB per direction). */
  void *ctx;
  uint8_t ctx_keyed;
  unsigned char key[32]; /* the direction's key, for keying ctx then */
  unsigned char iv[IV_LEN];
  unsigned char secret[GW_TLS_REC_SECRET_MAX]; /* the current traffic secret (for KeyUpdate) */
  uint64_t seq;                                /* the next record's sequence number */
  int encrypt;
  int has_own;     /* `own` is keyed: short records use it */
  gw_aesgcm_t own; /* the same key for aesgcm.c */
} direction_t;

struct gw_tls_rec_s {
  direction_t rx;    /* the client's records */
  direction_t tx;    /* ours */
  gw_buf_t stash;    /* a partial record waiting for the rest */
  const char *why;   /* the failure (static text or why_text), or NULL */
  char why_text[80]; /* a client's alert, described */
  uint8_t failed;
  uint8_t eof;        /* the peer's close_notify was read */
  uint8_t closed;     /* our close_notify was sealed: nothing more goes out */
  uint8_t update_due; /* the peer asked for a KeyUpdate: ours goes before our next data */
  /* Limits OpenSSL also sets, so that a peer cannot keep us opening
   * records that carry nothing: empty data records and user_canceled
   * alerts in a row (application data resets both). */
  uint8_t empty_in_a_row;
  uint8_t warnings_in_a_row;
  /* A handshake message cut across records (RFC 8446 5.1 allows it): the
   * bytes of it seen so far. Only a KeyUpdate (5 bytes) is accepted. */
  unsigned char hs[5];
  uint8_t hs_len;
};

/* ---- the cipher implementation ---- */

/* 1 if the first of `names` ("AES-256-GCM:id-aes256-GCM:...") is `name`. */
static int first_name_is(const char *names, const char *name) {
  size_t n = strlen(name);
  return strncasecmp(names, name, n) == 0 && (names[n] == ':' || names[n] == '\0');
}

static void take_functions(suite_t *s, const OSSL_DISPATCH *d) {
  for (; d->function_id != 0; d++) {
    switch (d->function_id) {
      case OSSL_FUNC_CIPHER_NEWCTX: s->newctx = OSSL_FUNC_cipher_newctx(d); break;
      case OSSL_FUNC_CIPHER_FREECTX: s->freectx = OSSL_FUNC_cipher_freectx(d); break;
      case OSSL_FUNC_CIPHER_ENCRYPT_INIT: s->einit = OSSL_FUNC_cipher_encrypt_init(d); break;
      case OSSL_FUNC_CIPHER_DECRYPT_INIT: s->dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
      case OSSL_FUNC_CIPHER_UPDATE: s->update = OSSL_FUNC_cipher_update(d); break;
      case OSSL_FUNC_CIPHER_FINAL: s->final = OSSL_FUNC_cipher_final(d); break;
      case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: s->get_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
      case OSSL_FUNC_CIPHER_SET_CTX_PARAMS: s->set_params = OSSL_FUNC_cipher_set_ctx_params(d); break;
      default: break;
    }
  }
}

/* Finds the implementation EVP_CIPHER_fetch picks for the suite's AEAD. */
static int find_functions(suite_t *s) {
  s->cipher = EVP_CIPHER_fetch(NULL, s->name, NULL);
  if (!s->cipher) return 0;
  const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(s->cipher);
  int no_store = 0;
  const OSSL_ALGORITHM *algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_store);
  for (const OSSL_ALGORITHM *a = algs; a && a->algorithm_names; a++) {
    if (first_name_is(a->algorithm_names, s->name)) {
      take_functions(s, a->implementation);
      break;
    }
  }
  if (algs) OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
  s->provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
  return s->newctx && s->freectx && s->einit && s->dinit && s->update && s->final && s->get_params &&
         s->set_params && s->provctx;
}

static size_t be16(const unsigned char *p) { return (size_t)p[0] << 8 | p[1]; }

/* The per-record nonce: the IV with the 64-bit big-endian sequence number
 * XORed into its last 8 bytes (RFC 8446 5.3, RFC 5288 3). One 64-bit XOR:
 * this runs twice per request. */
static void make_nonce(const direction_t *d, unsigned char nonce[IV_LEN]) {
  uint64_t tail;
  memcpy(nonce, d->iv, IV_LEN);
  memcpy(&tail, nonce + IV_LEN - 8, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  tail ^= __builtin_bswap64(d->seq);
#else
  tail ^= d->seq;
#endif
  memcpy(nonce + IV_LEN - 8, &tail, 8);
}

/* The provider's context, keyed with the direction's current key. */
static int keyed_ctx(direction_t *d) {
  const suite_t *s = d->suite;
  if (d->ctx_keyed) return 1;
  if (!d->ctx) d->ctx = s->newctx(s->provctx);
  if (!d->ctx) return 0;
  d->ctx_keyed = d->encrypt ? s->einit(d->ctx, d->key, s->key_len, d->iv, IV_LEN, NULL) == 1
                            : s->dinit(d->ctx, d->key, s->key_len, d->iv, IV_LEN, NULL) == 1;
  return d->ctx_keyed;
}

/* Seals `len` bytes at `p` in place under the direction's key and current
 * nonce, with `aad`; writes the tag. */
static int aead_seal(direction_t *d, const unsigned char aad[HEADER_LEN], unsigned char *p, size_t len,
                     unsigned char tag[TAG_LEN]) {
  const suite_t *s = d->suite;
  unsigned char nonce[IV_LEN];
  size_t outl = 0, finl = 0;
  make_nonce(d, nonce);
  if (d->has_own && len <= OWN_AES_MAX) {
    gw_aesgcm_seal(&d->own, nonce, aad, HEADER_LEN, p, len, p, tag);
    return 1;
  }
  OSSL_PARAM q[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_LEN),
                     OSSL_PARAM_construct_end()};
  return keyed_ctx(d) && s->einit(d->ctx, NULL, 0, nonce, IV_LEN, NULL) == 1 &&
         s->update(d->ctx, NULL, &outl, HEADER_LEN, aad, HEADER_LEN) == 1 &&
         s->update(d->ctx, p, &outl, len, p, len) == 1 && outl == len &&
         s->final(d->ctx, p + len, &finl, 0) == 1 && finl == 0 && s->get_params(d->ctx, q) == 1;
}

/* Opens `len` bytes at `c` into `out` (which may be `c` itself, not a
 * partial overlap); 1 only if the tag matches. */
static int aead_open(direction_t *d, const unsigned char aad[HEADER_LEN], const unsigned char *c, size_t len,
                     const unsigned char tag[TAG_LEN], unsigned char *out) {
  const suite_t *s = d->suite;
  unsigned char nonce[IV_LEN];
  size_t outl = 0, finl = 0;
  make_nonce(d, nonce);
  if (d->has_own && len <= OWN_AES_MAX)
    return gw_aesgcm_open(&d->own, nonce, aad, HEADER_LEN, c, len, tag, out);
  /* The tag is set before the data, as OpenSSL's own TLS 1.3 code does. */
  OSSL_PARAM q[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag, TAG_LEN),
                     OSSL_PARAM_construct_end()};
  return keyed_ctx(d) && s->dinit(d->ctx, NULL, 0, nonce, IV_LEN, NULL) == 1 &&
         s->set_params(d->ctx, q) == 1 && s->update(d->ctx, NULL, &outl, HEADER_LEN, aad, HEADER_LEN) == 1 &&
         s->update(d->ctx, out, &outl, len, c, len) == 1 && outl == len &&
         s->final(d->ctx, out + len, &finl, 0) == 1 && finl == 0;
}

static int key_direction(direction_t *d, const suite_t *s, const unsigned char *key, const unsigned char *iv,
                         int encrypt) {
  d->suite = s;
  d->encrypt = encrypt;
  memcpy(d->iv, iv, IV_LEN);
  d->seq = 0;
  memcpy(d->key, key, s->key_len);
  d->ctx_keyed = 0;
  d->has_own = s->own_aes == 1 && gw_tls_rec_own_aesgcm && gw_aesgcm_key(&d->own, key, s->key_len);
  if (!d->has_own) gw_aesgcm_wipe(&d->own); /* no key of an earlier generation stays */
  /* Without aesgcm.c every record needs the context: made now, so that a
   * failure shows at once. */
  return d->has_own || keyed_ctx(d);
}

static void unkey_direction(direction_t *d) {
  if (d->ctx) d->suite->freectx(d->ctx);
  d->ctx = NULL;
  d->ctx_keyed = 0;
  OPENSSL_cleanse(d->key, sizeof d->key);
  gw_aesgcm_wipe(&d->own);
  d->has_own = 0;
  OPENSSL_cleanse(d->secret, sizeof d->secret);
  OPENSSL_cleanse(d->iv, sizeof d->iv);
}

/* Known inputs for the checks below: p[i] = i * mul + add. */
static void pattern(unsigned char *p, size_t n, unsigned mul, unsigned add) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * mul + add);
}

/* The reference: `n` bytes of `pt` sealed through EVP into `out`, the tag
 * after them. */
static int evp_seal(const suite_t *s, const unsigned char *key, const unsigned char iv[IV_LEN],
                    const unsigned char aad[HEADER_LEN], const unsigned char *pt, size_t n,
                    unsigned char *out) {
  int outl = 0, finl = 0;
  EVP_CIPHER_CTX *e = EVP_CIPHER_CTX_new();
  int ok = e && EVP_EncryptInit_ex2(e, s->cipher, key, iv, NULL) == 1 &&
           EVP_EncryptUpdate(e, NULL, &outl, aad, HEADER_LEN) == 1 &&
           (n == 0 || (EVP_EncryptUpdate(e, out, &outl, pt, (int)n) == 1 && outl == (int)n)) &&
           EVP_EncryptFinal_ex(e, out + n, &finl) == 1 && finl == 0 &&
           EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + n) == 1;
  EVP_CIPHER_CTX_free(e);
  return ok;
}

/* The same record sealed through EVP and through the direct calls must be
 * the same bytes, and must open only untouched. */
static int known_answer(const suite_t *s) {
  unsigned char key[32], iv[IV_LEN], pt[40], aad[HEADER_LEN] = {REC_DATA, 3, 3, 0, sizeof pt + TAG_LEN};
  unsigned char via_evp[sizeof pt + TAG_LEN], direct[sizeof pt + TAG_LEN], back[sizeof pt];
  pattern(key, sizeof key, 7, 1);
  pattern(iv, sizeof iv, 13, 5);
  pattern(pt, sizeof pt, 31, 3);
  int ok = evp_seal(s, key, iv, aad, pt, sizeof pt, via_evp);
  direction_t seal = {0}, open = {0};
  /* seq 0, so the nonce is the IV itself, as EVP was given it. */
  ok = ok && key_direction(&seal, s, key, iv, 1) && key_direction(&open, s, key, iv, 0);
  memcpy(direct, pt, sizeof pt);
  ok = ok && aead_seal(&seal, aad, direct, sizeof pt, direct + sizeof pt) &&
       memcmp(direct, via_evp, sizeof direct) == 0;
  ok = ok && aead_open(&open, aad, direct, sizeof pt, direct + sizeof pt, back) &&
       memcmp(back, pt, sizeof pt) == 0;
  direct[3] ^= 1;
  ok = ok && !aead_open(&open, aad, direct, sizeof pt, direct + sizeof pt, back);
  unkey_direction(&seal);
  unkey_direction(&open);
  return ok;
}

/* Whether aesgcm.c is meant for this suite here: an AES-GCM suite on a CPU
 * with AES-NI and PCLMULQDQ, and no FIPS configuration (under one, every
 * record stays in the validated module). */
static int own_aes_applies(const suite_t *s) {
  return strncmp(s->name, "AES-", 4) == 0 && gw_aesgcm_cpu_ok() &&
         !EVP_default_properties_is_fips_enabled(NULL);
}

/* aesgcm.c must give EVP's bytes for this suite's key size at the record
 * sizes it is used for (both edges, a partial block, several four-block
 * rounds), open them, and refuse a changed one. */
static int own_aes_matches(const suite_t *s) {
  static const size_t lens[] = {0, 1, 40, 100, OWN_AES_MAX};
  unsigned char key[32], iv[IV_LEN], pt[OWN_AES_MAX], evp[OWN_AES_MAX + TAG_LEN], own[OWN_AES_MAX + TAG_LEN];
  unsigned char back[OWN_AES_MAX];
  gw_aesgcm_t g;
  pattern(key, sizeof key, 11, 2);
  pattern(iv, sizeof iv, 17, 9);
  pattern(pt, sizeof pt, 29, 7);
  int ok = gw_aesgcm_key(&g, key, s->key_len);
  for (size_t k = 0; ok && k < sizeof lens / sizeof lens[0]; k++) {
    size_t n = lens[k];
    unsigned char aad[HEADER_LEN] = {REC_DATA, 3, 3, (unsigned char)((n + TAG_LEN) >> 8),
                                     (unsigned char)(n + TAG_LEN)};
    if (!(ok = evp_seal(s, key, iv, aad, pt, n, evp))) break;
    gw_aesgcm_seal(&g, iv, aad, sizeof aad, pt, n, own, own + n);
    ok = memcmp(own, evp, n + TAG_LEN) == 0 &&
         gw_aesgcm_open(&g, iv, aad, sizeof aad, own, n, own + n, back) && memcmp(back, pt, n) == 0;
    own[n / 2] ^= 0x10; /* the tag's first byte when n is 0 */
    ok = ok && !gw_aesgcm_open(&g, iv, aad, sizeof aad, own, n, own + n, back);
  }
  gw_aesgcm_wipe(&g);
  return ok;
}

static const suite_t *usable_suite(uint16_t code) {
  for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
    suite_t *s = &suites[i];
    if (s->code != code) continue;
    if (s->state == 0) {
      s->state = find_functions(s) && known_answer(s) ? 1 : -1;
      s->own_aes = s->state == 1 && own_aes_applies(s) && own_aes_matches(s);
    }
    return s->state == 1 ? s : NULL;
  }
  return NULL;
}

/* What to say of suite `s` once its checks ran, or NULL when all is well
 * (or OpenSSL itself lacks the cipher: then no client can negotiate it). */
static const char *check_failure(const suite_t *s) {
  if (s->state != 1 && s->cipher)
    return "failed its start-up check against OpenSSL: its TLS 1.3 records go through OpenSSL's record layer";
  if (s->state == 1 && !s->own_aes && own_aes_applies(s))
    return "aesgcm.c did not match OpenSSL's AES-GCM at start-up: records are sealed by OpenSSL's provider";
  return NULL;
}

int gw_tls_rec_self_check(char *why, size_t len) {
  size_t used = 0;
  if (len) why[0] = '\0';
  for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
    const suite_t *s = &suites[i];
    usable_suite(s->code);
    const char *what = check_failure(s);
    if (!what) continue;
    if (used < len) {
      int n = snprintf(why + used, len - used, "%s%s %s (slower, not less safe)", used ? "; " : "", s->name,
                       what);
      used += n > 0 ? (size_t)n : 0;
    }
  }
  return used ? -1 : 0;
}

/* ---- keys ---- */

/* HMAC with the suite's hash (OpenSSL's EVP_MAC). A keyless context per
 * hash is made once (fetching HMAC and the digest costs more than the
 * HMAC); each call works on a copy that is freed at once, because a keyed
 * context keeps the key (a traffic secret) until it is re-keyed or freed,
 * and freeing wipes it. */
static int hmac(const suite_t *s, const unsigned char *key, size_t key_len, const unsigned char *msg,
                size_t msg_len, unsigned char out[EVP_MAX_MD_SIZE]) {
  static EVP_MAC_CTX *keyless[2]; /* SHA-256, SHA-384 */
  EVP_MAC_CTX **t = &keyless[s->hash_len == 48];
  if (!*t) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *made = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)s->md, 0),
                      OSSL_PARAM_construct_end()};
    if (made && EVP_MAC_CTX_set_params(made, p) != 1) {
      EVP_MAC_CTX_free(made);
      made = NULL;
    }
    *t = made;
  }
  EVP_MAC_CTX *m = *t ? EVP_MAC_CTX_dup(*t) : NULL;
  size_t n = 0;
  int ok = m && EVP_MAC_init(m, key, key_len, NULL) == 1 && EVP_MAC_update(m, msg, msg_len) == 1 &&
           EVP_MAC_final(m, out, &n, EVP_MAX_MD_SIZE) == 1 && n == s->hash_len;
  EVP_MAC_CTX_free(m);
  return ok;
}

/* HKDF-Expand-Label(secret, label, "", out_len) of RFC 8446 7.1. Every
 * output here (a key, an IV, a secret) is at most one hash long, so
 * HKDF-Expand (RFC 5869 2.3) is its first block alone:
 * HMAC(secret, HkdfLabel || 0x01). spec/c/test_tls.c checks it against
 * OpenSSL's TLS13-KDF. */
static int expand_label(const suite_t *s, const unsigned char *secret, const char *label, unsigned char *out,
                        size_t out_len) {
  size_t label_len = strlen(label);
  if (out_len > s->hash_len || label_len > 16) return 0;
  unsigned char info[2 + 1 + 6 + 16 + 1 + 1];
  info[0] = (unsigned char)(out_len >> 8);
  info[1] = (unsigned char)out_len;
  info[2] = (unsigned char)(6 + label_len);
  memcpy(info + 3, "tls13 ", 6);
  memcpy(info + 9, label, label_len);
  info[9 + label_len] = 0;  /* the context: empty */
  info[10 + label_len] = 1; /* HKDF-Expand's block counter */
  unsigned char block[EVP_MAX_MD_SIZE];
  int ok = hmac(s, secret, s->hash_len, info, 11 + label_len, block);
  if (ok) memcpy(out, block, out_len);
  OPENSSL_cleanse(block, sizeof block);
  return ok;
}

/* Keys a direction from its current secret (d->secret). With `also`,
 * keys that direction too, for the other operation (gw_tls_rec_new's check
 * of the records OpenSSL sealed). */
static int key_from_secret(direction_t *d, const suite_t *s, int encrypt, direction_t *also) {
  unsigned char key[32], iv[IV_LEN];
  int ok = expand_label(s, d->secret, "key", key, s->key_len) &&
           expand_label(s, d->secret, "iv", iv, IV_LEN) && key_direction(d, s, key, iv, encrypt) &&
           (!also || key_direction(also, s, key, iv, !encrypt));
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(iv, sizeof iv);
  return ok;
}

/* KeyUpdate: the next generation of a direction's secret and keys. */
static int next_generation(direction_t *d) {
  const suite_t *s = d->suite;
  unsigned char fresh[GW_TLS_REC_SECRET_MAX];
  int ok = expand_label(s, d->secret, "traffic upd", fresh, s->hash_len);
  if (ok) memcpy(d->secret, fresh, s->hash_len);
  OPENSSL_cleanse(fresh, sizeof fresh);
  return ok && key_from_secret(d, s, d->encrypt, NULL);
}

/* Opens the records OpenSSL sealed with the server's key (`check` is
 * keyed like r->tx, for opening) and sets r->tx's sequence number past
 * them. 0 if one does not open. */
static int count_sent(gw_tls_rec_t *r, direction_t *check, const unsigned char *p, size_t n) {
  unsigned char scratch[MAX_CIPHER];
  size_t off = 0;
  int ok = 1;
  while (ok && off < n) {
    size_t body = n - off >= HEADER_LEN ? be16(p + off + 3) : 0;
    ok = n - off >= HEADER_LEN && p[off] == REC_DATA && body >= TAG_LEN + 1 && body <= MAX_CIPHER &&
         n - off - HEADER_LEN >= body &&
         aead_open(check, p + off, p + off + HEADER_LEN, body - TAG_LEN,
                   p + off + HEADER_LEN + body - TAG_LEN, scratch);
    check->seq++;
    off += HEADER_LEN + body;
  }
  OPENSSL_cleanse(scratch, sizeof scratch);
  r->tx.seq = check->seq;
  return ok;
}

gw_tls_rec_t *gw_tls_rec_new(uint16_t suite, const unsigned char *client_secret,
                             const unsigned char *server_secret, size_t len, const char *sent,
                             size_t sent_len) {
  const suite_t *s = usable_suite(suite);
  if (!s || len != s->hash_len) return NULL;
  /* aesgcm.c reads its keys with aligned loads (gw_aesgcm_t is 16-byte
   * aligned): asked for explicitly rather than trusted to every malloc. */
  gw_tls_rec_t *r = gw_xzalloc_aligned(16, sizeof *r);
  memcpy(r->rx.secret, client_secret, len);
  memcpy(r->tx.secret, server_secret, len);
  r->rx.suite = r->tx.suite = s;
  direction_t check = {0};
  int ok = key_from_secret(&r->rx, s, 0, NULL) && key_from_secret(&r->tx, s, 1, sent_len ? &check : NULL) &&
           (!sent_len || count_sent(r, &check, (const unsigned char *)sent, sent_len));
  unkey_direction(&check);
  if (!ok) {
    gw_tls_rec_free(r);
    return NULL;
  }
  return r;
}

void gw_tls_rec_free(gw_tls_rec_t *r) {
  if (!r) return;
  unkey_direction(&r->rx);
  unkey_direction(&r->tx);
  gw_buf_free(&r->stash);
  free(r);
}

const char *gw_tls_rec_error(const gw_tls_rec_t *r) { return r->why; }

/* ---- sealing ---- */

/* Seals the record whose header room and `len` plaintext bytes are at
 * out->base + start (the room for the type and the tag is reserved):
 * appends the inner type and the tag, fills in the header. */
static int seal_at(gw_tls_rec_t *r, gw_buf_t *out, size_t start, size_t len, unsigned char type) {
  unsigned char *p = (unsigned char *)out->base + start;
  size_t inner = len + 1, total = inner + TAG_LEN;
  p[HEADER_LEN + len] = type;
  p[0] = REC_DATA;
  p[1] = 3;
  p[2] = 3;
  p[3] = (unsigned char)(total >> 8);
  p[4] = (unsigned char)total;
  if (!aead_seal(&r->tx, p, p + HEADER_LEN, inner, p + HEADER_LEN + inner)) return 0;
  r->tx.seq++;
  out->len = start + HEADER_LEN + total;
  return 1;
}

/* A short record (an alert, a KeyUpdate) of `len` bytes. */
static int seal_small(gw_tls_rec_t *r, gw_buf_t *out, unsigned char type, const unsigned char *body,
                      size_t len) {
  gw_buf_reserve(out, HEADER_LEN + len + 1 + TAG_LEN);
  size_t start = out->len;
  memcpy(out->base + start + HEADER_LEN, body, len);
  return seal_at(r, out, start, len, type);
}

/* Our KeyUpdate (update_not_requested), then our next generation of keys. */
static int send_key_update(gw_tls_rec_t *r, gw_buf_t *out) {
  static const unsigned char msg[] = {HS_KEY_UPDATE, 0, 0, 1, 0};
  r->update_due = 0;
  return seal_small(r, out, REC_HANDSHAKE, msg, sizeof msg) && next_generation(&r->tx);
}

/* Ends the connection on our side: a fatal alert (unless our
 * close_notify already went), nothing read or written after. */
static int fatal(gw_tls_rec_t *r, gw_buf_t *out, unsigned char alert, const char *why) {
  if (!r->failed && !r->closed) {
    unsigned char body[2] = {2, alert};
    (void)seal_small(r, out, REC_ALERT, body, sizeof body);
  }
  r->failed = 1;
  r->closed = 1;
  if (!r->why) r->why = why;
  return STOP_FAILED;
}

int gw_tls_rec_write(gw_tls_rec_t *r, const uv_buf_t *bufs, unsigned n, gw_buf_t *out) {
  if (r->failed || r->closed) return GW_ETLS;
  size_t left = 0;
  for (unsigned i = 0; i < n; i++) left += bufs[i].len;
  unsigned i = 0;
  size_t from = 0; /* bytes of bufs[i] already sealed */
  while (left > 0) {
    if ((r->update_due || r->tx.seq >= gw_tls_rec_rekey_after) && !send_key_update(r, out)) {
      fatal(r, out, ALERT_INTERNAL_ERROR, "cannot update the TLS keys");
      return GW_ETLS;
    }
    size_t len = left < MAX_PLAIN ? left : MAX_PLAIN;
    gw_buf_reserve(out, HEADER_LEN + len + 1 + TAG_LEN);
    size_t start = out->len;
    char *dst = out->base + start + HEADER_LEN;
    for (size_t filled = 0; filled < len;) {
      size_t take = bufs[i].len - from;
      if (take > len - filled) take = len - filled;
      memcpy(dst + filled, bufs[i].base + from, take);
      filled += take;
      from += take;
      if (from == bufs[i].len) {
        i++;
        from = 0;
      }
    }
    if (!seal_at(r, out, start, len, REC_DATA)) {
      fatal(r, out, ALERT_INTERNAL_ERROR, "cannot seal a record");
      return GW_ETLS;
    }
    left -= len;
  }
  return 0;
}

void gw_tls_rec_close(gw_tls_rec_t *r, gw_buf_t *out) {
  if (r->closed || r->failed) return;
  static const unsigned char body[2] = {1, ALERT_CLOSE_NOTIFY};
  (void)seal_small(r, out, REC_ALERT, body, sizeof body);
  r->closed = 1;
}

/* ---- opening ---- */

/* An alert record holds exactly one alert (RFC 8446 5.1). */
static int on_alert(gw_tls_rec_t *r, const unsigned char *p, size_t len, gw_buf_t *out) {
  if (len != 2) return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "a malformed alert");
  if (p[1] == ALERT_CLOSE_NOTIFY) return STOP_EOF;
  /* RFC 8446 6.1: user_canceled precedes a close_notify; nothing to do,
   * a few times. */
  if (p[1] == ALERT_USER_CANCELED) {
    if (++r->warnings_in_a_row < MAX_WARNINGS_IN_A_ROW) return GO_ON;
    return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "too many user_canceled alerts in a row");
  }
  r->failed = 1;
  r->closed = 1; /* no alert in answer to an alert */
  snprintf(r->why_text, sizeof r->why_text, "the client sent alert %d (%s)", p[1],
           SSL_alert_desc_string_long(p[1]));
  r->why = r->why_text;
  return STOP_FAILED;
}

/* Post-handshake messages from the client: only KeyUpdate is allowed (we
 * ask for no post-handshake authentication). It may come in pieces over
 * several records, but must end its record (a key change follows it). */
static int on_handshake(gw_tls_rec_t *r, const unsigned char *p, size_t len, gw_buf_t *out) {
  if (len == 0) return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "an empty handshake record");
  size_t i = 0;
  while (i < len) {
    while (r->hs_len < 4 && i < len) r->hs[r->hs_len++] = p[i++];
    if (r->hs_len < 4) return GO_ON; /* the rest comes in the next record */
    if (r->hs[0] != HS_KEY_UPDATE)
      return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "a handshake message after the handshake");
    size_t body = (size_t)r->hs[1] << 16 | be16(r->hs + 2);
    if (body == 0) return fatal(r, out, ALERT_DECODE_ERROR, "an empty KeyUpdate");
    if (body != 1) return fatal(r, out, ALERT_ILLEGAL_PARAMETER, "a KeyUpdate of the wrong length");
    if (i == len) return GO_ON;
    unsigned char request = p[i++];
    r->hs_len = 0;
    if (request > 1) return fatal(r, out, ALERT_ILLEGAL_PARAMETER, "a KeyUpdate asking for neither");
    if (i != len) return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "a KeyUpdate not at the end of its record");
    if (!next_generation(&r->rx)) return fatal(r, out, ALERT_INTERNAL_ERROR, "cannot update the TLS keys");
    /* Answered before our next data record (several requests while we are
     * silent get one answer: RFC 8446 4.6.3). */
    if (request == 1) r->update_due = 1;
  }
  return GO_ON;
}

/* Opens one whole record (`rec`: header and `body_len` bytes). Its
 * application data goes to the end of `plain`: when the record lies in
 * plain's own spare room (`in_place`) it is decrypted where it is and moved
 * down, else decrypted straight into `plain`. */
static int open_record(gw_tls_rec_t *r, const unsigned char *rec, size_t body_len, int in_place,
                       gw_buf_t *plain, gw_buf_t *out, ssize_t *total) {
  if (body_len < TAG_LEN + 1) return fatal(r, out, ALERT_BAD_RECORD_MAC, "a record too short to open");
  size_t len = body_len - TAG_LEN;
  unsigned char *dst;
  if (in_place) {
    dst = (unsigned char *)rec + HEADER_LEN;
  } else {
    gw_buf_reserve(plain, len);
    dst = (unsigned char *)plain->base + plain->len;
  }
  if (!aead_open(&r->rx, rec, rec + HEADER_LEN, len, rec + HEADER_LEN + len, dst))
    return fatal(r, out, ALERT_BAD_RECORD_MAC, "a record that does not open (bad record mac)");
  if (++r->rx.seq == 0) return fatal(r, out, ALERT_INTERNAL_ERROR, "the read sequence number wrapped");
  /* The content type is the last byte that is not padding. */
  while (len > 0 && dst[len - 1] == 0) len--;
  if (len == 0) return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "a record without a content type");
  unsigned char type = dst[--len];
  if (len > MAX_PLAIN) return fatal(r, out, ALERT_RECORD_OVERFLOW, "a record over 16 KB of plaintext");
  if (r->hs_len > 0 && type != REC_HANDSHAKE)
    return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "a record inside a handshake message cut across records");
  if (len == 0 && type == REC_DATA) {
    if (++r->empty_in_a_row > MAX_EMPTY_IN_A_ROW)
      return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "too many empty records in a row");
    return GO_ON;
  }
  if (len > 0) r->empty_in_a_row = 0; /* as OpenSSL counts: any record with content */
  switch (type) {
    case REC_DATA:
      r->warnings_in_a_row = 0;
      if (in_place) memmove(plain->base + plain->len, dst, len);
      plain->len += len;
      *total += (ssize_t)len;
      return GO_ON;
    case REC_ALERT: return on_alert(r, dst, len, out);
    case REC_HANDSHAKE: return on_handshake(r, dst, len, out);
    default: return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "an unexpected record type");
  }
}

/* The header alone (RFC 8446 5.2), before its body arrives. */
static int check_header(gw_tls_rec_t *r, const unsigned char *h, gw_buf_t *out) {
  if (h[0] != REC_DATA)
    return fatal(r, out, ALERT_UNEXPECTED_MESSAGE, "an unprotected record after the handshake");
  /* RFC 8446 5.1 says to ignore the version; OpenSSL refuses anything but
   * 0x0303, and so do we (no TLS 1.3 stack sends another). */
  if (h[1] != 3) return fatal(r, out, ALERT_PROTOCOL_VERSION, "a record of another protocol version");
  if (h[2] != 3) return fatal(r, out, ALERT_DECODE_ERROR, "a record with a version other than 0x0303");
  if (be16(h + 3) > MAX_CIPHER)
    return fatal(r, out, ALERT_RECORD_OVERFLOW, "a record over the TLS size limit");
  return GO_ON;
}

int gw_tls_rec_peer_closed(const gw_tls_rec_t *r) { return r->eof; }

/* 1 if `p` lies in b's spare room (past what it holds, within what it has). */
static int in_spare_room(const gw_buf_t *b, const char *p) {
  uintptr_t base = (uintptr_t)b->base, at = (uintptr_t)p;
  return b->base && at >= base + b->len && at < base + b->cap;
}

ssize_t gw_tls_rec_read(gw_tls_rec_t *r, const char *in, size_t n, gw_buf_t *plain, gw_buf_t *out) {
  if (r->failed) return GW_ETLS;
  if (r->eof) return UV_EOF;
  const unsigned char *src = (const unsigned char *)in;
  size_t len = n;
  int in_place = 0;
  if (r->stash.len > 0) {
    /* The rest of a record came: everything goes through the stash (a
     * copy of this read; records split across reads are a large upload's
     * case, where one more copy is small next to the AEAD). */
    gw_buf_append(&r->stash, in, n);
    src = (const unsigned char *)r->stash.base;
    len = r->stash.len;
  } else {
    in_place = in_spare_room(plain, in);
  }
  ssize_t total = 0;
  size_t off = 0;
  int status = GO_ON;
  while (status == GO_ON && len - off >= HEADER_LEN) {
    status = check_header(r, src + off, out);
    if (status != GO_ON) break;
    size_t body = be16(src + off + 3);
    if (len - off < HEADER_LEN + body) break;
    status = open_record(r, src + off, body, in_place, plain, out, &total);
    off += HEADER_LEN + body;
  }
  if (status == GO_ON) {
    if (src == (const unsigned char *)r->stash.base) {
      gw_buf_consume(&r->stash, off);
      /* An idle connection keeps no copy of a large read. */
      if (r->stash.len == 0) gw_buf_free(&r->stash);
    } else if (off < len) {
      gw_buf_append(&r->stash, src + off, len - off);
    }
    return total;
  }
  gw_buf_free(&r->stash);
  if (status == STOP_EOF) {
    r->eof = 1;
    return total > 0 ? total : UV_EOF;
  }
  return total > 0 ? total : GW_ETLS;
}
