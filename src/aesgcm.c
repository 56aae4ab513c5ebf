/*
 * aesgcm.c: AES-GCM for short TLS records (see aesgcm.h for why).
 *
 * GCM in brief (NIST SP 800-38D, 96-bit nonces only): with the block
 * cipher E under key K, H = E(0^128) and J0 = nonce || 0x00000001,
 *   ciphertext = plaintext XOR E(J0 + 1), E(J0 + 2), ...   (32-bit counter)
 *   tag = E(J0) XOR GHASH(aad, 0-padded || ciphertext, 0-padded || lengths)
 * where GHASH folds each 16-byte block X into Y = (Y XOR X) * H in
 * GF(2^128) modulo P = x^128 + x^7 + x^2 + x + 1, and the lengths block is
 * the two lengths in bits, 64-bit big-endian each.
 *
 * How GHASH is done here. GCM writes a field element with x^0 in the most
 * significant bit of its first byte. Byte-reversing a block (one PSHUFB)
 * gives a 128-bit register whose bit i holds the coefficient of x^(127-i):
 * "reflected". For reflected A and B the 256-bit carry-less product
 * (PCLMULQDQ, four 64x64 products) holds the coefficient of x^(254-m) of
 * A*B in bit m, one place short of the 256-bit reflected layout (x^(255-m)
 * in bit m); read in that layout it is A*B*x. So the key is stored as
 * H*x^-1 (hkey), and the product of Y and hkey, read in the 256-bit layout,
 * is Y*H exactly, with no shift per block. H^2, H^3 and H^4 are stored the
 * same way, so that four blocks are hashed with four independent products
 * and one reduction (ghash_n): Y*H^4 + X1*H^3 + X2*H^2 + X3*H is four
 * steps of Y = (Y + X)*H.
 *
 * Reduction (reduce below). In the 256-bit layout the high 128 bits are the
 * coefficients of x^0..x^127 (reflected) and the low 128 bits those of
 * x^128..x^255, say x^128*U. As x^128 = x^7 + x^2 + x + 1 mod P, the
 * result is high XOR U*(1 + x + x^2 + x^7). In the reflected layout
 * multiplying by x^s is a right shift by s; the bits it pushes out (degree
 * 128 and up) are folded again the same way, and since there are at most 7
 * of them that second fold never overflows. Both folds come down to:
 * D = U XOR (U << 127) XOR (U << 126) XOR (U << 121), then
 * result = high XOR D XOR (D >> 1) XOR (D >> 2) XOR (D >> 7)
 * (128-bit shifts), which reduce() does with two carry-less products.
 *
 * Everything is checked against OpenSSL: spec/c/test_aesgcm.c, and the
 * known-answer check tls_record.c runs before it uses this code.
 */
#include "aesgcm.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

/* Each function here may use these instructions; callers check
 * gw_aesgcm_cpu_ok() (gw_aesgcm_key does) before anything runs. */
#define TARGET __attribute__((target("aes,pclmul,ssse3,sse4.1")))
/* The helpers below are a few instructions each: a call would cost more. */
#define INLINE TARGET static inline __attribute__((always_inline))

int gw_aesgcm_cpu_ok(void) {
  static int ok = -1;
  if (ok < 0) {
    __builtin_cpu_init();
    ok = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
         __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
  }
  return ok;
}

/* ---- AES ---- */

/* k XOR k<<32 XOR k<<64 XOR k<<96: the running XOR of a round key's words
 * that the AES key schedule makes (FIPS 197 5.2). */
TARGET static __m128i spread(__m128i k) {
  k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
  k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
  return _mm_xor_si128(k, _mm_slli_si128(k, 4));
}

/* The next round key from the one before (`prev`) and the one before that
 * (`prev2`); `lane` 0xff takes SubWord(RotWord(w)) ^ rcon of the last word,
 * 0xaa takes SubWord(w) (AES-256's middle step). The rcon must be a
 * constant, hence macros. */
#define NEXT(prev2, prev, rcon, lane) \
  _mm_xor_si128(spread(prev2), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(prev, rcon), lane))

TARGET static void expand128(__m128i *rk, const unsigned char *key) {
  rk[0] = _mm_loadu_si128((const __m128i *)key);
  rk[1] = NEXT(rk[0], rk[0], 0x01, 0xff);
  rk[2] = NEXT(rk[1], rk[1], 0x02, 0xff);
  rk[3] = NEXT(rk[2], rk[2], 0x04, 0xff);
  rk[4] = NEXT(rk[3], rk[3], 0x08, 0xff);
  rk[5] = NEXT(rk[4], rk[4], 0x10, 0xff);
  rk[6] = NEXT(rk[5], rk[5], 0x20, 0xff);
  rk[7] = NEXT(rk[6], rk[6], 0x40, 0xff);
  rk[8] = NEXT(rk[7], rk[7], 0x80, 0xff);
  rk[9] = NEXT(rk[8], rk[8], 0x1b, 0xff);
  rk[10] = NEXT(rk[9], rk[9], 0x36, 0xff);
}

