/*
 * test_aesgcm.c: src/aesgcm.c against OpenSSL's AES-GCM (EVP) and the
 * published GCM test vectors.
 *
 * What it proves: for AES-128 and AES-256, every plaintext length from 0
 * to 520 bytes and a spread of longer ones up to a full TLS record, AAD of
 * the lengths TLS and others use, random keys and nonces: the ciphertext
 * and tag are OpenSSL's byte for byte, in place or not (and nothing is
 * read or written past the data, checked by ASan); opening gives the
 * plaintext back; and a record with any one bit changed (ciphertext, tag,
 * AAD, nonce) or under another key does not open and leaves zeros, not
 * plaintext. The random inputs come from a fixed seed, so a failure
 * repeats.
 *
 * If this machine's CPU lacks AES-NI or PCLMULQDQ the code under test is
 * never used by the gateway; the tests then check only that it refuses.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/aesgcm.c"

#include <openssl/evp.h>

#include "runner.h"

/* ---- helpers ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static void fill(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    p[i] = (unsigned char)rng;
  }
}

static size_t unhex(const char *hex, unsigned char *out) {
  size_t n = strlen(hex) / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    out[i] = (unsigned char)v;
  }
  return n;
}

/* OpenSSL's answer: ciphertext into ct, tag into tag. */
static int evp_seal(const unsigned char *key, size_t key_len, const unsigned char *nonce, const unsigned char *aad,
                    size_t aad_len, const unsigned char *pt, size_t len, unsigned char *ct, unsigned char *tag) {
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int outl = 0, finl = 0;
  int ok = c && EVP_EncryptInit_ex(c, key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
           (aad_len == 0 || EVP_EncryptUpdate(c, NULL, &outl, aad, (int)aad_len) == 1) &&
           (len == 0 || EVP_EncryptUpdate(c, ct, &outl, pt, (int)len) == 1) &&
           EVP_EncryptFinal_ex(c, ct + (len ? outl : 0), &finl) == 1 &&
           EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(c);
  return ok;
}

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* One case: ours against OpenSSL, then opened back, in place and not.
 * Returns 1 if everything agreed (failures are recorded with the case). */
static int one_case(size_t key_len, size_t aad_len, size_t len) {
  enum { MAX = 17000 };
  static unsigned char pt[MAX], ct[MAX], ours[MAX], back[MAX];
  unsigned char key[32], nonce[12], aad[64], tag[16], our_tag[16];
  fill(key, key_len);
  fill(nonce, sizeof nonce);
  fill(aad, aad_len);
  fill(pt, len);
  gw_aesgcm_t g;
  if (!gw_aesgcm_key(&g, key, key_len) || !evp_seal(key, key_len, nonce, aad, aad_len, pt, len, ct, tag)) {
    CHECK(!"keying failed");
    return 0;
  }
  /* Input and output in heap blocks of exactly len bytes (and the AAD of
   * aad_len), so that ASan sees a byte read or written past either end. */
  unsigned char *in = malloc(len + !len), *out = malloc(len + !len), *a = malloc(aad_len + !aad_len);
  memcpy(in, pt, len);
  memcpy(a, aad, aad_len);
  gw_aesgcm_seal(&g, nonce, a, aad_len, in, len, out, our_tag);
  int ok = memcmp(out, ct, len) == 0 && memcmp(our_tag, tag, 16) == 0;
  ok = ok && gw_aesgcm_open(&g, nonce, a, aad_len, out, len, tag, in) && memcmp(in, pt, len) == 0;
  free(in);
  free(out);
  free(a);
  ok = ok && gw_aesgcm_open(&g, nonce, aad, aad_len, ct, len, tag, back) && memcmp(back, pt, len) == 0;
  /* in place, both ways */
  memcpy(ours, pt, len);
  gw_aesgcm_seal(&g, nonce, aad, aad_len, ours, len, ours, our_tag);
  ok = ok && memcmp(ours, ct, len) == 0 && memcmp(our_tag, tag, 16) == 0;
  ok = ok && gw_aesgcm_open(&g, nonce, aad, aad_len, ours, len, our_tag, ours) && memcmp(ours, pt, len) == 0;
  if (!ok) printf("    mismatch: key %zu bytes, aad %zu, length %zu\n", key_len * 8, aad_len, len);
  CHECK(ok);
  return ok;
}

/* ---- tests ---- */

TEST(refuses_what_it_cannot_do) {
  gw_aesgcm_t g;
  unsigned char key[32] = {0};
  CHECK(!gw_aesgcm_key(&g, key, 24)); /* AES-192: no TLS 1.3 suite uses it */
  CHECK(!gw_aesgcm_key(&g, key, 0));
  CHECK_EQ(gw_aesgcm_key(&g, key, 16), gw_aesgcm_cpu_ok());
  if (!gw_aesgcm_cpu_ok()) printf("    this CPU lacks AES-NI/PCLMULQDQ: only refusal is tested\n");
}

/* The GCM specification's test cases 1-4 (AES-128) and 13-16 (AES-256)
 * (McGrew and Viega, "The Galois/Counter Mode of Operation", appendix B). */
TEST(published_vectors) {
  if (!gw_aesgcm_cpu_ok()) return;
  static const char *p60 =
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
  struct {
    const char *key, *nonce, *aad, *pt, *ct, *tag;
  } v[] = {
      {"00000000000000000000000000000000", "000000000000000000000000", "", "", "",
       "58e2fccefa7e3061367f1d57a4e7455a"},
      {"00000000000000000000000000000000", "000000000000000000000000", "", "00000000000000000000000000000000",
       "0388dace60b6a392f328c2b971b2fe78", "ab6e47d42cec13bdf53a67b21257bddf"},
      {"feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888", "",
       "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
       "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
       "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
       "4d5c2af327cd64a62cf35abd2ba6fab4"},
      {"feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
       p60,
       "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
       "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
       "5bc94fbc3221a5db94fae95ae7121a47"},
      {"0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", "", "", "",
       "530f8afbc74536b9a963b4f1c4cb738b"},
      {"0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", "",
       "00000000000000000000000000000000", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
      {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
       "feedfacedeadbeeffeedfacedeadbeefabaddad2", p60,
       "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
       "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
       "76fc6ece0f4e1768cddf8853bb2d551b"},
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    unsigned char key[32], nonce[12], aad[32], pt[64], ct[64], tag[16], out[64], out_tag[16];
    size_t kl = unhex(v[i].key, key), al = unhex(v[i].aad, aad), pl = unhex(v[i].pt, pt);
    unhex(v[i].nonce, nonce);
    unhex(v[i].ct, ct);
    unhex(v[i].tag, tag);
    gw_aesgcm_t g;
    REQUIRE(gw_aesgcm_key(&g, key, kl));
    gw_aesgcm_seal(&g, nonce, aad, al, pt, pl, out, out_tag);
    if (memcmp(out, ct, pl) != 0 || memcmp(out_tag, tag, 16) != 0) printf("    vector %zu differs\n", i);
    CHECK(memcmp(out, ct, pl) == 0);
    CHECK(memcmp(out_tag, tag, 16) == 0);
    CHECK(gw_aesgcm_open(&g, nonce, aad, al, ct, pl, tag, out) && memcmp(out, pt, pl) == 0);
  }
}

TEST(every_short_length_matches_openssl) {
  if (!gw_aesgcm_cpu_ok()) return;
  int bad = 0;
  for (size_t len = 0; len <= 520 && bad < 5; len++) {
    bad += !one_case(16, 5, len); /* a TLS 1.3 record's AAD is its 5-byte header */
    bad += !one_case(32, 5, len);
  }
}

TEST(aad_lengths_and_long_records_match_openssl) {
  if (!gw_aesgcm_cpu_ok()) return;
  static const size_t aads[] = {0, 1, 5, 13, 15, 16, 17, 31, 32, 33, 64};
  static const size_t lens[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 1024, 4095, 4096, 16384, 16401};
  for (size_t a = 0; a < sizeof aads / sizeof aads[0]; a++)
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
      one_case(16, aads[a], lens[l]);
      one_case(32, aads[a], lens[l]);
    }
}

TEST(random_cases_match_openssl) {
  if (!gw_aesgcm_cpu_ok()) return;
  int bad = 0;
  for (int i = 0; i < 2000 && bad < 5; i++) {
    unsigned char r[4];
    fill(r, sizeof r);
    size_t len = ((size_t)r[0] << 8 | r[1]) % 2049, aad = r[2] % 40;
    bad += !one_case(r[3] & 1 ? 32 : 16, aad, len);
  }
}

TEST(any_changed_bit_does_not_open) {
  if (!gw_aesgcm_cpu_ok()) return;
  for (size_t key_len = 16; key_len <= 32; key_len += 16) {
    unsigned char key[32], other[32], nonce[12], aad[5], pt[100], ct[100], tag[16], out[100];
    fill(key, sizeof key);
    fill(nonce, sizeof nonce);
    fill(aad, sizeof aad);
    fill(pt, sizeof pt);
    gw_aesgcm_t g, h;
    REQUIRE(gw_aesgcm_key(&g, key, key_len));
    gw_aesgcm_seal(&g, nonce, aad, sizeof aad, pt, sizeof pt, ct, tag);
    int opened = 0;
    for (int bit = 0; bit < 100 * 8; bit++) {
      ct[bit / 8] ^= (unsigned char)(1 << bit % 8);
      memset(out, 0xaa, sizeof out);
      opened += gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct, tag, out);
      CHECK(all_zero(out, sizeof out));
      ct[bit / 8] ^= (unsigned char)(1 << bit % 8);
    }
    for (int bit = 0; bit < 16 * 8; bit++) {
      tag[bit / 8] ^= (unsigned char)(1 << bit % 8);
      opened += gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct, tag, out);
      tag[bit / 8] ^= (unsigned char)(1 << bit % 8);
    }
    for (int bit = 0; bit < 5 * 8; bit++) {
      aad[bit / 8] ^= (unsigned char)(1 << bit % 8);
      opened += gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct, tag, out);
      aad[bit / 8] ^= (unsigned char)(1 << bit % 8);
    }
    for (int bit = 0; bit < 12 * 8; bit++) {
      nonce[bit / 8] ^= (unsigned char)(1 << bit % 8);
      opened += gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct, tag, out);
      nonce[bit / 8] ^= (unsigned char)(1 << bit % 8);
    }
    CHECK_EQ(opened, 0);
    memcpy(other, key, sizeof other);
    other[key_len - 1] ^= 1;
    REQUIRE(gw_aesgcm_key(&h, other, key_len));
    CHECK(!gw_aesgcm_open(&h, nonce, aad, sizeof aad, ct, sizeof ct, tag, out));
    /* a shorter ciphertext (a record cut) does not open either */
    CHECK(!gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct - 1, tag, out));
    /* and the untouched record still does */
    CHECK(gw_aesgcm_open(&g, nonce, aad, sizeof aad, ct, sizeof ct, tag, out) && memcmp(out, pt, sizeof pt) == 0);
  }
}

TEST(wipe_leaves_no_key) {
  gw_aesgcm_t g;
  unsigned char key[16];
  fill(key, sizeof key);
  gw_aesgcm_key(&g, key, sizeof key);
  gw_aesgcm_wipe(&g);
  CHECK(all_zero((const unsigned char *)&g, sizeof g));
}

TEST_LIST(T(refuses_what_it_cannot_do), T(published_vectors), T(every_short_length_matches_openssl),
          T(aad_lengths_and_long_records_match_openssl), T(random_cases_match_openssl),
          T(any_changed_bit_does_not_open), T(wipe_leaves_no_key))
