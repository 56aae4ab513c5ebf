/*
 * test_tls_records.c: the record layer of src/tls.c as the wire sees it,
 * after the handshake, mostly TLS 1.3.
 *
 * What it proves: whatever decrypts the client's records and encrypts the
 * server's (src/tls_record.c for TLS 1.3 server connections, OpenSSL's
 * SSL_read/SSL_write for TLS 1.2) gives exactly the plaintext
 * the records carry however the bytes arrive (one at a time, many records in
 * one read, padded, empty, of the largest size, in place in the read
 * buffer), follows key updates both ways, refuses what was tampered with,
 * replayed, reordered, oversized or unexpected with GW_ETLS and the alert
 * RFC 8446 asks for, and treats close_notify as gw_tls_read documents. The
 * tests were written against OpenSSL 3.0's record layer before tls_record.c
 * existed, and pin its behaviour, alerts included, which ours keeps.
 *
 * How: as in test_tls.c, a client SSL on memory BIOs talks to a gw_tls_t and
 * the test moves the bytes by hand, so it can split, join, flip, repeat or
 * drop them. The client's OpenSSL checks everything the server sends, and its
 * message callback counts what it received (KeyUpdate, NewSessionTicket,
 * alerts). Records an OpenSSL client never sends (an empty one, a KeyUpdate
 * cut across two records, a malformed inner plaintext, data after
 * close_notify ...) are sealed here with the client's application traffic
 * secret, which the key log callback hands over (RFC 8446 5.2, 5.3, 7.1 to
 * 7.3): the server sees exactly what a real peer could send. The client then
 * writes no record of its own (the sequence numbers would clash). One
 * ECDSA P-256 certificate for a.test, made with the openssl CLI once per
 * program into a temporary folder.
 *
 * Not covered, as nothing can bring it about: 0-RTT data (the listeners
 * never accept early data, so no ticket allows it and an OpenSSL client
 * sends none), post-handshake client authentication (never requested), a
 * KeyUpdate started by the server (nothing in tls.h asks for one), and the
 * 2^64 sequence-number limit.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/buf.c"
#include "../../src/tls.c"
#include "../../src/aesgcm.c"
#include "../../src/tls_record.c"
#include "../../src/tls_tickets.c"

#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "runner.h"
#include "tls_certs.h"

/* ---- certificates and contexts ---- */

/* A listener's context for a.test; tickets unless `no_resumption`. */
static gw_tls_ctx_t *server_ctx(int no_resumption) {
  char a[128], ak[128];
  snprintf(a, sizeof a, "%s/a.pem", dir);
  snprintf(ak, sizeof ak, "%s/a.key", dir);
  gw_tls_cert_t cert = {a, ak};
  gw_tls_server_t conf = {&cert, 1, NULL, GW_TLS_VERIFY_OFF, "127.0.0.1:8443", no_resumption};
  char err[512] = "";
  gw_tls_ctx_t *ctx = gw_tls_ctx_make(&conf, err, sizeof err);
  if (!ctx) fprintf(stderr, "gw_tls_ctx_make: %s\n", err);
  return ctx;
}

/* ---- the client ---- */

typedef struct {
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *in, *out;            /* in: from the server; out: to the server */
  int key_updates;          /* KeyUpdate messages received from the server */
  int key_update_requests;  /* ... that asked for one back (must stay 0) */
  int tickets;              /* NewSessionTicket messages received */
  int alert;                /* the last alert received: level << 8 | description; -1: none */
  unsigned char secret[48]; /* CLIENT_TRAFFIC_SECRET_0, from the key log */
  size_t secret_len;
} client_t;

/* Counts the messages the client receives (write_p 0). */
static void on_msg(int write_p, int version, int type, const void *buf, size_t len, SSL *ssl, void *arg) {
  (void)version;
  (void)ssl;
  client_t *c = arg;
  const unsigned char *p = buf;
  if (write_p) return;
  if (type == SSL3_RT_ALERT && len == 2) c->alert = p[0] << 8 | p[1];
  if (type != SSL3_RT_HANDSHAKE || len < 4) return;
  if (p[0] == SSL3_MT_KEY_UPDATE) {
    c->key_updates++;
    if (len != 5 || p[4] != 0) c->key_update_requests++;
  }
  if (p[0] == SSL3_MT_NEWSESSION_TICKET) c->tickets++;
}

static int t_unhex(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>": keeps the secret. */
static void client_keylog(const SSL *ssl, const char *line) {
  static const char label[] = "CLIENT_TRAFFIC_SECRET_0 ";
  client_t *c = SSL_get_app_data(ssl);
  if (strncmp(line, label, sizeof label - 1) != 0) return;
  const char *hexs = strchr(line + sizeof label - 1, ' ');
  if (!hexs) return;
  hexs++;
  size_t n = 0;
  while (n < sizeof c->secret && t_unhex(hexs[2 * n]) >= 0 && t_unhex(hexs[2 * n + 1]) >= 0) {
    c->secret[n] = (unsigned char)(t_unhex(hexs[2 * n]) << 4 | t_unhex(hexs[2 * n + 1]));
    n++;
  }
  c->secret_len = n;
}

/* A client for exactly `version` (TLS1_3_VERSION or TLS1_2_VERSION), no
 * certificate check, SNI a.test, ALPN http/1.1. Tests adjust c->ssl
 * (ciphers, padding, a session) before the handshake. */
static void client_init(client_t *c, int version) {
  memset(c, 0, sizeof *c);
  c->alert = -1;
  c->ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_min_proto_version(c->ctx, version);
  SSL_CTX_set_max_proto_version(c->ctx, version);
  SSL_CTX_set_keylog_callback(c->ctx, client_keylog);
  c->ssl = SSL_new(c->ctx);
  SSL_set_app_data(c->ssl, c);
  SSL_set_msg_callback(c->ssl, on_msg);
  SSL_set_msg_callback_arg(c->ssl, c);
  c->in = BIO_new(BIO_s_mem());
  c->out = BIO_new(BIO_s_mem());
  SSL_set_bio(c->ssl, c->in, c->out);
  SSL_set_connect_state(c->ssl);
  SSL_set_tlsext_host_name(c->ssl, "a.test");
  SSL_set_alpn_protos(c->ssl, (const unsigned char *)"\x08http/1.1", 9);
}

static void client_free(client_t *c) {
  SSL_free(c->ssl);
  SSL_CTX_free(c->ctx);
}

/* ---- one connection: the server state, the client, the plaintext ---- */

typedef struct {
  gw_tls_ctx_t *ctx;
  gw_tls_t *t;
  client_t c;
  gw_buf_t plain; /* what the server decrypted */
} conn_t;

/* A server state and a client (not yet connected); `ctx` is borrowed. */
static void conn_open(conn_t *k, gw_tls_ctx_t *ctx, int version) {
  k->ctx = ctx;
  k->t = gw_tls_new(ctx);
  client_init(&k->c, version);
  gw_buf_init(&k->plain);
}

static void conn_close(conn_t *k) {
  gw_tls_free(k->t);
  client_free(&k->c);
  gw_buf_free(&k->plain);
}

/* What the client wrote so far (a malloc'd copy; the BIO is emptied). */
static unsigned char *client_take(client_t *c, size_t *n) {
  char *p;
  long len = BIO_get_mem_data(c->out, &p);
  *n = len > 0 ? (size_t)len : 0;
  unsigned char *copy = malloc(*n ? *n : 1);
  if (*n) memcpy(copy, p, *n);
  (void)BIO_reset(c->out);
  return copy;
}

static ssize_t feed(conn_t *k, const void *p, size_t n) { return gw_tls_read(k->t, p, n, &k->plain); }

/* Feeds everything the client wrote in one gw_tls_read. */
static ssize_t feed_all(conn_t *k) {
  size_t n;
  unsigned char *p = client_take(&k->c, &n);
  ssize_t rc = feed(k, p, n);
  free(p);
  return rc;
}

/* Moves what the server has for the socket to the client; returns its length. */
static size_t to_client(conn_t *k) {
  const char *p;
  size_t n = gw_tls_pending(k->t, &p);
  if (n > 0) BIO_write(k->c.in, p, (int)n);
  gw_tls_drained(k->t);
  return n;
}

/* Runs the handshake to its end (both sides ready). */
static void handshake(conn_t *k) {
  for (int round = 0; round < 10 && !(gw_tls_ready(k->t) && SSL_is_init_finished(k->c.ssl)); round++) {
    if (!SSL_is_init_finished(k->c.ssl)) SSL_do_handshake(k->c.ssl);
    REQUIRE(feed_all(k) >= 0);
    to_client(k);
  }
  REQUIRE(gw_tls_ready(k->t));
  REQUIRE(SSL_is_init_finished(k->c.ssl));
}

/* A TLS 1.3 connection, handshake done, `ctx` borrowed. */
static void conn_ready(conn_t *k, gw_tls_ctx_t *ctx) {
  conn_open(k, ctx, TLS1_3_VERSION);
  handshake(k);
  REQUIRE_EQ(SSL_version(k->c.ssl), TLS1_3_VERSION);
}

static void client_write(client_t *c, const void *p, size_t n) {
  size_t done = 0;
  REQUIRE(SSL_write_ex(c->ssl, p, n, &done) == 1 && done == n);
}

/* Reads whatever the client can decrypt into out (at most cap bytes);
 * returns the count. *err (if given) gets the last SSL_get_error. */
static size_t client_read(client_t *c, unsigned char *out, size_t cap, int *err) {
  size_t got = 0, n = 0;
  int e = SSL_ERROR_NONE;
  while (got < cap) {
    if (SSL_read_ex(c->ssl, out + got, cap - got, &n) != 1) {
      e = SSL_get_error(c->ssl, 0);
      break;
    }
    got += n;
  }
  if (err) *err = e;
  ERR_clear_error();
  return got;
}

/* Lets the client process what it received that is not data (tickets,
 * KeyUpdate, alerts), without taking any data. */
static void client_poll(client_t *c) {
  unsigned char b;
  size_t n;
  if (SSL_peek_ex(c->ssl, &b, 1, &n) != 1) ERR_clear_error();
}

/* Hands the server's pending bytes to the client and checks that the
 * client decrypts exactly `want` (n bytes) and nothing more. */
static void client_expects(conn_t *k, const unsigned char *want, size_t n) {
  to_client(k);
  unsigned char *got = malloc(n + 1);
  int err = 0;
  size_t m = client_read(&k->c, got, n + 1, &err);
  CHECK_EQ(m, n);
  CHECK(m != n || memcmp(got, want, n) == 0);
  CHECK_EQ(err, SSL_ERROR_WANT_READ);
  free(got);
}

/* The server's plaintext so far is exactly `want`; then forgets it. */
static void server_got(conn_t *k, const unsigned char *want, size_t n) {
  CHECK_EQ(k->plain.len, n);
  CHECK(k->plain.len != n || memcmp(k->plain.base, want, n) == 0);
  k->plain.len = 0;
}

static unsigned char *rnd(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  if (n) REQUIRE(RAND_bytes(p, (int)n) == 1);
  return p;
}

/* A size in [lo, hi]. */
static size_t rnd_size(size_t lo, size_t hi) {
  uint32_t r;
  REQUIRE(RAND_bytes((unsigned char *)&r, sizeof r) == 1);
  return lo + r % (hi - lo + 1);
}

/* ---- records on the wire ---- */

typedef struct {
  size_t n;         /* records */
  size_t len[2048]; /* each one's length field */
  unsigned char type[2048];
} records_t;

/* Splits p[0..n) into records; 0 if it is not a whole number of them. */
static int records(const unsigned char *p, size_t n, records_t *r) {
  r->n = 0;
  size_t off = 0;
  while (off + 5 <= n && r->n < 2048) {
    size_t len = (size_t)p[off + 3] << 8 | p[off + 4];
    if (off + 5 + len > n) return 0;
    r->type[r->n] = p[off];
    r->len[r->n++] = len;
    off += 5 + len;
  }
  return off == n;
}

/* The records the server has pending. */
static int pending_records(conn_t *k, records_t *r) {
  const char *p;
  size_t n = gw_tls_pending(k->t, &p);
  return records((const unsigned char *)p, n, r);
}

/* ---- sealing records with the client's keys (RFC 8446 7.1, 7.3, 5.2) ---- */

typedef struct {
  const EVP_MD *md;
  const EVP_CIPHER *aead;
  unsigned char secret[48];
  size_t hlen;
  unsigned char key[32];
  size_t klen;
  unsigned char iv[12];
  uint64_t seq;
} sealer_t;

/* HKDF-Expand-Label(secret, label, "", len), len <= the hash's size. */
static void t_expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen, const char *label,
                         unsigned char *out, size_t len) {
  unsigned char info[64];
  size_t n = 0, ll = strlen(label);
  info[n++] = (unsigned char)(len >> 8);
  info[n++] = (unsigned char)len;
  info[n++] = (unsigned char)(6 + ll);
  memcpy(info + n, "tls13 ", 6);
  n += 6;
  memcpy(info + n, label, ll);
  n += ll;
  info[n++] = 0; /* empty context */
  info[n++] = 1; /* HKDF-Expand's first block counter */
  unsigned char t[EVP_MAX_MD_SIZE];
  unsigned tl = 0;
  REQUIRE(HMAC(md, secret, (int)slen, info, n, t, &tl) != NULL && tl >= len);
  memcpy(out, t, len);
}

