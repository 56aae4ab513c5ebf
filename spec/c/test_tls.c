/*
 * test_tls.c: src/tls.c without sockets.
 *
 * A client SSL on memory BIOs talks to a gw_tls_t by moving bytes by hand:
 * what the client's write BIO holds goes to gw_tls_read, and what
 * gw_tls_pending holds goes to the client's read BIO. Certificates are made
 * with the openssl CLI into a temporary folder (EC keys, self-signed, with a
 * subjectAltName), once per test program.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/buf.c"
#include "../../src/tls.c"
#include "../../src/aesgcm.c"
#include "../../src/tls_record.c"
#include "../../src/tls_tickets.c"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "runner.h"
#include "tls_certs.h"

static gw_tls_ctx_t *server_ctx(void) {
  char a[128], ak[128], w[128], wk[128];
  snprintf(a, sizeof a, "%s/a.pem", dir);
  snprintf(ak, sizeof ak, "%s/a.key", dir);
  snprintf(w, sizeof w, "%s/w.pem", dir);
  snprintf(wk, sizeof wk, "%s/w.key", dir);
  gw_tls_cert_t certs[2] = {{a, ak}, {w, wk}};
  char err[512] = "";
  gw_tls_ctx_t *ctx = gw_tls_ctx_new(certs, 2, err, sizeof err);
  if (!ctx) fprintf(stderr, "gw_tls_ctx_new: %s\n", err);
  return ctx;
}

typedef struct {
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *in, *out; /* in: from the server; out: to the server */
} client_t;

static void client_init(client_t *c, const char *sni, const char *alpn_wire, int max_version) {
  c->ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
  if (max_version) {
    SSL_CTX_set_min_proto_version(c->ctx, max_version);
    SSL_CTX_set_max_proto_version(c->ctx, max_version);
    SSL_CTX_set_security_level(c->ctx, 0);
    SSL_CTX_set_cipher_list(c->ctx, "ALL:@SECLEVEL=0");
  }
  c->ssl = SSL_new(c->ctx);
  c->in = BIO_new(BIO_s_mem());
  c->out = BIO_new(BIO_s_mem());
  SSL_set_bio(c->ssl, c->in, c->out);
  SSL_set_connect_state(c->ssl);
  if (sni) SSL_set_tlsext_host_name(c->ssl, sni);
  if (alpn_wire) SSL_set_alpn_protos(c->ssl, (const unsigned char *)alpn_wire, (unsigned)strlen(alpn_wire));
}

static void client_free(client_t *c) {
  SSL_free(c->ssl);
  SSL_CTX_free(c->ctx);
}

/* Moves bytes both ways until neither side has anything to say. Plaintext
 * the server decrypts is appended to `plain`; returns the last gw_tls_read
 * result that was not 0 (or 0). */
static ssize_t pump(client_t *c, gw_tls_t *t, gw_buf_t *plain) {
  ssize_t last = 0;
  for (int round = 0; round < 20; round++) {
    if (!SSL_is_init_finished(c->ssl)) SSL_do_handshake(c->ssl);
    char *p;
    long n = BIO_get_mem_data(c->out, &p);
    int moved = 0;
    if (n > 0) {
      ssize_t rc = gw_tls_read(t, p, (size_t)n, plain);
      if (rc != 0) last = rc;
      (void)BIO_reset(c->out);
      moved = 1;
    }
    const char *q;
    size_t m = gw_tls_pending(t, &q);
    if (m > 0) {
      BIO_write(c->in, q, (int)m);
      gw_tls_drained(t);
      moved = 1;
    }
    if (!moved) break;
    if (last < 0) break;
  }
  return last;
}

static char *peer_cn(client_t *c, char *buf, size_t len) {
  X509 *x = SSL_get1_peer_certificate(c->ssl);
  buf[0] = '\0';
  if (x) {
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, (int)len);
    X509_free(x);
  }
  return buf;
}