TARGET static void expand256(__m128i *rk, const unsigned char *key) {
  rk[0] = _mm_loadu_si128((const __m128i *)key);
  rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
  rk[2] = NEXT(rk[0], rk[1], 0x01, 0xff);
  rk[3] = NEXT(rk[1], rk[2], 0x00, 0xaa);
  rk[4] = NEXT(rk[2], rk[3], 0x02, 0xff);
  rk[5] = NEXT(rk[3], rk[4], 0x00, 0xaa);
  rk[6] = NEXT(rk[4], rk[5], 0x04, 0xff);
  rk[7] = NEXT(rk[5], rk[6], 0x00, 0xaa);
  rk[8] = NEXT(rk[6], rk[7], 0x08, 0xff);
  rk[9] = NEXT(rk[7], rk[8], 0x00, 0xaa);
  rk[10] = NEXT(rk[8], rk[9], 0x10, 0xff);
  rk[11] = NEXT(rk[9], rk[10], 0x00, 0xaa);
  rk[12] = NEXT(rk[10], rk[11], 0x20, 0xff);
  rk[13] = NEXT(rk[11], rk[12], 0x00, 0xaa);
  rk[14] = NEXT(rk[12], rk[13], 0x40, 0xff);
}

/* AES encryption of 1, 4 or 8 blocks side by side. The rounds are
 * written out (ALL_ROUNDS): a loop costs a counter, a compare and a branch
 * per round, as much as the round itself. Several blocks go side by side
 * because one round takes a few cycles to finish while the AES unit can
 * start a new one every cycle or two. */
#define ALL_ROUNDS(ROUND) \
  do {                    \
    ROUND(rk[1]);         \
    ROUND(rk[2]);         \
    ROUND(rk[3]);         \
    ROUND(rk[4]);         \
    ROUND(rk[5]);         \
    ROUND(rk[6]);         \
    ROUND(rk[7]);         \
    ROUND(rk[8]);         \
    ROUND(rk[9]);         \
    if (rounds == 14) {   \
      ROUND(rk[10]);      \
      ROUND(rk[11]);      \
      ROUND(rk[12]);      \
      ROUND(rk[13]);      \
    }                     \
  } while (0)

#define ROUND_1(k) x = _mm_aesenc_si128(x, k)
#define ROUND_4_AT(p, k)              \
  do {                                \
    p[0] = _mm_aesenc_si128(p[0], k); \
    p[1] = _mm_aesenc_si128(p[1], k); \
    p[2] = _mm_aesenc_si128(p[2], k); \
    p[3] = _mm_aesenc_si128(p[3], k); \
  } while (0)
#define ROUND_4(k) ROUND_4_AT(b, k)
#define ROUND_8(k)          \
  do {                      \
    ROUND_4_AT(b, k);       \
    ROUND_4_AT((b + 4), k); \
  } while (0)

INLINE __m128i aes_block(const __m128i *rk, int rounds, __m128i x) {
  x = _mm_xor_si128(x, rk[0]);
  ALL_ROUNDS(ROUND_1);
  return _mm_aesenclast_si128(x, rk[rounds]);
}

INLINE void aes_4(const __m128i *rk, int rounds, __m128i b[4]) {
  for (int i = 0; i < 4; i++) b[i] = _mm_xor_si128(b[i], rk[0]);
  ALL_ROUNDS(ROUND_4);
  for (int i = 0; i < 4; i++) b[i] = _mm_aesenclast_si128(b[i], rk[rounds]);
}

INLINE void aes_8(const __m128i *rk, int rounds, __m128i b[8]) {
  for (int i = 0; i < 8; i++) b[i] = _mm_xor_si128(b[i], rk[0]);
  ALL_ROUNDS(ROUND_8);
  for (int i = 0; i < 8; i++) b[i] = _mm_aesenclast_si128(b[i], rk[rounds]);
}

/* ---- GHASH ---- */