static void sealer_keys(sealer_t *s) {
  t_expand_label(s->md, s->secret, s->hlen, "key", s->key, s->klen);
  t_expand_label(s->md, s->secret, s->hlen, "iv", s->iv, sizeof s->iv);
  s->seq = 0;
}

/* The client's first application traffic keys, for its cipher suite. The
 * client must not have written any application record. */
static void sealer_init(sealer_t *s, const client_t *c) {
  switch (SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(c->ssl))) {
  case 0x1301: s->md = EVP_sha256(), s->aead = EVP_aes_128_gcm(), s->klen = 16; break;
  case 0x1302: s->md = EVP_sha384(), s->aead = EVP_aes_256_gcm(), s->klen = 32; break;
  case 0x1303: s->md = EVP_sha256(), s->aead = EVP_chacha20_poly1305(), s->klen = 32; break;
  default: REQUIRE(!"a TLS 1.3 suite");
  }
  s->hlen = (size_t)EVP_MD_get_size(s->md);
  REQUIRE_EQ(c->secret_len, s->hlen);
  memcpy(s->secret, c->secret, s->hlen);
  sealer_keys(s);
}

/* After the client sent KeyUpdate: the next generation of keys (7.2). */
static void sealer_update(sealer_t *s) {
  unsigned char next[48];
  t_expand_label(s->md, s->secret, s->hlen, "traffic upd", next, s->hlen);
  memcpy(s->secret, next, s->hlen);
  sealer_keys(s);
}

/* Seals `inner` (a TLSInnerPlaintext: content, type, zeros) as one record
 * whose header says `version`, into out; returns the record's length. */
static size_t seal_v(sealer_t *s, unsigned version, const unsigned char *inner, size_t n, unsigned char *out) {
  size_t len = n + 16;
  out[0] = 0x17, out[1] = (unsigned char)(version >> 8), out[2] = (unsigned char)version;
  out[3] = (unsigned char)(len >> 8), out[4] = (unsigned char)len;
  unsigned char nonce[12];
  memcpy(nonce, s->iv, sizeof nonce);
  for (int i = 0; i < 8; i++) nonce[11 - i] ^= (unsigned char)(s->seq >> (8 * i));
  s->seq++;
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  int l = 0, ok = x && EVP_EncryptInit_ex(x, s->aead, NULL, s->key, nonce) == 1 &&
                  EVP_EncryptUpdate(x, NULL, &l, out, 5) == 1 &&
                  EVP_EncryptUpdate(x, out + 5, &l, inner, (int)n) == 1 &&
                  EVP_EncryptFinal_ex(x, out + 5 + l, &l) == 1 &&
                  EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + n) == 1;
  EVP_CIPHER_CTX_free(x);
  REQUIRE(ok);
  return 5 + len;
}

static size_t seal(sealer_t *s, const unsigned char *inner, size_t n, unsigned char *out) {
  return seal_v(s, 0x0303, inner, n, out);
}

/* A TLSInnerPlaintext: `n` content bytes, the real content type, `pad` zeros. */
static size_t inner(unsigned char *out, const void *content, size_t n, int type, size_t pad) {
  if (n) memcpy(out, content, n);
  out[n] = (unsigned char)type;
  memset(out + n + 1, 0, pad);
  return n + 1 + pad;
}

/* Seals one record of `type` with `content` and feeds it; returns gw_tls_read's result. */
static ssize_t feed_sealed(conn_t *k, sealer_t *s, int type, const void *content, size_t n, size_t pad) {
  unsigned char *in = malloc(n + 1 + pad), *rec = malloc(n + 1 + pad + 5 + 16);
  size_t il = inner(in, content, n, type, pad);
  size_t rl = seal(s, in, il, rec);
  ssize_t rc = feed(k, rec, rl);
  free(in);
  free(rec);
  return rc;
}

static const unsigned char KEY_UPDATE_NOT_REQUESTED[] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0};
static const unsigned char KEY_UPDATE_REQUESTED[] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 1};

/* ---- failures ---- */

/* gw_tls_read failed and nothing came out of it: the connection is dead
 * (reads and writes fail, even with good input), and what the server queued
 * ends with one encrypted alert record (19 bytes: TLS 1.3 hides the alert's
 * type, RFC 8446 5.2) that the client decrypts as the fatal alert `desc`. */
static void expect_dead(conn_t *k, ssize_t rc, int desc) {
  CHECK_EQ(rc, GW_ETLS);
  CHECK_EQ(k->plain.len, 0);
  CHECK(strcmp(gw_tls_error(k->t), "no error") != 0);
  records_t r;
  CHECK(pending_records(k, &r) && r.n >= 1);
  if (r.n >= 1) {
    CHECK_EQ(r.type[r.n - 1], 0x17);
    CHECK_EQ(r.len[r.n - 1], 19);
  }
  to_client(k);
  unsigned char buf[64];
  int err = 0;
  client_read(&k->c, buf, sizeof buf, &err);
  CHECK_EQ(err, SSL_ERROR_SSL);
  CHECK_EQ(k->c.alert, SSL3_AL_FATAL << 8 | desc);
  CHECK_EQ(gw_tls_write(k->t, "x", 1), GW_ETLS);
  CHECK_EQ(feed(k, NULL, 0), GW_ETLS);
  const char *p;
  CHECK_EQ(gw_tls_pending(k->t, &p), 0); /* no second alert */
}

/* ==== 1. how the bytes arrive ==== */

/* Writes records of the given plaintext sizes from the client; returns
 * their concatenated plaintext (malloc'd) and the wire bytes in *wire. */
static unsigned char *client_records(conn_t *k, const size_t *sizes, size_t n, size_t *total,
                                     unsigned char **wire, size_t *wlen) {
  *total = 0;
  for (size_t i = 0; i < n; i++) *total += sizes[i];
  unsigned char *data = rnd(*total), *p = data;
  for (size_t i = 0; i < n; i++) {
    client_write(&k->c, p, sizes[i]);
    p += sizes[i];
  }
  *wire = client_take(&k->c, wlen);
  return data;
}