TEST(wildcard_covers_one_label) {
  CHECK(wildcard_match("*.w.test", "a.w.test"));
  CHECK(wildcard_match("*.w.test", "A.W.TEST"));
  CHECK(!wildcard_match("*.w.test", "w.test"));
  CHECK(!wildcard_match("*.w.test", "a.b.w.test"));
  CHECK(!wildcard_match("*.w.test", ".w.test"));
  CHECK(!wildcard_match("a.w.test", "a.w.test")); /* not a wildcard */
}

TEST(alpn_accepts_only_http11) {
  const unsigned char *out = NULL;
  unsigned char outlen = 0;
  static const unsigned char both[] = "\x02h2\x08http/1.1";
  CHECK_EQ(on_alpn(NULL, &out, &outlen, both, sizeof both - 1, NULL), SSL_TLSEXT_ERR_OK);
  CHECK_EQ(outlen, 8);
  CHECK(out && memcmp(out, "http/1.1", 8) == 0);
  static const unsigned char h2[] = "\x02h2";
  CHECK_EQ(on_alpn(NULL, &out, &outlen, h2, sizeof h2 - 1, NULL), SSL_TLSEXT_ERR_ALERT_FATAL);
  /* A length running past the end is not read past the end. */
  static const unsigned char bad[] = "\x09http/1.1";
  CHECK_EQ(on_alpn(NULL, &out, &outlen, bad, sizeof bad - 1, NULL), SSL_TLSEXT_ERR_ALERT_FATAL);
}

TEST(handshake_and_data_both_ways) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  gw_tls_t *t = gw_tls_new(ctx);
  client_t c;
  client_init(&c, "a.test", "\x08http/1.1", 0);
  gw_buf_t plain;
  gw_buf_init(&plain);
  CHECK(pump(&c, t, &plain) >= 0);
  REQUIRE(gw_tls_ready(t));
  REQUIRE(SSL_is_init_finished(c.ssl));
  CHECK_EQ(SSL_version(c.ssl), TLS1_3_VERSION);
  const unsigned char *alpn;
  unsigned alen;
  SSL_get0_alpn_selected(c.ssl, &alpn, &alen);
  CHECK(alen == 8 && memcmp(alpn, "http/1.1", 8) == 0);
  /* Client to server: one write, read back as plaintext. */
  const char req[] = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  SSL_write(c.ssl, req, (int)sizeof req - 1);
  CHECK_EQ(pump(&c, t, &plain), (ssize_t)(sizeof req - 1));
  CHECK(plain.len == sizeof req - 1 && memcmp(plain.base, req, plain.len) == 0);
  /* Server to client: 100 kB in one gw_tls_write, several records. */
  size_t big = 100000;
  char *body = malloc(big);
  memset(body, 'x', big);
  CHECK_EQ(gw_tls_write(t, body, big), 0);
  pump(&c, t, &plain);
  size_t got = 0;
  char buf[16384];
  int n;
  while ((n = SSL_read(c.ssl, buf, sizeof buf)) > 0) got += (size_t)n;
  CHECK_EQ(got, big);
  /* A head and a short body: one record (TLS 1.3 adds 22 bytes to it). */
  uv_buf_t two[2] = {uv_buf_init("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 38),
                     uv_buf_init("hello", 5)};
  CHECK_EQ(gw_tls_writev(t, two, 2), 0);
  const char *rec;
  CHECK_EQ(gw_tls_pending(t, &rec), (size_t)(38 + 5 + 22));
  pump(&c, t, &plain);
  char small[64];
  CHECK_EQ(SSL_read(c.ssl, small, sizeof small), 43);
  CHECK(memcmp(small + 38, "hello", 5) == 0);
  /* close_notify from the client: EOF. */
  SSL_shutdown(c.ssl);
  CHECK_EQ(pump(&c, t, &plain), (ssize_t)UV_EOF);
  free(body);
  gw_buf_free(&plain);
  client_free(&c);
  gw_tls_free(t);
  gw_tls_ctx_free(ctx);
}