INLINE __m128i byte_swap(__m128i x) {
  return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* The reduction described at the top: `hi`:`lo` is a 256-bit product.
 * With c = 2^63 + 2^62 + 2^57, the carry-less product M(x) = x * c of a
 * 64-bit x is, as high:low lanes, (x>>1 ^ x>>2 ^ x>>7) : (x<<63 ^ x<<62 ^
 * x<<57): both parts of the shifts above at once. Writing lo = l1:l0,
 *   D = (l1 ^ low(M(l0))) : l0                      (call its high lane d1)
 *   result = hi ^ (d1 ^ high(M(d1))) : (l0 ^ high(M(l0)) ^ low(M(d1)))
 * which is two rounds of "swap the lanes, add M(low lane)". */
INLINE __m128i reduce(__m128i hi, __m128i lo) {
  const __m128i c = _mm_set_epi64x(0, (long long)0xC200000000000000ULL);
  lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), _mm_clmulepi64_si128(lo, c, 0x00));
  lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), _mm_clmulepi64_si128(lo, c, 0x00));
  return _mm_xor_si128(hi, lo);
}

/* The 256-bit carry-less product of a and b, added into hi:lo (and its
 * middle part into mid, folded in by fold_mid_and_reduce): products are added before
 * one reduction when several blocks are hashed together. */
INLINE void mul_add(__m128i a, __m128i b, __m128i *hi, __m128i *mid, __m128i *lo) {
  *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
  *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
  *mid =
      _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10)));
}

INLINE __m128i fold_mid_and_reduce(__m128i hi, __m128i mid, __m128i lo) {
  return reduce(_mm_xor_si128(hi, _mm_srli_si128(mid, 8)), _mm_xor_si128(lo, _mm_slli_si128(mid, 8)));
}

/* ((y XOR x[0])*H^n) XOR (x[1]*H^(n-1)) XOR ... XOR (x[n-1]*H), for n
 * from 1 to 4: what n single steps Y = (Y XOR X)*H give, with one
 * reduction, and the n products do not wait for each other. All values
 * reflected; hk[i] is H^(i+1)*x^-1. */
INLINE __m128i ghash_n(__m128i y, const __m128i *x, int n, const __m128i hk[4]) {
  __m128i hi = _mm_setzero_si128(), mid = hi, lo = hi;
  mul_add(_mm_xor_si128(y, x[0]), hk[n - 1], &hi, &mid, &lo);
  for (int j = 1; j < n; j++) mul_add(x[j], hk[n - 1 - j], &hi, &mid, &lo);
  return fold_mid_and_reduce(hi, mid, lo);
}

/* One block: (y XOR x)*H. */
INLINE __m128i ghash_1(__m128i y, __m128i x, const __m128i hk[4]) { return ghash_n(y, &x, 1, hk); }

/* `n` (1 to 15) bytes as a block padded with zeros, and back: a few
 * fixed-size (overlapping) loads and stores, cheaper than memcpy calls. */
INLINE __m128i load_partial(const unsigned char *p, size_t n) {
  uint64_t lo = 0, hi = 0;
  if (n >= 8) {
    memcpy(&lo, p, 8);
    if (n > 8) {
      memcpy(&hi, p + n - 8, 8); /* ends at byte n-1; bytes before 8 shifted out */
      hi >>= 8 * (16 - n);
    }
  } else if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, p + n - 4, 4);
    lo = a | (uint64_t)b << 8 * (n - 4);
  } else {
    lo = p[0] | (n > 1 ? (uint64_t)p[1] << 8 : 0) | (n > 2 ? (uint64_t)p[2] << 16 : 0);
  }
  return _mm_set_epi64x((long long)hi, (long long)lo);
}

INLINE void store_partial(unsigned char *p, __m128i v, size_t n) {
  uint64_t lo = (uint64_t)_mm_cvtsi128_si64(v), hi = (uint64_t)_mm_extract_epi64(v, 1);
  if (n >= 8) {
    memcpy(p, &lo, 8);
    if (n > 8) {
      uint64_t last = lo >> 8 * (n - 8) | hi << 8 * (16 - n); /* bytes n-8 .. n-1 */
      memcpy(p + n - 8, &last, 8);
    }
  } else if (n >= 4) {
    uint32_t a = (uint32_t)lo, b = (uint32_t)(lo >> 8 * (n - 4));
    memcpy(p, &a, 4);
    memcpy(p + n - 4, &b, 4);
  } else {
    p[0] = (unsigned char)lo;
    if (n > 1) p[1] = (unsigned char)(lo >> 8);
    if (n > 2) p[2] = (unsigned char)(lo >> 16);
  }
}

/* n bytes of 0xff, then zeros: loadu(ones_then_zeros + 16 - n). */
static const unsigned char ones_then_zeros[32] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* ---- GCM ---- */