TEST(client_bytes_one_at_a_time) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  static const size_t sizes[] = {1, 5, 16384, 300, 2};
  size_t total, wlen;
  unsigned char *wire, *data = client_records(&k, sizes, 5, &total, &wire, &wlen);
  /* Each record's plaintext comes out whole, at its last byte and not
   * before: nothing is released before its tag is checked. */
  size_t ends[5], off = 0;
  records_t r;
  REQUIRE(records(wire, wlen, &r) && r.n == 5);
  for (size_t i = 0; i < 5; i++) ends[i] = (off += 5 + r.len[i]);
  size_t done = 0;
  for (size_t i = 0; i < wlen; i++) {
    ssize_t rc = feed(&k, wire + i, 1);
    if (rc == 0) continue;
    CHECK_MSG(done < 5 && i + 1 == ends[done] && rc == (ssize_t)sizes[done],
              "byte %zu: gw_tls_read returned %zd (record %zu ends at %zu)", i, rc, done,
              done < 5 ? ends[done] : 0);
    done++;
  }
  CHECK_EQ(done, 5);
  server_got(&k, data, total);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(client_bytes_in_random_chunks) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  size_t sizes[200];
  for (size_t i = 0; i < 200; i++) sizes[i] = rnd_size(1, 2000);
  size_t total, wlen;
  unsigned char *wire, *data = client_records(&k, sizes, 200, &total, &wire, &wlen);
  ssize_t sum = 0;
  for (size_t off = 0; off < wlen;) {
    size_t n = rnd_size(1, 64);
    if (n > wlen - off) n = wlen - off;
    ssize_t rc = feed(&k, wire + off, n);
    REQUIRE(rc >= 0);
    sum += rc;
    off += n;
  }
  CHECK_EQ(sum, (ssize_t)total);
  server_got(&k, data, total);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(many_records_in_one_read) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  size_t sizes[51];
  for (size_t i = 0; i < 51; i++) sizes[i] = rnd_size(1, 1000);
  size_t total, wlen;
  unsigned char *wire, *data = client_records(&k, sizes, 51, &total, &wire, &wlen);
  records_t r;
  REQUIRE(records(wire, wlen, &r) && r.n == 51);
  /* 50 whole records and the first 10 bytes of the 51st in one read. */
  size_t last = 5 + r.len[50], head = wlen - last + 10;
  CHECK_EQ(feed(&k, wire, head), (ssize_t)(total - sizes[50]));
  CHECK_EQ(feed(&k, wire + head, wlen - head), (ssize_t)sizes[50]);
  server_got(&k, data, total);
  /* And 50 whole records alone. */
  free(wire);
  free(data);
  data = client_records(&k, sizes, 50, &total, &wire, &wlen);
  CHECK_EQ(feed(&k, wire, wlen), (ssize_t)total);
  server_got(&k, data, total);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* As conn.c calls gw_tls_read: the client's records of `sizes` were read
 * into the spare room of the buffer the plaintext goes to, after what it
 * already holds ("kept"), all but their last `cut` bytes, which come in a
 * second read, in place too. With `fill`, the ciphertext fills the buffer
 * to its capacity, so the buffer must grow (and move) while `in` points
 * into it: `in` is to be copied first (tls.h). */
static void in_place_round(conn_t *k, const size_t *sizes, size_t n, size_t cut, int fill) {
  size_t total, wlen;
  unsigned char *wire, *data = client_records(k, sizes, n, &total, &wire, &wlen);
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append(&b, "kept", 4);
  gw_buf_reserve(&b, wlen - cut);
  if (fill) REQUIRE_EQ(b.cap - b.len, wlen - cut);
  memcpy(b.base + b.len, wire, wlen - cut);
  size_t last = cut ? sizes[n - 1] : 0;
  CHECK_EQ(gw_tls_read(k->t, b.base + b.len, wlen - cut, &b), (ssize_t)(total - last));
  if (cut) {
    gw_buf_reserve(&b, cut);
    memcpy(b.base + b.len, wire + wlen - cut, cut);
    CHECK_EQ(gw_tls_read(k->t, b.base + b.len, cut, &b), (ssize_t)last);
  }
  CHECK_EQ(b.len, 4 + total);
  CHECK(b.len == 4 + total && memcmp(b.base, "kept", 4) == 0 && memcmp(b.base + 4, data, total) == 0);
  gw_buf_free(&b);
  free(wire);
  free(data);
}

TEST(ciphertext_in_the_plaintext_buffer) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  static const size_t two[] = {104, 104};                  /* 252 bytes: a 256-byte buffer full */
  static const size_t full[] = {16384, 16384, 16384, 16292}; /* 65532 bytes: 64 KiB full */
  in_place_round(&k, two, 2, 0, 1);
  in_place_round(&k, full, 4, 0, 1);
  size_t sizes[20];
  for (size_t i = 0; i < 20; i++) sizes[i] = i % 2 ? 16384 : rnd_size(10, 5000);
  in_place_round(&k, sizes, 20, 0, 0);
  in_place_round(&k, sizes, 20, 3, 0);
  in_place_round(&k, full, 4, 5000, 0);
  CHECK_EQ(k.plain.len, 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 2. padding ==== */

static size_t pad_max(SSL *s, int type, size_t len, void *arg) {
  (void)s, (void)type, (void)len, (void)arg;
  return 20000; /* OpenSSL caps it at what fits in 2^14 */
}

static size_t pad_varied(SSL *s, int type, size_t len, void *arg) {
  (void)s, (void)type, (void)arg;
  return (len * 7919) % 5000;
}

/* Client records of `sizes` reach the server as the same plaintext;
 * `check` (may be NULL) looks at each record's length field. */
static void padded_round(conn_t *k, const size_t *sizes, size_t n, int (*check)(size_t len, size_t size)) {
  size_t total, wlen;
  unsigned char *wire, *data = client_records(k, sizes, n, &total, &wire, &wlen);
  records_t r;
  REQUIRE(records(wire, wlen, &r) && r.n == n);
  for (size_t i = 0; check && i < n; i++)
    CHECK_MSG(check(r.len[i], sizes[i]), "record %zu: %zu bytes for %zu of data", i, r.len[i], sizes[i]);
  CHECK_EQ(feed(k, wire, wlen), (ssize_t)total);
  server_got(k, data, total);
  free(wire);
  free(data);
}

/* The padding really is there: the inner plaintext fills 256-byte blocks,
 * or 2^14 bytes. */
static int padded_to_256(size_t len, size_t size) { return (len - 16) % 256 == 0 && len - 16 >= size + 1; }
static int padded_to_max(size_t len, size_t size) { return len == 16384 + 16 && size < 16384; }

TEST(padded_client_records) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  static const size_t sizes[] = {1, 254, 255, 256, 1000, 16000, 3};
  conn_t k;
  conn_ready(&k, ctx);
  SSL_set_block_padding(k.c.ssl, 256);
  padded_round(&k, sizes, 7, padded_to_256);
  SSL_set_block_padding(k.c.ssl, 0);
  SSL_set_record_padding_callback(k.c.ssl, pad_max);
  padded_round(&k, sizes, 7, padded_to_max);
  SSL_set_record_padding_callback(k.c.ssl, pad_varied);
  padded_round(&k, sizes, 7, NULL);
  /* One byte at a time through a padded record. */
  SSL_set_record_padding_callback(k.c.ssl, pad_max);
  unsigned char one = 'z';
  client_write(&k.c, &one, 1);
  size_t wlen;
  unsigned char *wire = client_take(&k.c, &wlen);
  CHECK_EQ(wlen, 5 + 16384 + 16);
  for (size_t i = 0; i + 1 < wlen; i++) CHECK_EQ(feed(&k, wire + i, 1), 0);
  CHECK_EQ(feed(&k, wire + wlen - 1, 1), 1);
  server_got(&k, &one, 1);
  free(wire);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 3. record sizes ==== */

static int full_record(size_t len, size_t size) { return len == size + 17; }

TEST(largest_and_smallest_client_records) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  static const size_t sizes[] = {16384, 1, 16384, 16384, 1, 16383};
  padded_round(&k, sizes, 6, full_record);
  /* One write of 3 x 16384 + 1 bytes: four records, the last of 1 byte. */
  size_t big = 3 * 16384 + 1, wlen;
  unsigned char *data = rnd(big);
  client_write(&k.c, data, big);
  unsigned char *wire = client_take(&k.c, &wlen);
  records_t r;
  CHECK(records(wire, wlen, &r) && r.n == 4 && r.len[0] == 16401 && r.len[3] == 18);
  CHECK_EQ(feed(&k, wire, wlen), (ssize_t)big);
  server_got(&k, data, big);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* gw_tls_write(size): the client reads exactly the bytes, in records of
 * 16384 bytes of plaintext and a last one with the rest, each `overhead`
 * bytes longer (TLS 1.3: 17, the content type and the tag; 0: not checked);
 * nothing at all for 0 bytes. */
static void server_write_size(conn_t *k, size_t size, size_t overhead) {
  unsigned char *data = rnd(size);
  CHECK_EQ(gw_tls_write(k->t, (const char *)data, size), 0);
  records_t r;
  size_t nrec = (size + 16383) / 16384;
  CHECK(pending_records(k, &r));
  CHECK_MSG(r.n == nrec, "%zu bytes: %zu records, want %zu", size, r.n, nrec);
  for (size_t i = 0; i < r.n; i++) {
    size_t want = i + 1 < nrec ? 16384 : size - 16384 * (nrec - 1);
    CHECK_MSG(r.type[i] == 0x17 && (!overhead || r.len[i] == want + overhead), "%zu bytes: record %zu has %zu",
              size, i, r.len[i]);
  }
  client_expects(k, data, size);
  free(data);
}

TEST(server_write_sizes) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  static const size_t sizes[] = {0, 1, 16383, 16384, 16385, 1 << 20, 2, 0, 32768};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) server_write_size(&k, sizes[i], 17);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 4. gw_tls_writev ==== */