TEST(sni_picks_certificate) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  const char *cases[][2] = {{"a.test", "a.test"},     {"x.w.test", "*.w.test"}, {"X.W.TEST", "*.w.test"},
                            {"y.x.w.test", "a.test"}, {"other", "a.test"},      {NULL, "a.test"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    gw_tls_t *t = gw_tls_new(ctx);
    client_t c;
    client_init(&c, cases[i][0], NULL, 0);
    gw_buf_t plain;
    gw_buf_init(&plain);
    pump(&c, t, &plain);
    char cn[256];
    CHECK(gw_tls_ready(t));
    int right = strcmp(peer_cn(&c, cn, sizeof cn), cases[i][1]) == 0;
    if (!right)
      fprintf(stderr, "  SNI %s: got %s, want %s\n", cases[i][0] ? cases[i][0] : "(none)", cn, cases[i][1]);
    CHECK(right);
    gw_buf_free(&plain);
    client_free(&c);
    gw_tls_free(t);
  }
  gw_tls_ctx_free(ctx);
}

TEST(refusals_fail_the_handshake) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  /* TLS 1.1 (the client allows nothing else), ALPN h2 only, plain HTTP. */
  client_t c;
  gw_buf_t plain;
  gw_buf_init(&plain);
  gw_tls_t *t = gw_tls_new(ctx);
  client_init(&c, "a.test", NULL, TLS1_1_VERSION);
  CHECK_EQ(pump(&c, t, &plain), (ssize_t)GW_ETLS);
  CHECK(!gw_tls_ready(t));
  CHECK_EQ(gw_tls_write(t, "x", 1), GW_ETLS);
  client_free(&c);
  gw_tls_free(t);

  t = gw_tls_new(ctx);
  client_init(&c, "a.test", "\x02h2", 0);
  CHECK_EQ(pump(&c, t, &plain), (ssize_t)GW_ETLS);
  client_free(&c);
  gw_tls_free(t);

  t = gw_tls_new(ctx);
  const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  CHECK_EQ(gw_tls_read(t, get, sizeof get - 1, &plain), (ssize_t)GW_ETLS);
  CHECK_EQ(plain.len, 0);
  gw_tls_free(t);
  gw_buf_free(&plain);
  gw_tls_ctx_free(ctx);
}

TEST(bad_files_name_the_file) {
  char err[512];
  gw_tls_cert_t c = {"/nonexistent/x.pem", "/nonexistent/x.key"};
  CHECK(gw_tls_ctx_new(&c, 1, err, sizeof err) == NULL);
  CHECK(strstr(err, "/nonexistent/x.pem") != NULL);
  char a[128], wk[128];
  snprintf(a, sizeof a, "%s/a.pem", dir);
  snprintf(wk, sizeof wk, "%s/w.key", dir);
  gw_tls_cert_t mismatch = {a, wk};
  CHECK(gw_tls_ctx_new(&mismatch, 1, err, sizeof err) == NULL);
  CHECK(strstr(err, "w.key") != NULL);
}

/* A TLS 1.3 handshake with the client limited to `suites` (NULL: any),
 * or TLS 1.2 when `tls12`; the client sends `req` right after its
 * Finished. Returns the server state (plaintext in *plain). */
static gw_tls_t *handshake(gw_tls_ctx_t *ctx, client_t *c, const char *suites, int tls12, gw_buf_t *plain) {
  gw_tls_t *t = gw_tls_new(ctx);
  client_init(c, "a.test", NULL, tls12 ? TLS1_2_VERSION : 0);
  if (suites) SSL_set_ciphersuites(c->ssl, suites);
  pump(c, t, plain);
  return t;
}

/* Each suite (and TLS 1.2), with short records (which aesgcm.c seals and
 * opens for the AES suites when `own_aes` is set) and long ones (always
 * OpenSSL's AEAD), both ways, with key updates in between. */