/* The counter block nonce || BE32(n). */
INLINE __m128i counter(__m128i base, uint32_t n) {
  return _mm_insert_epi32(base, (int)__builtin_bswap32(n), 3);
}

/* out = in XOR ks for `count` whole blocks, and in `hashed` what GHASH
 * takes of each (the ciphertext, byte-swapped): out when sealing, in when
 * opening, read before out is written so that in == out works. */
INLINE void xor_blocks(const unsigned char *in, unsigned char *out, const __m128i *ks, __m128i *hashed,
                       int count, int sealing) {
  for (int j = 0; j < count; j++) {
    __m128i x = _mm_loadu_si128((const __m128i *)(in + 16 * j));
    __m128i c = _mm_xor_si128(x, ks[j]);
    _mm_storeu_si128((__m128i *)(out + 16 * j), c);
    hashed[j] = byte_swap(sealing ? c : x);
  }
}

/* Encrypts or decrypts (the same XOR) `len` bytes from counter 2 on and
 * hashes the ciphertext into y: the output when sealing, the input when
 * opening (read before the output is written, so in == out works).
 * Keystream is made eight blocks at a time (then four), and hashed four at
 * a time. */
INLINE __m128i crypt_and_hash(const __m128i *rk, int rounds, const __m128i hk[4], __m128i base,
                              const unsigned char *in, size_t len, unsigned char *out, __m128i y,
                              int sealing) {
  uint32_t n = 2;
  size_t i = 0;
  for (; len - i >= 128; i += 128, n += 8) {
    __m128i ks[8] = {counter(base, n),     counter(base, n + 1), counter(base, n + 2), counter(base, n + 3),
                     counter(base, n + 4), counter(base, n + 5), counter(base, n + 6), counter(base, n + 7)};
    aes_8(rk, rounds, ks);
    __m128i hashed[8];
    xor_blocks(in + i, out + i, ks, hashed, 8, sealing);
    y = ghash_n(y, hashed, 4, hk);
    y = ghash_n(y, hashed + 4, 4, hk);
  }
  for (; len - i >= 64; i += 64, n += 4) {
    __m128i ks[4] = {counter(base, n), counter(base, n + 1), counter(base, n + 2), counter(base, n + 3)};
    aes_4(rk, rounds, ks);
    __m128i hashed[4];
    xor_blocks(in + i, out + i, ks, hashed, 4, sealing);
    y = ghash_n(y, hashed, 4, hk);
  }
  if (i == len) return y;
  /* The last 1 to 63 bytes: whole blocks, then a partial one, whose hashed
   * ciphertext is padded with zeros (not with keystream). */
  size_t rest = len - i, whole = rest / 16, part = rest % 16;
  int blocks = (int)(whole + (part > 0));
  __m128i ks[4] = {counter(base, n), counter(base, n + 1), counter(base, n + 2), counter(base, n + 3)};
  aes_4(rk, rounds, ks);
  __m128i hashed[4];
  xor_blocks(in + i, out + i, ks, hashed, (int)whole, sealing);
  if (part) {
    __m128i x = load_partial(in + i + 16 * whole, part);
    __m128i c = _mm_xor_si128(x, ks[whole]);
    store_partial(out + i + 16 * whole, c, part);
    __m128i mask = _mm_loadu_si128((const __m128i *)(ones_then_zeros + 16 - part));
    hashed[whole] = byte_swap(sealing ? _mm_and_si128(c, mask) : x);
  }
  switch (blocks) { /* constant counts, so that each ghash_n is unrolled */
    case 1: return ghash_n(y, hashed, 1, hk);
    case 2: return ghash_n(y, hashed, 2, hk);
    case 3: return ghash_n(y, hashed, 3, hk);
    default: return ghash_n(y, hashed, 4, hk);
  }
}

/* The tag before it is written or compared. */
TARGET static __m128i gcm(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE],
                          const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
                          unsigned char *out, int sealing) {
  /* Read in place (16-byte aligned): copying them costs a memcpy call. */
  const __m128i *rk = (const __m128i *)g->rk, *hk = (const __m128i *)g->hkey;
  unsigned char b[16] = {0};
  memcpy(b, nonce, GW_AESGCM_NONCE);
  __m128i base = _mm_loadu_si128((const __m128i *)b);
  __m128i tag_mask = aes_block(rk, g->rounds, counter(base, 1));

  __m128i y = _mm_setzero_si128();
  size_t i = 0;
  for (; aad_len - i >= 16; i += 16)
    y = ghash_1(y, byte_swap(_mm_loadu_si128((const __m128i *)(aad + i))), hk);
  if (i < aad_len) y = ghash_1(y, byte_swap(load_partial(aad + i, aad_len - i)), hk);
  y = crypt_and_hash(rk, g->rounds, hk, base, in, len, out, y, sealing);
  /* The lengths block, reflected: its second half (the ciphertext's
   * length) ends up in the low lane. */
  y = ghash_1(y, _mm_set_epi64x((long long)((uint64_t)aad_len * 8), (long long)((uint64_t)len * 8)), hk);
  return _mm_xor_si128(byte_swap(y), tag_mask);
}