/* Writes `n` pieces of the given sizes with gw_tls_writev; the client reads
 * their concatenation. Returns the number of records it made. */
static size_t writev_round(conn_t *k, const size_t *sizes, size_t n) {
  uv_buf_t bufs[128];
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += sizes[i];
  unsigned char *data = rnd(total), *p = data;
  for (size_t i = 0; i < n; p += sizes[i], i++) bufs[i] = uv_buf_init((char *)p, (unsigned)sizes[i]);
  CHECK_EQ(gw_tls_writev(k->t, bufs, (unsigned)n), 0);
  records_t r;
  CHECK(pending_records(k, &r));
  size_t sum = 0;
  for (size_t i = 0; i < r.n; i++) {
    CHECK_MSG(r.type[i] == 0x17 && r.len[i] > 17 && r.len[i] <= 16384 + 17, "record %zu: %zu bytes", i,
              r.len[i]);
    sum += r.len[i] - 17;
  }
  CHECK_EQ(sum, total);
  client_expects(k, data, total);
  free(data);
  return r.n;
}

TEST(writev_small_pieces_make_one_record) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  size_t sizes[100];
  for (size_t i = 0; i < 100; i++) sizes[i] = 7;
  CHECK_EQ(writev_round(&k, sizes, 100), 1); /* 700 bytes: one record (tls.h) */
  for (size_t i = 0; i < 100; i++) sizes[i] = i % 3 ? 163 : 165; /* 16384 in all */
  CHECK_EQ(writev_round(&k, sizes, 100), 1);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(writev_mixed_pieces) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  static const size_t mixed[] = {10, 20000, 5, 5, 16384, 3, 40000, 1, 0, 7, 16383, 2, 70000};
  writev_round(&k, mixed, sizeof mixed / sizeof *mixed);
  size_t sizes[64];
  for (size_t i = 0; i < 64; i++) sizes[i] = rnd_size(0, 1) ? rnd_size(0, 50) : rnd_size(16000, 40000);
  writev_round(&k, sizes, 64);
  static const size_t none[] = {0, 0};
  CHECK_EQ(writev_round(&k, none, 2), 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 5. key updates ==== */

/* Random data from the client (n bytes), read back by the server. */
static void client_to_server(conn_t *k, size_t n) {
  unsigned char *data = rnd(n);
  client_write(&k->c, data, n);
  CHECK_EQ(feed_all(k), (ssize_t)n);
  server_got(k, data, n);
  free(data);
}

/* Random data from the server (n bytes), read back by the client. */
static void server_to_client(conn_t *k, size_t n) {
  unsigned char *data = rnd(n);
  CHECK_EQ(gw_tls_write(k->t, (const char *)data, n), 0);
  client_expects(k, data, n);
  free(data);
}

/* The client sends KeyUpdate (alone: SSL_do_handshake flushes it). */
static void client_key_update(conn_t *k, int type) {
  REQUIRE(SSL_key_update(k->c.ssl, type) == 1);
  REQUIRE(SSL_do_handshake(k->c.ssl) == 1);
}

TEST(client_key_update_not_requested) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  to_client(&k);
  client_poll(&k.c);
  client_to_server(&k, 100);
  /* KeyUpdate, then data under the new key, in one read. */
  REQUIRE(SSL_key_update(k.c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1);
  client_to_server(&k, 1000);
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0); /* nothing to answer */
  server_to_client(&k, 1000);
  CHECK_EQ(k.c.key_updates, 0);
  /* KeyUpdate alone, then data in another read. */
  client_key_update(&k, SSL_KEY_UPDATE_NOT_REQUESTED);
  CHECK_EQ(feed_all(&k), 0);
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  client_to_server(&k, 5000);
  server_to_client(&k, 5000);
  CHECK_EQ(k.c.key_updates, 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* Counts the KeyUpdate records among the server's pending records (22
 * bytes: the 5-byte message, its content type, the tag), which must all come
 * before the last record, `data_len` bytes of application data (RFC 8446
 * 4.6.3: the answer goes "prior to sending its next Application Data
 * record"). data_len 0: no data record, all must be KeyUpdates. */
static size_t key_updates_pending(conn_t *k, size_t data_len) {
  records_t r;
  CHECK(pending_records(k, &r));
  size_t kus = r.n;
  if (data_len > 0) {
    CHECK(r.n >= 1 && r.len[r.n - 1] == data_len + 17);
    kus = r.n ? r.n - 1 : 0;
  }
  for (size_t i = 0; i < kus; i++) CHECK_MSG(r.type[i] == 0x17 && r.len[i] == 22, "record %zu: %zu bytes", i, r.len[i]);
  return kus;
}

/* The server writes `n` bytes (one record: n <= 16384) after `requests`
 * KeyUpdate requests it read:
 * before the data, between 1 and `requests` KeyUpdates of its own went out
 * (4.6.3 lets a silent side answer several requests with one), none asking
 * back, and the client decrypts the data with the key they lead to.
 * OpenSSL 3.0 sends one answer per request: the one for the last request
 * read waits for the next write (close_notify does not send it), the others
 * go out when the next handshake message is read. `before`: KeyUpdates
 * already moved to the client. */
static void answered(conn_t *k, int requests, size_t n, int before) {
  size_t at_read = key_updates_pending(k, 0);
  to_client(k);
  unsigned char *data = rnd(n);
  CHECK_EQ(gw_tls_write(k->t, (const char *)data, n), 0);
  size_t at_write = key_updates_pending(k, n);
  CHECK_MSG(at_read + at_write >= 1 && at_read + at_write <= (size_t)requests,
            "%zu + %zu KeyUpdates answer %d requests", at_read, at_write, requests);
  client_expects(k, data, n);
  CHECK_EQ(k->c.key_updates, before + (int)(at_read + at_write));
  CHECK_EQ(k->c.key_update_requests, 0);
  free(data);
}

TEST(client_key_update_requested) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  server_to_client(&k, 10);
  client_to_server(&k, 10);
  /* Three times in a row, with data between both ways. */
  for (int round = 0; round < 3; round++) {
    client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
    CHECK_EQ(feed_all(&k), 0);
    answered(&k, 1, 3000, k.c.key_updates);
    client_to_server(&k, 3000);
  }
  CHECK_EQ(k.c.key_updates, 3);
  /* Three requests in a row, each in a record of its own, then data, in
   * one read. */
  for (int i = 0; i < 3; i++) client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
  client_to_server(&k, 20000);
  answered(&k, 3, 16000, k.c.key_updates);
  /* The same, in three reads. */
  for (int i = 0; i < 3; i++) {
    client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
    CHECK_EQ(feed_all(&k), 0);
  }
  answered(&k, 3, 500, k.c.key_updates);
  /* A request and data in one record flight: the answer still comes before
   * the data the server writes next. */
  REQUIRE(SSL_key_update(k.c.ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
  client_to_server(&k, 100);
  answered(&k, 1, 100, k.c.key_updates);
  client_to_server(&k, 100);
  server_to_client(&k, 100);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* The server's data crosses the client's request on the wire: written under
 * the old key before the request arrived, the new key after the answer. */
TEST(key_update_crossing_server_data) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
  unsigned char *a = rnd(500), *b = rnd(600), both[1100];
  CHECK_EQ(gw_tls_write(k.t, (const char *)a, 500), 0);
  CHECK_EQ(feed_all(&k), 0);
  CHECK_EQ(gw_tls_write(k.t, (const char *)b, 600), 0);
  records_t r; /* a under the old key, the KeyUpdate, b under the new one */
  CHECK(pending_records(&k, &r) && r.n == 3 && r.len[0] == 517 && r.len[1] == 22 && r.len[2] == 617);
  memcpy(both, a, 500);
  memcpy(both + 500, b, 600);
  client_expects(&k, both, 1100);
  CHECK_EQ(k.c.key_updates, 1);
  client_to_server(&k, 700);
  free(a);
  free(b);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 6. tampering ==== */

/* One client record of 100 random bytes, as bytes on the wire (122). */
static unsigned char *one_record(conn_t *k, size_t *n) {
  unsigned char *data = rnd(100);
  client_write(&k->c, data, 100);
  free(data);
  return client_take(&k->c, n);
}

/* Flips bit `bit` of byte `at` of a good record and feeds it: refused with
 * alert `desc`, nothing decrypted. */
static void tamper_case(size_t at, int bit, int desc) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  client_to_server(&k, 10);
  to_client(&k);
  size_t n;
  unsigned char *rec = one_record(&k, &n);
  REQUIRE_EQ(n, 122);
  rec[at] ^= (unsigned char)(1 << bit);
  printf("  byte %zu bit %d:\n", at, bit);
  expect_dead(&k, feed(&k, rec, n), desc);
  free(rec);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(tampered_records_fail) {
  tamper_case(5, 0, SSL_AD_BAD_RECORD_MAC);       /* the first ciphertext byte */
  tamper_case(60, 7, SSL_AD_BAD_RECORD_MAC);      /* the body */
  tamper_case(5 + 100, 3, SSL_AD_BAD_RECORD_MAC); /* the encrypted content type */
  tamper_case(121, 0, SSL_AD_BAD_RECORD_MAC);     /* the tag's last byte */
  tamper_case(106, 4, SSL_AD_BAD_RECORD_MAC);     /* the tag's first byte */
  tamper_case(4, 0, SSL_AD_BAD_RECORD_MAC);       /* length 117 -> 116 (authenticated data) */
  tamper_case(0, 0, SSL_AD_UNEXPECTED_MESSAGE);   /* type 0x17 -> 0x16 */
  tamper_case(2, 1, SSL_AD_DECODE_ERROR);         /* version 0x0303 -> 0x0301 */
}

/* A length made longer: the server waits for the rest, then refuses it. */
TEST(tampered_length_longer_waits_then_fails) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  size_t n;
  unsigned char *rec = one_record(&k, &n);
  rec[3] ^= 1; /* 117 -> 373 */
  CHECK_EQ(feed(&k, rec, n), 0);
  CHECK_EQ(k.plain.len, 0);
  unsigned char junk[256];
  memset(junk, 0, sizeof junk);
  CHECK_EQ(feed(&k, junk, 255), 0);
  expect_dead(&k, feed(&k, junk, 1), SSL_AD_BAD_RECORD_MAC);
  free(rec);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* A good record and a bad one in the same read: the good one's plaintext
 * comes out (gw_tls_read returns its length), the next call fails. */
TEST(good_then_bad_record_in_one_read) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  unsigned char *data = rnd(150);
  client_write(&k.c, data, 100);
  client_write(&k.c, data + 100, 50);
  size_t n;
  unsigned char *wire = client_take(&k.c, &n);
  REQUIRE_EQ(n, 122 + 72);
  wire[122 + 30] ^= 0x40;
  CHECK_EQ(feed(&k, wire, n), 100);
  server_got(&k, data, 100);
  expect_dead(&k, feed(&k, NULL, 0), SSL_AD_BAD_RECORD_MAC);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* A record header announcing more than 2^14 + 256 bytes is refused
 * (record_overflow, RFC 8446 5.2), with its junk body in the same read or
 * alone, before its body came (`body` 0); a length of 2^14 + 256 itself is
 * waited for, and then fails only because the junk is not a ciphertext. */
static void overflow_case(unsigned len, size_t body, int waits, int desc) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  unsigned char *rec = rnd(5 + body);
  memcpy(rec, (unsigned char[]){0x17, 0x03, 0x03, (unsigned char)(len >> 8), (unsigned char)len}, 5);
  printf("  length 0x%x, %zu bytes of body:\n", len, body);
  if (waits) {
    CHECK_EQ(feed(&k, rec, 5), 0);
    expect_dead(&k, feed(&k, rec + 5, body), desc);
  } else {
    expect_dead(&k, feed(&k, rec, 5 + body), desc);
  }
  free(rec);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(oversized_records_fail) {
  overflow_case(0x4200, 0x4200, 0, SSL_AD_RECORD_OVERFLOW);
  overflow_case(0x4200, 0, 0, SSL_AD_RECORD_OVERFLOW);
  overflow_case(0x4101, 0x4101, 0, SSL_AD_RECORD_OVERFLOW);
  overflow_case(0x4101, 0, 0, SSL_AD_RECORD_OVERFLOW);
  overflow_case(0xffff, 0, 0, SSL_AD_RECORD_OVERFLOW);
  overflow_case(0x4100, 0x4100, 1, SSL_AD_BAD_RECORD_MAC);
}

TEST(truncated_record_waits_for_the_rest) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  unsigned char *data = rnd(3000);
  client_write(&k.c, data, 3000);
  size_t n;
  unsigned char *wire = client_take(&k.c, &n);
  CHECK_EQ(feed(&k, wire, 4), 0);     /* part of the header */
  CHECK_EQ(feed(&k, wire + 4, 1), 0); /* the header alone */
  CHECK_EQ(feed(&k, wire + 5, n - 6), 0);
  CHECK_EQ(k.plain.len, 0);
  CHECK_EQ(feed(&k, NULL, 0), 0); /* nothing new: still nothing */
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  CHECK_EQ(feed(&k, wire + n - 1, 1), 3000);
  server_got(&k, data, 3000);
  free(wire);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 7. replay, reordering, loss ==== */

/* Two client records A and B (100 and 50 bytes); their wire bytes. */
static void two_records(conn_t *k, unsigned char **a, unsigned char **b, unsigned char **data) {
  *data = rnd(150);
  size_t n;
  client_write(&k->c, *data, 100);
  *a = client_take(&k->c, &n);
  REQUIRE_EQ(n, 122);
  client_write(&k->c, *data + 100, 50);
  *b = client_take(&k->c, &n);
  REQUIRE_EQ(n, 72);
}

/* order: "AA" (replay in another read), "A+A" (in the same read), "BA"
 * (swapped), "B" (A lost). */
static void sequence_case(const char *order) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  unsigned char *a, *b, *data;
  two_records(&k, &a, &b, &data);
  printf("  %s:\n", order);
  if (strcmp(order, "AA") == 0) {
    CHECK_EQ(feed(&k, a, 122), 100);
    server_got(&k, data, 100);
    expect_dead(&k, feed(&k, a, 122), SSL_AD_BAD_RECORD_MAC);
  } else if (strcmp(order, "A+A") == 0) {
    unsigned char twice[244];
    memcpy(twice, a, 122);
    memcpy(twice + 122, a, 122);
    CHECK_EQ(feed(&k, twice, 244), 100);
    server_got(&k, data, 100);
    expect_dead(&k, feed(&k, NULL, 0), SSL_AD_BAD_RECORD_MAC);
  } else if (strcmp(order, "BA") == 0) {
    expect_dead(&k, feed(&k, b, 72), SSL_AD_BAD_RECORD_MAC);
    CHECK_EQ(feed(&k, a, 122), GW_ETLS);
  } else {
    expect_dead(&k, feed(&k, b, 72), SSL_AD_BAD_RECORD_MAC);
  }
  free(a);
  free(b);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(replayed_reordered_or_lost_records_fail) {
  sequence_case("AA");
  sequence_case("A+A");
  sequence_case("BA");
  sequence_case("B");
}

/* ==== 8. records in the clear after the handshake ==== */

static void cleartext_case(const unsigned char *rec, size_t n, const char *what) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  client_to_server(&k, 10);
  printf("  %s:\n", what);
  expect_dead(&k, feed(&k, rec, n), SSL_AD_UNEXPECTED_MESSAGE);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(cleartext_records_after_handshake_fail) {
  static const unsigned char ccs[] = {0x14, 0x03, 0x03, 0x00, 0x01, 0x01};
  static const unsigned char close_notify[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00};
  static const unsigned char fatal[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
  static const unsigned char hs[] = {0x16, 0x03, 0x03, 0x00, 0x05, 0x18, 0x00, 0x00, 0x01, 0x00};
  static const unsigned char heartbeat[] = {0x18, 0x03, 0x03, 0x00, 0x03, 0x01, 0x00, 0x00};
  cleartext_case(ccs, sizeof ccs, "ChangeCipherSpec");
  cleartext_case(close_notify, sizeof close_notify, "close_notify in the clear");
  cleartext_case(fatal, sizeof fatal, "handshake_failure alert in the clear");
  cleartext_case(hs, sizeof hs, "KeyUpdate in the clear");
  cleartext_case(heartbeat, sizeof heartbeat, "content type 24");
}

/* ==== 9. closing ==== */

TEST(close_notify_after_data) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  unsigned char *data = rnd(2000);
  client_write(&k.c, data, 2000);
  REQUIRE(SSL_shutdown(k.c.ssl) == 0);
  /* Data and close_notify in one read: the data first, EOF on the next call
   * (and on every one after it). */
  CHECK_EQ(feed_all(&k), 2000);
  server_got(&k, data, 2000);
  CHECK_EQ(feed(&k, NULL, 0), UV_EOF);
  CHECK_EQ(feed(&k, NULL, 0), UV_EOF);
  CHECK_EQ(k.plain.len, 0);
  /* Only half closed: the server still answers, then closes its side. */
  server_to_client(&k, 3000);
  gw_tls_shutdown(k.t);
  to_client(&k);
  int err = 0;
  CHECK_EQ(client_read(&k.c, data, 10, &err), 0);
  CHECK_EQ(err, SSL_ERROR_ZERO_RETURN);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(close_notify_alone_and_in_pieces) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  REQUIRE(SSL_shutdown(k.c.ssl) == 0);
  size_t n;
  unsigned char *wire = client_take(&k.c, &n);
  CHECK_EQ(n, 24); /* an encrypted alert: 5 + 2 + 1 + 16 */
  for (size_t i = 0; i + 1 < n; i++) CHECK_EQ(feed(&k, wire + i, 1), 0);
  CHECK_EQ(feed(&k, wire + n - 1, 1), UV_EOF);
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0); /* close_notify is not answered */
  free(wire);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(server_shutdown) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  to_client(&k);
  unsigned char *data = rnd(5000);
  CHECK_EQ(gw_tls_write(k.t, (const char *)data, 5000), 0);
  gw_tls_shutdown(k.t);
  gw_tls_shutdown(k.t); /* once */
  records_t r;
  CHECK(pending_records(&k, &r) && r.n == 2 && r.len[0] == 5000 + 17 && r.type[1] == 0x17 && r.len[1] == 19);
  CHECK_EQ(gw_tls_write(k.t, "x", 1), GW_ETLS);
  uv_buf_t b = uv_buf_init("y", 1);
  CHECK_EQ(gw_tls_writev(k.t, &b, 1), GW_ETLS);
  CHECK(pending_records(&k, &r) && r.n == 2);
  to_client(&k);
  unsigned char got[5001];
  int err = 0;
  CHECK_EQ(client_read(&k.c, got, sizeof got, &err), 5000);
  CHECK(memcmp(got, data, 5000) == 0);
  CHECK_EQ(err, SSL_ERROR_ZERO_RETURN);
  CHECK_EQ(k.c.alert, SSL3_AL_WARNING << 8 | SSL_AD_CLOSE_NOTIFY);
  /* The client may still send before it saw the close_notify: read. */
  client_to_server(&k, 300);
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 10. the first request with the client's Finished ==== */

TEST(request_in_the_same_read_as_finished) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_open(&k, ctx, TLS1_3_VERSION);
  CHECK_EQ(SSL_do_handshake(k.c.ssl), -1); /* ClientHello */
  CHECK_EQ(feed_all(&k), 0);
  CHECK(!gw_tls_ready(k.t));
  to_client(&k);
  REQUIRE_EQ(SSL_do_handshake(k.c.ssl), 1); /* the client's Finished, not yet sent */
  unsigned char *req = rnd(777);
  client_write(&k.c, req, 777);
  CHECK_EQ(feed_all(&k), 777);
  CHECK(gw_tls_ready(k.t));
  server_got(&k, req, 777);
  server_to_client(&k, 900); /* after the ticket */
  CHECK_EQ(k.c.tickets, 1);
  /* The same, fed one byte at a time. */
  conn_close(&k);
  conn_open(&k, ctx, TLS1_3_VERSION);
  SSL_do_handshake(k.c.ssl);
  feed_all(&k);
  to_client(&k);
  REQUIRE_EQ(SSL_do_handshake(k.c.ssl), 1);
  client_write(&k.c, req, 777);
  size_t n;
  unsigned char *wire = client_take(&k.c, &n);
  ssize_t sum = 0;
  for (size_t i = 0; i < n; i++) {
    ssize_t rc = feed(&k, wire + i, 1);
    CHECK(rc >= 0);
    sum += rc > 0 ? rc : 0;
  }
  CHECK_EQ(sum, 777);
  server_got(&k, req, 777);
  client_to_server(&k, 10);
  server_to_client(&k, 10);
  free(wire);
  free(req);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== 11. session tickets ==== */

/* Data both ways on a fresh connection; returns the client's session
 * (a reference) once the ticket (if any) was read. */
static SSL_SESSION *session_round(gw_tls_ctx_t *ctx, SSL_SESSION *resume, int want_tickets, int want_reused) {
  conn_t k;
  conn_open(&k, ctx, TLS1_3_VERSION);
  if (resume) REQUIRE(SSL_set_session(k.c.ssl, resume) == 1);
  handshake(&k);
  CHECK_EQ(SSL_session_reused(k.c.ssl), want_reused);
  CHECK_EQ(gw_tls_resumed(k.t), want_reused);
  /* The ticket went out with the handshake's end, before any data. */
  client_to_server(&k, 1000);
  server_to_client(&k, 20000);
  CHECK_EQ(k.c.tickets, want_tickets);
  client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
  CHECK_EQ(feed_all(&k), 0);
  server_to_client(&k, 100);
  client_to_server(&k, 100);
  CHECK_EQ(k.c.key_updates, 1);
  /* A clean close both ways (OpenSSL forgets a session whose SSL is freed
   * without close_notify). */
  REQUIRE(SSL_shutdown(k.c.ssl) == 0);
  CHECK_EQ(feed_all(&k), UV_EOF);
  gw_tls_shutdown(k.t);
  to_client(&k);
  CHECK_EQ(SSL_shutdown(k.c.ssl), 1);
  SSL_SESSION *s = SSL_get1_session(k.c.ssl);
  conn_close(&k);
  return s;
}

TEST(session_tickets_on) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  SSL_SESSION *s = session_round(ctx, NULL, 1, 0);
  REQUIRE(s && SSL_SESSION_is_resumable(s));
  SSL_SESSION *again = session_round(ctx, s, 1, 1); /* and a renewed ticket */
  CHECK(again && SSL_SESSION_is_resumable(again));
  SSL_SESSION_free(again);
  SSL_SESSION_free(s);
  gw_tls_ctx_free(ctx);
}

TEST(session_tickets_off) {
  gw_tls_ctx_t *ctx = server_ctx(1);
  SSL_SESSION *s = session_round(ctx, NULL, 0, 0);
  CHECK(s && !SSL_SESSION_is_resumable(s));
  SSL_SESSION_free(s);
  gw_tls_ctx_free(ctx);
}

/* ==== 12. cipher suites ==== */

static void suite_round(gw_tls_ctx_t *ctx, const char *suite) {
  conn_t k;
  conn_open(&k, ctx, TLS1_3_VERSION);
  REQUIRE(SSL_set_ciphersuites(k.c.ssl, suite) == 1);
  handshake(&k);
  CHECK_STR_EQ(SSL_get_cipher_name(k.c.ssl), suite);
  client_to_server(&k, 100000);
  server_to_client(&k, 100000);
  client_key_update(&k, SSL_KEY_UPDATE_REQUESTED);
  client_to_server(&k, 100000);
  server_to_client(&k, 100000);
  CHECK_EQ(k.c.key_updates, 1);
  conn_close(&k);
}

TEST(each_tls13_suite) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  suite_round(ctx, "TLS_AES_128_GCM_SHA256");
  suite_round(ctx, "TLS_AES_256_GCM_SHA384");
  suite_round(ctx, "TLS_CHACHA20_POLY1305_SHA256");
  gw_tls_ctx_free(ctx);
}

/* The CCM suites are not offered (OpenSSL's default TLS 1.3 list): a record
 * layer of our own needs only the three above. */
TEST(ccm_suites_are_refused) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  static const char *const ccm[] = {"TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"};
  for (int i = 0; i < 2; i++) {
    conn_t k;
    conn_open(&k, ctx, TLS1_3_VERSION);
    REQUIRE(SSL_set_ciphersuites(k.c.ssl, ccm[i]) == 1);
    SSL_do_handshake(k.c.ssl);
    CHECK_EQ(feed_all(&k), GW_ETLS);
    CHECK(!gw_tls_ready(k.t));
    conn_close(&k);
  }
  gw_tls_ctx_free(ctx);
}

/* ==== 13. TLS 1.2 stays on OpenSSL ==== */

TEST(tls12_suites) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  static const char *const suites[] = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
                                       "ECDHE-ECDSA-AES256-GCM-SHA384"};
  for (int i = 0; i < 3; i++) {
    conn_t k;
    conn_open(&k, ctx, TLS1_2_VERSION);
    REQUIRE(SSL_set_cipher_list(k.c.ssl, suites[i]) == 1);
    handshake(&k);
    CHECK_EQ(SSL_version(k.c.ssl), TLS1_2_VERSION);
    CHECK_STR_EQ(SSL_get_cipher_name(k.c.ssl), suites[i]);
    client_to_server(&k, 100000);
    server_to_client(&k, 100000);
    static const size_t sizes[] = {1, 16384, 5};
    padded_round(&k, sizes, 3, NULL);
    server_write_size(&k, 0, 0);
    server_write_size(&k, 16385, 0);
    /* Tampering is refused there too. */
    size_t n;
    unsigned char *data = rnd(100);
    client_write(&k.c, data, 100);
    unsigned char *wire = client_take(&k.c, &n);
    wire[n - 1] ^= 1;
    CHECK_EQ(feed(&k, wire, n), GW_ETLS);
    CHECK_EQ(k.plain.len, 0);
    free(wire);
    free(data);
    conn_close(&k);
  }
  gw_tls_ctx_free(ctx);
}