static void records_both_ways(int own_aes) {
  gw_tls_rec_own_aesgcm = own_aes;
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  const char *suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                          NULL};
  static char big[3000], got[3000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
  for (int i = 0; i < 4; i++) {
    client_t c;
    gw_buf_t plain;
    gw_buf_init(&plain);
    int tls12 = suites[i] == NULL;
    gw_tls_t *t = handshake(ctx, &c, suites[i], tls12, &plain);
    REQUIRE(gw_tls_ready(t));
    CHECK_EQ(t->rec != NULL, !tls12);
    if (t->rec) {
      int expect_own = own_aes && i < 2 && gw_aesgcm_cpu_ok();
      CHECK_EQ(t->rec->rx.has_own, expect_own);
      CHECK_EQ(t->rec->tx.has_own, expect_own);
    }
    for (int round = 0; round < 3; round++) {
      for (size_t n = 4; n <= sizeof big; n *= 25) { /* 4, then 100, then 2,500 bytes */
        plain.len = 0;
        CHECK_EQ(SSL_write(c.ssl, big, (int)n), (int)n);
        CHECK_EQ(pump(&c, t, &plain), (ssize_t)n);
        CHECK(plain.len == n && memcmp(plain.base, big, n) == 0);
        CHECK_EQ(gw_tls_write(t, big, n), 0);
        pump(&c, t, &plain);
        size_t have = 0;
        int r;
        while (have < n && (r = SSL_read(c.ssl, got + have, (int)(sizeof got - have))) > 0) have += (size_t)r;
        CHECK(have == n && memcmp(got, big, n) == 0);
      }
      if (!tls12) CHECK_EQ(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
    }
    gw_buf_free(&plain);
    client_free(&c);
    gw_tls_free(t);
  }
  gw_tls_ctx_free(ctx);
  gw_tls_rec_own_aesgcm = 1;
}

TEST(tls13_records_are_ours_tls12_stays_with_openssl) { records_both_ways(1); }

/* The same without aesgcm.c, as on a CPU without AES-NI. */
TEST(tls13_records_with_openssl_aead_alone) { records_both_ways(0); }

/* Every suite passes its start-up checks on this machine; aesgcm.c is used
 * exactly where it applies; a failed suite is reported by name with what
 * serves it instead (worker.c logs it), each failed one; a suite OpenSSL
 * itself lacks is not reported. Each test runs in a child process, so the
 * suites changed here stay changed only for this test. */
TEST(self_check_passes_and_names_a_failed_suite) {
  char why[600];
  for (int round = 0; round < 2; round++) {
    /* The second round looks each suite up again, as at first use. */
    for (size_t i = 0; round == 1 && i < sizeof suites / sizeof suites[0]; i++) suites[i].state = 0;
    CHECK_EQ(gw_tls_rec_self_check(why, sizeof why), 0);
    CHECK_EQ(strcmp(why, ""), 0);
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
      CHECK_EQ(suites[i].state, 1);
      CHECK_EQ(suites[i].own_aes, own_aes_applies(&suites[i]));
    }
  }
  CHECK_EQ(suites[0].own_aes, gw_aesgcm_cpu_ok());
  CHECK_EQ(suites[2].own_aes, 0); /* ChaCha20-Poly1305 */
  /* aesgcm.c refused for AES-256-GCM (where it applies: AES-NI, no FIPS),
   * and ChaCha20-Poly1305 failing its check. */
  int aes_applies = own_aes_applies(&suites[1]);
  suites[1].own_aes = 0;
  suites[2].state = -1;
  CHECK_EQ(gw_tls_rec_self_check(why, sizeof why), -1);
  if (aes_applies) {
    CHECK_MSG(strstr(why, "AES-256-GCM aesgcm.c did not match") != NULL, "why: %s", why);
    CHECK_MSG(strstr(why, "; ChaCha20-Poly1305 failed its start-up check") != NULL, "why: %s", why);
  } else {
    CHECK_MSG(strstr(why, "ChaCha20-Poly1305 failed its start-up check") == why, "why: %s", why);
  }
  CHECK(strstr(why, "OpenSSL's record layer") != NULL);
  EVP_CIPHER *chacha = suites[2].cipher;
  suites[2].cipher = NULL; /* OpenSSL without ChaCha20: nothing to say of it */
  CHECK_EQ(gw_tls_rec_self_check(why, sizeof why), aes_applies ? -1 : 0);
  CHECK_MSG(strstr(why, "ChaCha20") == NULL, "why: %s", why);
  suites[1].own_aes = 1;
  CHECK_EQ(gw_tls_rec_self_check(why, sizeof why), 0);
  suites[2].cipher = chacha;
  char small[8];
  CHECK_EQ(gw_tls_rec_self_check(small, sizeof small), -1);
  CHECK_EQ(strlen(small), sizeof small - 1);
}