/* h*x^-1, for a reflected h: a left shift by one, and if the top bit (the
 * coefficient of x^0) falls out, x^-1 = x^127 + x^6 + x + 1 added in: bits
 * 127, 126, 121 and 0. Branch-free. */
TARGET static __m128i times_x_inverse(__m128i h) {
  __m128i shifted = _mm_or_si128(_mm_slli_epi64(h, 1), _mm_slli_si128(_mm_srli_epi64(h, 63), 8));
  __m128i top = _mm_srai_epi32(_mm_shuffle_epi32(h, 0xff), 31);
  __m128i poly = _mm_set_epi64x((long long)0xC200000000000000ULL, 1);
  return _mm_xor_si128(shifted, _mm_and_si128(top, poly));
}

/* H = E(0), and H, H^2, H^3, H^4 in the form ghash takes. */
TARGET static void make_hkeys(gw_aesgcm_t *g, const __m128i *rk) {
  __m128i h = byte_swap(aes_block(rk, g->rounds, _mm_setzero_si128()));
  __m128i hk[4] = {times_x_inverse(h)}, power = h;
  for (int i = 0; i < 4; i++) {
    _mm_storeu_si128((__m128i *)g->hkey[i], times_x_inverse(power));
    power = ghash_n(_mm_setzero_si128(), &power, 1, hk); /* power * H (only hk[0] is read) */
  }
}

/* Straight into g: a local copy of the round keys would stay behind on
 * the stack, and any one AES-128 round key gives the key back. */
TARGET static void expand(gw_aesgcm_t *g, const unsigned char *key, size_t key_len) {
  __m128i *rk = (__m128i *)g->rk;
  g->rounds = key_len == 16 ? 10 : 14;
  if (key_len == 16) expand128(rk, key);
  else expand256(rk, key);
  make_hkeys(g, rk);
}

int gw_aesgcm_key(gw_aesgcm_t *g, const unsigned char *key, size_t key_len) {
  memset(g, 0, sizeof *g);
  if ((key_len != 16 && key_len != 32) || !gw_aesgcm_cpu_ok()) return 0;
  expand(g, key, key_len);
  return 1;
}

TARGET void gw_aesgcm_seal(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE],
                           const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
                           unsigned char *out, unsigned char tag[GW_AESGCM_TAG]) {
  _mm_storeu_si128((__m128i *)tag, gcm(g, nonce, aad, aad_len, in, len, out, 1));
}

TARGET int gw_aesgcm_open(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE],
                          const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
                          const unsigned char tag[GW_AESGCM_TAG], unsigned char *out) {
  __m128i diff =
      _mm_xor_si128(gcm(g, nonce, aad, aad_len, in, len, out, 0), _mm_loadu_si128((const __m128i *)tag));
  if (_mm_testz_si128(diff, diff)) return 1; /* all 128 bits compared at once: no early exit */
  memset(out, 0, len);
  return 0;
}

#else /* not x86-64: gw_aesgcm_key refuses, so the rest is never called */

int gw_aesgcm_cpu_ok(void) { return 0; }

int gw_aesgcm_key(gw_aesgcm_t *g, const unsigned char *key, size_t key_len) {
  (void)key;
  (void)key_len;
  memset(g, 0, sizeof *g);
  return 0;
}

void gw_aesgcm_seal(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE],
                    const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
                    unsigned char *out, unsigned char tag[GW_AESGCM_TAG]) {
  (void)g, (void)nonce, (void)aad, (void)aad_len, (void)in, (void)len, (void)out, (void)tag;
}

int gw_aesgcm_open(const gw_aesgcm_t *g, const unsigned char nonce[GW_AESGCM_NONCE], const unsigned char *aad,
                   size_t aad_len, const unsigned char *in, size_t len,
                   const unsigned char tag[GW_AESGCM_TAG], unsigned char *out) {
  (void)g, (void)nonce, (void)aad, (void)aad_len, (void)in, (void)tag;
  memset(out, 0, len);
  return 0;
}

#endif

void gw_aesgcm_wipe(gw_aesgcm_t *g) { explicit_bzero(g, sizeof *g); }