/* ==== 14. who speaks first ==== */

TEST(server_writes_first_and_turns_interleave) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  server_to_client(&k, 50); /* before any client record */
  client_to_server(&k, 60);
  server_to_client(&k, 70);
  /* Both sides write before reading the other's. */
  unsigned char *a = rnd(1000), *b = rnd(2000);
  client_write(&k.c, a, 1000);
  CHECK_EQ(gw_tls_write(k.t, (const char *)b, 2000), 0);
  client_expects(&k, b, 2000);
  CHECK_EQ(feed_all(&k), 1000);
  server_got(&k, a, 1000);
  for (int i = 0; i < 20; i++) {
    if (i % 2) server_to_client(&k, rnd_size(1, 20000));
    else client_to_server(&k, rnd_size(1, 20000));
  }
  free(a);
  free(b);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== records an OpenSSL client does not send, sealed here ==== */

/* A TLS 1.3 connection and a sealer holding the client's keys (the client
 * writes nothing itself from here on). */
static void forged_ready(conn_t *k, gw_tls_ctx_t *ctx, sealer_t *s, const char *suite) {
  conn_open(k, ctx, TLS1_3_VERSION);
  if (suite) REQUIRE(SSL_set_ciphersuites(k->c.ssl, suite) == 1);
  handshake(k);
  sealer_init(s, &k->c);
  to_client(k);
  client_poll(&k->c); /* the ticket */
}