TEST(own_key_update_before_the_sequence_limit) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  client_t c;
  gw_buf_t plain;
  gw_buf_init(&plain);
  gw_tls_t *t = handshake(ctx, &c, NULL, 0, &plain);
  REQUIRE(t->rec != NULL);
  /* OpenSSL sealed one session ticket with the server's application key:
   * our first record is number 1. */
  CHECK_EQ(t->rec->tx.seq, (uint64_t)1);
  gw_tls_rec_rekey_after = 3;
  /* 10 records; a KeyUpdate (27 bytes: 5 + 5 + 1 + 16) goes before each
   * record whose sequence number reached 3, and numbering starts again. */
  size_t expect = 0;
  uint64_t seq = t->rec->tx.seq;
  for (int i = 0; i < 10; i++) {
    if (seq >= 3) {
      expect += 27;
      seq = 0;
    }
    expect += 8 + 22;
    seq++;
    CHECK_EQ(gw_tls_write(t, "abcdefgh", 8), 0);
  }
  const char *p;
  CHECK_EQ(gw_tls_pending(t, &p), expect);
  CHECK(expect > 300 + 2 * 27);
  pump(&c, t, &plain);
  char buf[128];
  size_t got = 0;
  int r;
  while ((r = SSL_read(c.ssl, buf + got, (int)(sizeof buf - got))) > 0) got += (size_t)r;
  CHECK_EQ(got, (size_t)80);
  CHECK(memcmp(buf, "abcdefghabcdefgh", 16) == 0 && memcmp(buf + 72, "abcdefgh", 8) == 0);
  gw_tls_rec_rekey_after = (uint64_t)1 << 24;
  gw_buf_free(&plain);
  client_free(&c);
  gw_tls_free(t);
  gw_tls_ctx_free(ctx);
}

TEST(a_tampered_record_fails_with_a_reason_and_an_alert) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  client_t c;
  gw_buf_t plain;
  gw_buf_init(&plain);
  gw_tls_t *t = handshake(ctx, &c, NULL, 0, &plain);
  REQUIRE(t->rec != NULL);
  SSL_write(c.ssl, "hello", 5);
  char *p;
  long n = BIO_get_mem_data(c.out, &p);
  REQUIRE(n > 10);
  p[n - 3] ^= 0x40; /* in the tag */
  CHECK_EQ(gw_tls_read(t, p, (size_t)n, &plain), (ssize_t)GW_ETLS);
  CHECK_EQ(plain.len, 0);
  CHECK(strstr(gw_tls_error(t), "bad record mac") != NULL);
  const char *alert;
  size_t m = gw_tls_pending(t, &alert);
  CHECK_EQ(m, (size_t)(5 + 2 + 1 + 16));
  BIO_reset(c.out);
  BIO_write(c.in, alert, (int)m);
  char buf[8];
  CHECK(SSL_read(c.ssl, buf, sizeof buf) <= 0);
  CHECK_EQ(SSL_get_error(c.ssl, -1), SSL_ERROR_SSL);
  CHECK_EQ(gw_tls_write(t, "x", 1), GW_ETLS);
  gw_buf_free(&plain);
  client_free(&c);
  gw_tls_free(t);
  gw_tls_ctx_free(ctx);
}

