/*
 * aesgcm.h: AES-GCM (NIST SP 800-38D) for short TLS records, on the x86-64
 * AES-NI and PCLMULQDQ instructions.
 *
 * Why: a TLS 1.3 record of a typical request or answer is 50 to 500 bytes.
 * Through OpenSSL 3.0's provider interface, sealing or opening one costs
 * about 2,000 instructions, most of it fixed: named-parameter lookups for
 * the tag, context set-up per nonce, the generic GCM code's bookkeeping.
 * The arithmetic itself is a few dozen instructions per 16-byte block. So
 * short records are sealed and opened here (tls_record.c decides which),
 * and long ones still go to OpenSSL, whose stitched assembly is faster per
 * byte. The two give the same bytes: tls_record.c checks that against EVP
 * before it uses this code, and spec/c/test_aesgcm.c compares them over
 * thousands of random keys, nonces and lengths.
 *
 * Constant time: AES rounds and carry-less multiplications are single
 * instructions with no table lookups, and the tag is compared without an
 * early exit. On other CPUs (or architectures) gw_aesgcm_cpu_ok() is 0 and
 * nothing here is used.
 */
#ifndef GW_AESGCM_H
#define GW_AESGCM_H

#include <stddef.h>

#define GW_AESGCM_NONCE 12
#define GW_AESGCM_TAG 16

/* A key, expanded. Owned by whoever embeds it (one direction of a TLS
 * connection); wiped with gw_aesgcm_wipe. It must be 16-byte aligned (the
 * code reads it with aligned loads): the compiler sees to it for variables,
 * heap memory that holds one must come from an aligned allocation
 * (tls_record.c uses gw_xzalloc_aligned). */
typedef struct {
  _Alignas(16) unsigned char rk[15][16];  /* AES round keys, as the AES instructions take them */
  _Alignas(16) unsigned char hkey[4][16]; /* H, H^2, H^3, H^4 (H: GHASH's key), each times x^-1,
                                             in GHASH's register order */
  int rounds;                             /* 10 (AES-128) or 14 (AES-256); 0: not keyed */
} gw_aesgcm_t;

/* 1 if this CPU has what the code needs (AES-NI, PCLMULQDQ, SSSE3, SSE4.1). */
int gw_aesgcm_cpu_ok(void);

/* Expands a 16- or 32-byte key. Returns 0 for another length or when the
 * CPU lacks the instructions. */
int gw_aesgcm_key(gw_aesgcm_t *g, const unsigned char *key, size_t key_len);

/* Encrypts `len` bytes of `in` into `out` (the same buffer, or not
 * overlapping) and writes the tag. `len` must stay under GCM's limit of
 * 2^32 - 2 blocks (64 GB; tls_record.c passes at most 256 bytes). */
void gw_aesgcm_seal(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE],
                    const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
                    unsigned char *out, unsigned char tag[GW_AESGCM_TAG]);

/* Decrypts `len` bytes of `in` into `out` (same rules) and returns 1 if
 * the tag matches; otherwise returns 0 and `out` is zeroed, so that no
 * unauthenticated plaintext is left behind. */
int gw_aesgcm_open(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE], const unsigned char *aad,
                   size_t aad_len, const unsigned char *in, size_t len,
                   const unsigned char tag[GW_AESGCM_TAG], unsigned char *out);

void gw_aesgcm_wipe(gw_aesgcm_t *g);

#endif