/* Application data sealed here reaches the server; proves the sealer. */
static void forged_data(conn_t *k, sealer_t *s, size_t n, size_t pad) {
  unsigned char *data = rnd(n);
  CHECK_EQ(feed_sealed(k, s, SSL3_RT_APPLICATION_DATA, data, n, pad), (ssize_t)n);
  server_got(k, data, n);
  free(data);
}

TEST(empty_records_are_skipped) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  forged_data(&k, &s, 10, 0);
  /* Zero-length application data (RFC 8446 5.1 allows it): nothing comes
   * out, nothing is answered, the sequence goes on. */
  for (int i = 0; i < 3; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, i * 100), 0);
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  forged_data(&k, &s, 20, 0);
  /* Empty records and data in one read. */
  unsigned char buf[4096], in[64];
  size_t len = 0;
  for (int i = 0; i < 5; i++) len += seal(&s, in, inner(in, NULL, 0, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  len += seal(&s, in, inner(in, "hello", 5, SSL3_RT_APPLICATION_DATA, 3), buf + len);
  len += seal(&s, in, inner(in, NULL, 0, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  CHECK_EQ(feed(&k, buf, len), 5);
  server_got(&k, (const unsigned char *)"hello", 5);
  server_to_client(&k, 10);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* OpenSSL counts empty records in a row and gives up after 32 of them
 * (unexpected_message, "record too small"): the same bound must hold. */
TEST(too_many_empty_records_fail) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  for (int i = 0; i < 32; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, 0), 0);
  forged_data(&k, &s, 1, 0); /* data resets the count */
  for (int i = 0; i < 32; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, 0), 0);
  expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, 0), SSL_AD_UNEXPECTED_MESSAGE);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* 2^14 bytes of content is the most (5.1); one more is record_overflow.
 * Padding: OpenSSL 3.0 takes an inner plaintext up to what fills the largest
 * ciphertext, 2^14 + 256 (1 byte of data, its type and 16622 zeros), though
 * 5.4 says a sender's must not exceed 2^14 + 1; one zero more and the
 * ciphertext is too long (record_overflow). */