TEST(records_decrypted_in_the_buffer_they_were_read_into) {
  gw_tls_ctx_t *ctx = server_ctx();
  REQUIRE(ctx != NULL);
  client_t c;
  gw_buf_t plain;
  gw_buf_init(&plain);
  gw_tls_t *t = handshake(ctx, &c, NULL, 0, &plain);
  REQUIRE(t->rec != NULL);
  /* As the connection does: the ciphertext is read into plain's spare room,
   * right after what it holds; some records end mid-way and continue in
   * the next read. */
  plain.len = 0;
  gw_buf_append(&plain, "kept", 4);
  unsigned char msg[3000];
  for (size_t i = 0; i < sizeof msg; i++) msg[i] = (unsigned char)(i * 7);
  for (int i = 0; i < 10; i++) SSL_write(c.ssl, msg + i * 300, 300);
  char *p;
  long n = BIO_get_mem_data(c.out, &p);
  size_t cuts[] = {0, 100, 1000, 1001, 2000, (size_t)n};
  for (int i = 0; i < 5; i++) {
    size_t len = cuts[i + 1] - cuts[i];
    gw_buf_reserve(&plain, len);
    memcpy(plain.base + plain.len, p + cuts[i], len);
    CHECK(gw_tls_read(t, plain.base + plain.len, len, &plain) >= 0);
  }
  CHECK_EQ(plain.len, 4 + sizeof msg);
  CHECK(memcmp(plain.base, "kept", 4) == 0 && memcmp(plain.base + 4, msg, sizeof msg) == 0);
  gw_buf_free(&plain);
  client_free(&c);
  gw_tls_free(t);
  gw_tls_ctx_free(ctx);
}

/* tls_record.c's HKDF-Expand-Label against OpenSSL's TLS13-KDF, for each
 * suite's hash and every label it uses. */
TEST(expand_label_matches_openssl_tls13_kdf) {
  const uint16_t codes[] = {0x1301, 0x1302, 0x1303};
  const char *labels[] = {"key", "iv", "traffic upd"};
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS13-KDF", NULL);
  REQUIRE(kdf != NULL);
  for (int i = 0; i < 3; i++) {
    const suite_t *s = usable_suite(codes[i]);
    REQUIRE(s != NULL);
    unsigned char secret[48];
    RAND_bytes(secret, sizeof secret);
    for (int j = 0; j < 3; j++) {
      size_t n = j == 0 ? s->key_len : j == 1 ? 12 : s->hash_len;
      unsigned char ours[48], theirs[48];
      CHECK(expand_label(s, secret, labels[j], ours, n));
      int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
      OSSL_PARAM p[] = {
          OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
          OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)s->md, 0),
          OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, secret, s->hash_len),
          OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, "tls13 ", 6),
          OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (char *)labels[j], strlen(labels[j])),
          OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, "", 0),
          OSSL_PARAM_construct_end(),
      };
      EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
      CHECK(k && EVP_KDF_derive(k, theirs, n, p) == 1);
      EVP_KDF_CTX_free(k);
      CHECK(memcmp(ours, theirs, n) == 0);
    }
  }
  EVP_KDF_free(kdf);
}

/* Once, in the parent before main (tls_certs.h). */
__attribute__((constructor)) static void setup(void) {
  certs_dir("/tmp/gwtest-tlsc-XXXXXX");
  make_cert("a", "a.test");
  make_cert("w", "*.w.test");
}

TEST_LIST(T(wildcard_covers_one_label), T(alpn_accepts_only_http11), T(handshake_and_data_both_ways),
          T(sni_picks_certificate), T(refusals_fail_the_handshake), T(bad_files_name_the_file),
          T(tls13_records_are_ours_tls12_stays_with_openssl), T(tls13_records_with_openssl_aead_alone),
          T(self_check_passes_and_names_a_failed_suite), T(own_key_update_before_the_sequence_limit),
          T(a_tampered_record_fails_with_a_reason_and_an_alert),
          T(records_decrypted_in_the_buffer_they_were_read_into), T(expand_label_matches_openssl_tls13_kdf))