TEST(inner_plaintext_limits) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  for (int i = 0; i < 2; i++) {
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    forged_data(&k, &s, 16384, 0);
    forged_data(&k, &s, 1, 16383); /* the inner plaintext: 2^14 + 1 */
    forged_data(&k, &s, 16000, 384);
    forged_data(&k, &s, 1, 16622);
    forged_data(&k, &s, 16384, 239);
    unsigned char *data = rnd(16385);
    if (i == 0)
      expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, data, 16385, 0), SSL_AD_RECORD_OVERFLOW);
    else
      expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, data, 1, 16623), SSL_AD_RECORD_OVERFLOW);
    free(data);
    conn_close(&k);
  }
  gw_tls_ctx_free(ctx);
}

/* An inner plaintext that is all zeros has no content type (5.4). */
TEST(inner_plaintext_without_type_fails) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  forged_data(&k, &s, 10, 10);
  unsigned char zeros[40] = {0}, rec[128];
  size_t n = seal(&s, zeros, sizeof zeros, rec);
  expect_dead(&k, feed(&k, rec, n), SSL_AD_UNEXPECTED_MESSAGE);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* Inner content types that may not appear after the handshake: a protected
 * ChangeCipherSpec (5), heartbeat (24), unknown ones. */
TEST(inner_content_types_refused) {
  static const int types[] = {SSL3_RT_CHANGE_CIPHER_SPEC, 24, 99, 255};
  for (int i = 0; i < 4; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    forged_data(&k, &s, 10, 0);
    printf("  type %d:\n", types[i]);
    expect_dead(&k, feed_sealed(&k, &s, types[i], "\x01", 1, 0), SSL_AD_UNEXPECTED_MESSAGE);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* A KeyUpdate cut across two records (5.1 lets handshake messages be
 * fragmented; its end is on a record boundary, as 5.1 requires), then data
 * under the next key. */
TEST(key_update_in_two_records) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  forged_data(&k, &s, 10, 0);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_REQUESTED, 2, 0), 0);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_REQUESTED + 2, 3, 0), 0);
  sealer_update(&s);
  forged_data(&k, &s, 300, 0);
  server_to_client(&k, 10); /* after the server's own KeyUpdate */
  CHECK_EQ(k.c.key_updates, 1);
  /* Not requested, in five one-byte records, then data in the same read. */
  unsigned char buf[1024], in[64];
  size_t len = 0;
  for (int i = 0; i < 5; i++)
    len += seal(&s, in, inner(in, KEY_UPDATE_NOT_REQUESTED + i, 1, SSL3_RT_HANDSHAKE, 0), buf + len);
  sealer_update(&s);
  len += seal(&s, in, inner(in, "after", 5, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  CHECK_EQ(feed(&k, buf, len), 5);
  server_got(&k, (const unsigned char *)"after", 5);
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* Two KeyUpdates in one record: the first is not on a record boundary, as
 * every message before a key change must be (5.1). */
TEST(key_update_not_ending_its_record_fails) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  forged_data(&k, &s, 10, 0);
  unsigned char two[10];
  memcpy(two, KEY_UPDATE_NOT_REQUESTED, 5);
  memcpy(two + 5, KEY_UPDATE_NOT_REQUESTED, 5);
  expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, two, 10, 0), SSL_AD_UNEXPECTED_MESSAGE);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* request_update other than 0 or 1 (4.6.3), a KeyUpdate of the wrong
 * length (longer than the one byte it has: OpenSSL's "excessive message
 * size", illegal_parameter; empty: decode_error), a record under the old
 * key after a KeyUpdate. */
TEST(bad_key_updates_fail) {
  static const unsigned char two[] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 2};
  static const unsigned char longer[] = {SSL3_MT_KEY_UPDATE, 0, 0, 2, 0, 0};
  static const unsigned char empty[] = {SSL3_MT_KEY_UPDATE, 0, 0, 0};
  struct {
    const unsigned char *msg;
    size_t n;
    int desc;
  } cases[] = {{two, 5, SSL_AD_ILLEGAL_PARAMETER}, {longer, 6, SSL_AD_ILLEGAL_PARAMETER}, {empty, 4, SSL_AD_DECODE_ERROR}};
  for (int i = 0; i < 3; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    printf("  case %d:\n", i);
    expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, cases[i].msg, cases[i].n, 0), cases[i].desc);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_NOT_REQUESTED, 5, 0), 0);
  expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, "old key", 7, 0), SSL_AD_BAD_RECORD_MAC);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* A hundred KeyUpdates in a row without data between them (each in a
 * record of its own, one read each, or all in one read), then data under the
 * hundredth next key. OpenSSL 3.0 sets no bound on them. */
TEST(many_key_updates_in_a_row) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  for (int i = 0; i < 100; i++) {
    CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_NOT_REQUESTED, 5, 0), 0);
    sealer_update(&s);
  }
  forged_data(&k, &s, 10, 0);
  unsigned char *buf = malloc(100 * 32 + 64), in[16];
  size_t len = 0;
  for (int i = 0; i < 100; i++) {
    len += seal(&s, in, inner(in, KEY_UPDATE_NOT_REQUESTED, 5, SSL3_RT_HANDSHAKE, 0), buf + len);
    sealer_update(&s);
  }
  len += seal(&s, in, inner(in, "last", 4, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  CHECK_EQ(feed(&k, buf, len), 4);
  server_got(&k, (const unsigned char *)"last", 4);
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  server_to_client(&k, 100);
  CHECK_EQ(k.c.key_updates, 0);
  free(buf);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* Handshake messages a client may not send after the handshake. */
TEST(unexpected_handshake_messages_fail) {
  static const unsigned char finished[36] = {SSL3_MT_FINISHED, 0, 0, 32};
  static const unsigned char ticket[] = {SSL3_MT_NEWSESSION_TICKET, 0, 0, 0};
  static const unsigned char hello[] = {SSL3_MT_CLIENT_HELLO, 0, 0, 0};
  static const unsigned char unknown[] = {99, 0, 0, 1, 0};
  struct {
    const unsigned char *msg;
    size_t n;
  } cases[] = {{finished, 36}, {ticket, 4}, {hello, 4}, {unknown, 5}};
  for (int i = 0; i < 4; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    printf("  message type %d:\n", cases[i].msg[0]);
    expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, cases[i].msg, cases[i].n, 0),
                SSL_AD_UNEXPECTED_MESSAGE);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* The record header's version must be 0x0303 even when the record is
 * sealed with that header (5.1: legacy_record_version): decode_error, or
 * protocol_version when the major version is not 3. */
TEST(record_version_other_than_tls12_fails) {
  static const unsigned versions[] = {0x0301, 0x0304, 0x0203};
  static const int alerts[] = {SSL_AD_DECODE_ERROR, SSL_AD_DECODE_ERROR, SSL_AD_PROTOCOL_VERSION};
  for (int i = 0; i < 3; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    unsigned char in[16], rec[64];
    size_t n = seal_v(&s, versions[i], in, inner(in, "abc", 3, SSL3_RT_APPLICATION_DATA, 0), rec);
    printf("  version 0x%04x:\n", versions[i]);
    expect_dead(&k, feed(&k, rec, n), alerts[i]);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* Anything after close_notify is ignored (6.1), even a good record. */
TEST(data_after_close_notify_is_ignored) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  unsigned char buf[1024], in[64];
  size_t len = 0;
  len += seal(&s, in, inner(in, "before", 6, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  len += seal(&s, in, inner(in, "\x01\x00", 2, SSL3_RT_ALERT, 0), buf + len);
  len += seal(&s, in, inner(in, "after", 5, SSL3_RT_APPLICATION_DATA, 0), buf + len);
  CHECK_EQ(feed(&k, buf, len), 6);
  server_got(&k, (const unsigned char *)"before", 6);
  CHECK_EQ(feed(&k, NULL, 0), UV_EOF);
  len = seal(&s, in, inner(in, "later", 5, SSL3_RT_APPLICATION_DATA, 0), buf);
  CHECK_EQ(feed(&k, buf, len), UV_EOF);
  CHECK_EQ(k.plain.len, 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* An alert other than close_notify and user_canceled ends the connection,
 * whatever its level says (RFC 8446 6: the level can be ignored), and is
 * not answered. */
TEST(alerts_from_client_end_it) {
  static const char *const alerts[] = {"\x02\x28", "\x01\x28", "\x01\x78", "\x02\x14", "\x01\xff"};
  for (int i = 0; i < 5; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    forged_data(&k, &s, 10, 0);
    printf("  alert %d/%d:\n", alerts[i][0], (unsigned char)alerts[i][1]);
    CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_ALERT, alerts[i], 2, 0), GW_ETLS);
    CHECK_EQ(k.plain.len, 0);
    const char *p;
    CHECK_EQ(gw_tls_pending(k.t, &p), 0);
    CHECK_EQ(gw_tls_write(k.t, "x", 1), GW_ETLS);
    CHECK_EQ(feed(&k, NULL, 0), GW_ETLS);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* user_canceled is passed over, at either level, but OpenSSL takes no more
 * than 4 alerts in a row without other records between them: the 5th is
 * unexpected_message ("too many warn alerts"). */
TEST(user_canceled_is_ignored_four_times_in_a_row) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 4; i++)
      CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_ALERT, i % 2 ? "\x01\x5a" : "\x02\x5a", 2, 0), 0);
    forged_data(&k, &s, 100, 0);
  }
  const char *p;
  CHECK_EQ(gw_tls_pending(k.t, &p), 0);
  server_to_client(&k, 100);
  for (int i = 0; i < 4; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_ALERT, "\x01\x5a", 2, 0), 0);
  expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_ALERT, "\x01\x5a", 2, 0), SSL_AD_UNEXPECTED_MESSAGE);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* An alert record holds exactly one two-byte alert (5.1: never fragmented,
 * never coalesced); anything else is refused with unexpected_message. */
TEST(malformed_alert_records_fail) {
  static const struct {
    const char *bytes;
    size_t n;
  } cases[] = {{"\x01", 1}, {"\x01\x00\x01", 3}, {"\x01\x5a\x01\x00", 4}, {"", 0}};
  for (int i = 0; i < 4; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, NULL);
    printf("  %zu bytes:\n", cases[i].n);
    expect_dead(&k, feed_sealed(&k, &s, SSL3_RT_ALERT, cases[i].bytes, cases[i].n, 0),
                SSL_AD_UNEXPECTED_MESSAGE);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* The sealer's records and key updates, under each suite and with padding:
 * the server's key schedule matches RFC 8446's, not just OpenSSL's client. */
TEST(sealed_records_each_suite) {
  static const char *const suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                       "TLS_CHACHA20_POLY1305_SHA256"};
  gw_tls_ctx_t *ctx = server_ctx(0);
  for (int i = 0; i < 3; i++) {
    conn_t k;
    sealer_t s;
    forged_ready(&k, ctx, &s, suites[i]);
    forged_data(&k, &s, 16384, 0);
    forged_data(&k, &s, 100, 1000);
    CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_REQUESTED, 5, 0), 0);
    sealer_update(&s);
    forged_data(&k, &s, 5000, 7);
    server_to_client(&k, 5000);
    CHECK_EQ(k.c.key_updates, 1);
    conn_close(&k);
  }
  gw_tls_ctx_free(ctx);
}

/* gw_tls_error after a record failed names the failure (conn.c and
 * client.c log it): ours on TLS 1.3, OpenSSL's on TLS 1.2. */
TEST(record_failure_names_its_reason) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_ready(&k, ctx);
  size_t n;
  unsigned char *rec = one_record(&k, &n);
  rec[60] ^= 1;
  CHECK_EQ(feed(&k, rec, n), GW_ETLS);
  CHECK_MSG(strstr(gw_tls_error(k.t), "bad record mac") != NULL, "reason: %s", gw_tls_error(k.t));
  free(rec);
  conn_close(&k);
  conn_ready(&k, ctx);
  static const unsigned char big[5] = {0x17, 0x03, 0x03, 0x42, 0x00};
  CHECK_EQ(feed(&k, big, 5), GW_ETLS);
  CHECK_MSG(strstr(gw_tls_error(k.t), "size limit") != NULL, "reason: %s", gw_tls_error(k.t));
  conn_close(&k);
  conn_open(&k, ctx, TLS1_2_VERSION);
  REQUIRE(SSL_set_cipher_list(k.c.ssl, "ECDHE-ECDSA-AES128-GCM-SHA256") == 1);
  handshake(&k);
  rec = one_record(&k, &n);
  rec[n - 3] ^= 1;
  CHECK_EQ(feed(&k, rec, n), GW_ETLS);
  CHECK_STR_EQ(gw_tls_error(k.t), "decryption failed or bad record mac");
  free(rec);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* ==== found in review ==== */

/* A client that negotiated max_fragment_length (RFC 6066) gets records no
 * longer than it asked for, in TLS 1.3 too: that connection stays with
 * OpenSSL's record layer, which honours the limit both ways. */
static void max_fragment_case(int version) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  conn_open(&k, ctx, version);
  REQUIRE(SSL_set_tlsext_max_fragment_length(k.c.ssl, TLSEXT_max_fragment_length_512) == 1);
  handshake(&k);
  CHECK(k.t->rec == NULL);
  to_client(&k);
  client_poll(&k.c);
  unsigned char *data = rnd(2000);
  CHECK_EQ(gw_tls_write(k.t, (const char *)data, 2000), 0);
  records_t r;
  CHECK(pending_records(&k, &r));
  for (size_t i = 0; i < r.n; i++) CHECK_MSG(r.len[i] <= 512 + 256, "record %zu: %zu bytes", i, r.len[i]);
  to_client(&k);
  unsigned char got[2001];
  size_t n = 0, total = 0;
  while (total < 2000 && SSL_read_ex(k.c.ssl, got + total, sizeof got - total, &n) == 1) total += n;
  CHECK_EQ(total, (size_t)2000);
  CHECK(memcmp(got, data, 2000) == 0);
  ERR_clear_error();
  free(data);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

TEST(max_fragment_length_is_honoured) {
  max_fragment_case(TLS1_2_VERSION);
  max_fragment_case(TLS1_3_VERSION);
}

/* After a connection is gone, nothing in the process can still compute an
 * HMAC under its traffic secret (tls_record.c keeps no keyed context). */
TEST(no_hmac_context_keeps_a_secret) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  forged_data(&k, &s, 10, 0);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_NOT_REQUESTED, 5, 0), 0);
  sealer_update(&s);
  forged_data(&k, &s, 10, 0);
  const suite_t *suite = usable_suite(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(k.c.ssl)));
  REQUIRE(suite != NULL);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
  static const unsigned char msg[] = "anything at all";
  unsigned char via_ours[EVP_MAX_MD_SIZE], with_secret[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  int ok = hmac(suite, NULL, 0, msg, sizeof msg, via_ours); /* no key: only a kept one could serve */
  REQUIRE(HMAC(s.md, s.secret, (int)s.hlen, msg, sizeof msg, with_secret, &len) != NULL);
  CHECK(!ok || memcmp(via_ours, with_secret, len) != 0);
}

/* Any record with content resets the count of empty ones (OpenSSL's rule):
 * 32 empty records, a KeyUpdate, 32 more are fine. */
TEST(a_key_update_resets_the_empty_record_count) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  for (int i = 0; i < 32; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, 0), 0);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_HANDSHAKE, KEY_UPDATE_NOT_REQUESTED, 5, 0), 0);
  sealer_update(&s);
  for (int i = 0; i < 32; i++) CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_APPLICATION_DATA, NULL, 0, 0), 0);
  forged_data(&k, &s, 10, 0);
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* A bad header fails when it arrives, not after its (up to 16 KB) body. */
TEST(a_bad_header_fails_before_its_body) {
  static const unsigned char cleartext[5] = {0x16, 0x03, 0x03, 0x40, 0x00};
  static const unsigned char version[5] = {0x17, 0x03, 0x01, 0x40, 0x00};
  const unsigned char *cases[] = {cleartext, version};
  for (int i = 0; i < 2; i++) {
    gw_tls_ctx_t *ctx = server_ctx(0);
    conn_t k;
    conn_ready(&k, ctx);
    CHECK_EQ(feed(&k, cases[i], 5), GW_ETLS);
    conn_close(&k);
    gw_tls_ctx_free(ctx);
  }
}

/* The log says which alert the client sent. */
TEST(a_client_alert_is_named) {
  gw_tls_ctx_t *ctx = server_ctx(0);
  conn_t k;
  sealer_t s;
  forged_ready(&k, ctx, &s, NULL);
  CHECK_EQ(feed_sealed(&k, &s, SSL3_RT_ALERT, "\x02\x2a", 2, 0), GW_ETLS);
  CHECK_MSG(strstr(gw_tls_error(k.t), "bad certificate") != NULL, "reason: %s", gw_tls_error(k.t));
  conn_close(&k);
  gw_tls_ctx_free(ctx);
}

/* Once, in the parent before main (tls_certs.h). */
__attribute__((constructor)) static void setup(void) {
  certs_dir("/tmp/gwtest-tlsr-XXXXXX");
  make_cert("a", "a.test");
}

TEST_LIST(T(client_bytes_one_at_a_time), T(client_bytes_in_random_chunks), T(many_records_in_one_read),
          T(ciphertext_in_the_plaintext_buffer), T(padded_client_records),
          T(largest_and_smallest_client_records), T(server_write_sizes),
          T(writev_small_pieces_make_one_record), T(writev_mixed_pieces), T(client_key_update_not_requested),
          T(client_key_update_requested), T(key_update_crossing_server_data), T(tampered_records_fail),
          T(tampered_length_longer_waits_then_fails), T(good_then_bad_record_in_one_read),
          T(oversized_records_fail), T(truncated_record_waits_for_the_rest),
          T(replayed_reordered_or_lost_records_fail), T(cleartext_records_after_handshake_fail),
          T(close_notify_after_data), T(close_notify_alone_and_in_pieces), T(server_shutdown),
          T(request_in_the_same_read_as_finished), T(session_tickets_on), T(session_tickets_off),
          T(each_tls13_suite), T(ccm_suites_are_refused), T(tls12_suites),
          T(server_writes_first_and_turns_interleave), T(empty_records_are_skipped),
          T(too_many_empty_records_fail), T(inner_plaintext_limits), T(inner_plaintext_without_type_fails),
          T(inner_content_types_refused), T(key_update_in_two_records), T(key_update_not_ending_its_record_fails),
          T(bad_key_updates_fail), T(many_key_updates_in_a_row), T(unexpected_handshake_messages_fail),
          T(record_version_other_than_tls12_fails), T(data_after_close_notify_is_ignored),
          T(alerts_from_client_end_it), T(user_canceled_is_ignored_four_times_in_a_row),
          T(malformed_alert_records_fail), T(sealed_records_each_suite), T(record_failure_names_its_reason),
          T(max_fragment_length_is_honoured), T(no_hmac_context_keeps_a_secret),
          T(a_key_update_resets_the_empty_record_count), T(a_bad_header_fails_before_its_body),
          T(a_client_alert_is_named))
