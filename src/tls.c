/*
 * tls.c: server TLS contexts and per-connection TLS states (see tls.h).
 *
 * Each connection's SSL reads from a memory BIO that gw_tls_read fills with
 * what the socket delivered, and writes into a small BIO of our own that
 * appends to a gw_buf_t (`out`). The connection drains `out` after every
 * call that may have produced bytes: handshake messages, TLS 1.3 session
 * tickets, alerts, records. A memory BIO never asks to retry a write, so
 * SSL_write always takes everything; backpressure stays where it was, on
 * the connection's queued socket writes.
 *
 * OpenSSL keeps its errors in a per-thread queue that other code (the
 * crypto FFI) also uses, so every SSL_* call here starts from a cleared
 * queue and leaves it cleared.
 *
 * Sessions: the session cache is off and tickets (tls_tickets.c) carry
 * every resumable session, TLS 1.2 and 1.3 alike, so a session resumes on
 * whichever worker the kernel hands the next connection to. One TLS 1.3
 * ticket per handshake instead of OpenSSL's two: clients use one, and each
 * costs an encryption and a MAC on every full handshake.
 */
#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "errors.h"
#include "mem.h"
#include "tls_record.h"
#include "tls_tickets.h"

/* TLS 1.2 only: forward secrecy and AEAD (Mozilla's "intermediate" list
 * without DHE). TLS 1.3's suites are all modern; OpenSSL's default stands. */
#define CIPHERS_TLS12                                                                        \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* TLS 1.3 suites, in Mozilla's "intermediate" order (the server's order
 * wins): AES-128-GCM first, as for TLS 1.2 above. OpenSSL's default puts
 * AES-256-GCM first, whose SHA-384 key schedule costs more for no security
 * a client needs from this hop. */
#define SUITES_TLS13 "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* Key exchange groups, best first: no finite-field groups (TLS 1.3 would
 * offer ffdhe2048..8192, whose cost a client chooses), no P-521 or X448. */
#define GROUPS "X25519:P-256:P-384"

/* Above this, `out`'s memory is returned once drained (a large answer must
 * not pin its size on an idle keep-alive connection). */
#define OUT_KEEP_MAX (64 * 1024)

/* One certificate and the names it is valid for. */
typedef struct {
  SSL_CTX *ssl_ctx; /* owns the certificate chain and key */
  char **names;     /* lower-case DNS names (SAN, else the CN); "*.x.y" kept as written */
  size_t nnames;
} server_cert_t;

/* One per TLS listener and configuration load. Refcounted: the worker's
 * reference (dropped with gw_tls_ctx_free when a reload replaces it or the
 * worker exits) and one per gw_tls_t made from it; freed at zero. */
struct gw_tls_ctx_s {
  server_cert_t *certs; /* ncerts entries; certs[0] is the default */
  size_t ncerts;
  unsigned refs;
};

/* Owned by its connection; freed by gw_tls_free. */
struct gw_tls_s {
  SSL *ssl;            /* owns both BIOs */
  gw_tls_ctx_t *ctx;   /* a reference: SNI reads its certificate list */
  gw_tls_peer_t *peer; /* the client certificate's description, made on first use */
  uint8_t peer_done;   /* peer was looked at (NULL then means: no certificate) */
  BIO *rbio;           /* ciphertext from the socket (memory BIO) */
  gw_buf_t out;        /* ciphertext for the socket (written by out_bio) */
  const char *reason;  /* why it failed (static OpenSSL text), or NULL */
  uint8_t ready;       /* handshake done */
  uint8_t failed;      /* a fatal error: no further reads or writes */
  uint8_t shut;        /* close_notify queued */
  uint8_t peer_closed; /* the peer's close_notify was read (OpenSSL's record layer) */
  /* TLS 1.3 server connections: the application traffic secrets OpenSSL
   * logs during the handshake (wiped once used), then our own record
   * layer (tls_record.h), which replaces SSL_read/SSL_write from the end
   * of the handshake on. NULL rec: OpenSSL's record layer serves. */
  uint8_t secrets_seen; /* bit 0: the client's, bit 1: the server's */
  uint8_t secret_len;
  unsigned char client_secret[GW_TLS_REC_SECRET_MAX];
  unsigned char server_secret[GW_TLS_REC_SECRET_MAX];
  gw_tls_rec_t *rec;
};

/* ---- the outgoing BIO: appends to gw_tls_t.out ---- */

static BIO_METHOD *out_method;

static int out_write(BIO *b, const char *p, int len) {
  gw_tls_t *t = BIO_get_data(b);
  if (len <= 0) return 0;
  gw_buf_append(&t->out, p, (size_t)len);
  return len;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
  /* SSL flushes after each flight; the bytes are already in `out`. */
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int out_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static int init_out_method(void) {
  if (out_method) return 0;
  out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "gateway out");
  if (!out_method) return GW_ENOSPACE;
  BIO_meth_set_write(out_method, out_write);
  BIO_meth_set_ctrl(out_method, out_ctrl);
  BIO_meth_set_create(out_method, out_create);
  return 0;
}

/* ---- secrets for the record layer of our own ---- */

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes up to `max` bytes of hex; returns the byte count, 0 if bad. */
static size_t unhex(const char *p, unsigned char *out, size_t max) {
  size_t n = 0;
  while (p[0] && p[1] && n < max) {
    int hi = hex_digit(p[0]), lo = hex_digit(p[1]);
    if (hi < 0 || lo < 0) return 0;
    out[n++] = (unsigned char)(hi << 4 | lo);
    p += 2;
  }
  return *p ? 0 : n;
}

/* OpenSSL's key log ("LABEL <client random> <secret>", NSS's format) is
 * the one public way OpenSSL 3.0 hands out TLS 1.3 traffic secrets. We
 * keep the two application secrets of server connections; nothing is
 * written anywhere. */
static void on_keylog(const SSL *ssl, const char *line) {
  gw_tls_t *t = SSL_get_app_data(ssl);
  if (!t) return;
  static const char client_label[] = "CLIENT_TRAFFIC_SECRET_0 ", server_label[] = "SERVER_TRAFFIC_SECRET_0 ";
  unsigned char *dst;
  uint8_t bit;
  if (strncmp(line, client_label, sizeof client_label - 1) == 0) {
    dst = t->client_secret;
    bit = 1;
  } else if (strncmp(line, server_label, sizeof server_label - 1) == 0) {
    dst = t->server_secret;
    bit = 2;
  } else {
    return;
  }
  const char *secret = strchr(line + sizeof client_label - 1, ' ');
  size_t n = secret ? unhex(secret + 1, dst, GW_TLS_REC_SECRET_MAX) : 0;
  if (n == 0 || (t->secret_len && n != t->secret_len)) return;
  t->secret_len = (uint8_t)n;
  t->secrets_seen |= bit;
}

/* At the end of a TLS 1.3 handshake: our record layer takes over if
 * OpenSSL holds no record it has read ahead, no smaller record size was
 * negotiated, the suite is one we handle,
 * and the records OpenSSL already sealed with the server's application key
 * (its session tickets, written from `mark` on in `out`) open with the key
 * we derived, which also tells our write sequence number. Otherwise
 * OpenSSL's record layer goes on serving the connection. */
static void take_over_records(gw_tls_t *t, size_t mark) {
  /* A client that negotiated smaller records (max_fragment_length, RFC
   * 6066: constrained devices) stays with OpenSSL, which honours it. */
  if (t->secrets_seen == 3 && SSL_version(t->ssl) == TLS1_3_VERSION && !SSL_has_pending(t->ssl) &&
      SSL_SESSION_get_max_fragment_length(SSL_get_session(t->ssl)) == TLSEXT_max_fragment_length_DISABLED) {
    uint16_t suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(t->ssl));
    t->rec = gw_tls_rec_new(suite, t->client_secret, t->server_secret, t->secret_len, t->out.base + mark,
                            t->out.len - mark);
  }
  OPENSSL_cleanse(t->client_secret, sizeof t->client_secret);
  OPENSSL_cleanse(t->server_secret, sizeof t->server_secret);
  t->secrets_seen = 0;
}

/* ---- contexts ---- */

static const char *ssl_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : "unknown error";
}

/* RFC 7301: only http/1.1 is spoken here. A client that offers ALPN without
 * it gets the no_application_protocol alert (3.2); one that offers no ALPN
 * at all is served HTTP/1.1 as usual. */
static int on_alpn(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned inlen, void *arg) {
  static const unsigned char h11[] = "http/1.1";
  for (unsigned i = 0; i < inlen;) {
    unsigned len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == sizeof h11 - 1 && memcmp(in + i + 1, h11, len) == 0) {
      *out = in + i + 1;
      *outlen = (unsigned char)len;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* "*.example.com" matches "a.example.com" (exactly one label before the
 * suffix), never "example.com" or "a.b.example.com". */
static int wildcard_match(const char *pattern, const char *name) {
  if (pattern[0] != '*' || pattern[1] != '.') return 0;
  const char *dot = strchr(name, '.');
  return dot && dot != name && strcasecmp(dot + 1, pattern + 2) == 0;
}

static server_cert_t *find_cert(gw_tls_ctx_t *ctx, const char *name) {
  for (size_t i = 0; i < ctx->ncerts; i++)
    for (size_t k = 0; k < ctx->certs[i].nnames; k++)
      if (strcasecmp(ctx->certs[i].names[k], name) == 0) return &ctx->certs[i];
  for (size_t i = 0; i < ctx->ncerts; i++)
    for (size_t k = 0; k < ctx->certs[i].nnames; k++)
      if (wildcard_match(ctx->certs[i].names[k], name)) return &ctx->certs[i];
  return NULL;
}

/* SNI: switch to the certificate for the requested name; without a name, or
 * with one no certificate covers, the default (first) one answers. */
static int on_servername(SSL *s, int *alert, void *arg) {
  gw_tls_ctx_t *ctx = arg;
  const char *name = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
  if (!name || ctx->ncerts < 2) return SSL_TLSEXT_ERR_OK;
  server_cert_t *c = find_cert(ctx, name);
  if (c && c->ssl_ctx != SSL_get_SSL_CTX(s)) SSL_set_SSL_CTX(s, c->ssl_ctx);
  return SSL_TLSEXT_ERR_OK;
}

static void add_name(server_cert_t *c, const char *p, size_t len) {
  if (len == 0 || memchr(p, '\0', len)) return;
  c->names = gw_xrealloc(c->names, (c->nnames + 1) * sizeof *c->names);
  char *s = gw_xstrndup(p, len);
  for (char *q = s; *q; q++)
    if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
  c->names[c->nnames++] = s;
}

/* The DNS names of the leaf: subjectAltName entries, or the subject's CN
 * when it has none (RFC 6125 6.4.4). */
static void collect_names(server_cert_t *c, X509 *x) {
  GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
      const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
      if (g->type != GEN_DNS) continue;
      add_name(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
               (size_t)ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(sans);
  }
  if (c->nnames > 0) return;
  char cn[256];
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
  if (n > 0) add_name(c, cn, (size_t)n);
}

/* Optional client certificates: ask for one, accept whatever comes, and
 * let SSL_get_verify_result tell the script whether it verified. */
static int on_verify_optional(int ok, X509_STORE_CTX *x) { return 1; }

/* The session id context: a session resumes only where it was made, on
 * the same listener with the same client-certificate settings (a session
 * made without a client certificate must not resume where one is
 * required). The same in every worker, so tickets travel between them. */
static int set_session_context(SSL_CTX *s, const gw_tls_server_t *conf) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  char v[8];
  snprintf(v, sizeof v, "|%d|", (int)conf->verify);
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  int ok = m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1;
  const char *id = conf->id ? conf->id : "";
  const char *ca = conf->client_ca ? conf->client_ca : "";
  ok = ok && EVP_DigestUpdate(m, id, strlen(id)) == 1 && EVP_DigestUpdate(m, v, strlen(v)) == 1 &&
       EVP_DigestUpdate(m, ca, strlen(ca)) == 1 && EVP_DigestFinal_ex(m, md, &len) == 1;
  EVP_MD_CTX_free(m);
  if (len > SSL_MAX_SID_CTX_LENGTH) len = SSL_MAX_SID_CTX_LENGTH;
  return ok && SSL_CTX_set_session_id_context(s, md, len) == 1;
}

static int readable(const char *what, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
    return 0;
  }
  fclose(f);
  return 1;
}

/* Client certificates: the CAs they must chain to, whose names are also
 * sent to the client in the CertificateRequest so it can pick one. */
static int set_client_auth(SSL_CTX *s, const gw_tls_server_t *conf, char *err, size_t errlen) {
  if (conf->verify == GW_TLS_VERIFY_OFF || !conf->client_ca) return 0;
  if (!readable("client_ca", conf->client_ca, err, errlen)) return GW_ECONFIG;
  STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->client_ca);
  if (!names || sk_X509_NAME_num(names) == 0) {
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    ERR_clear_error();
    snprintf(err, errlen, "bad client_ca %s: no certificate in it", conf->client_ca);
    return GW_ECONFIG;
  }
  SSL_CTX_set_client_CA_list(s, names); /* takes `names` */
  if (SSL_CTX_load_verify_locations(s, conf->client_ca, NULL) != 1) {
    snprintf(err, errlen, "bad client_ca %s: %s", conf->client_ca, ssl_reason());
    return GW_ECONFIG;
  }
  if (conf->verify == GW_TLS_VERIFY_ON)
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  else SSL_CTX_set_verify(s, SSL_VERIFY_PEER, on_verify_optional);
  return 0;
}

/* The same settings on every certificate's SSL_CTX: after SNI switches
 * contexts, OpenSSL reads some of them (ALPN, the client CAs) from the new
 * one. */
static int load_cert(gw_tls_ctx_t *ctx, server_cert_t *c, const gw_tls_cert_t *cfg,
                     const gw_tls_server_t *conf, char *err, size_t errlen) {
  if (!readable("certificate", cfg->cert, err, errlen) || !readable("key", cfg->key, err, errlen))
    return GW_ECONFIG;
  SSL_CTX *s = SSL_CTX_new(TLS_server_method());
  if (!s) {
    snprintf(err, errlen, "cannot make a TLS context: %s", ssl_reason());
    return GW_ENOSPACE;
  }
  c->ssl_ctx = s;
  SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
  /* The server's order of ciphers wins (every one offered is strong; this
   * keeps a client from picking the slowest). */
  SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(s, on_alpn, NULL);
  SSL_CTX_set_tlsext_servername_callback(s, on_servername);
  SSL_CTX_set_tlsext_servername_arg(s, ctx);
  SSL_CTX_set_keylog_callback(s, on_keylog);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(s, 1);
  SSL_CTX_set_timeout(s, gw_tickets_lifetime()); /* also the lifetime hint clients get */
  if (conf->no_resumption) {
    /* TLS 1.3 would still send (stateful) tickets: send none at all. */
    SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(s, 0);
  } else {
    SSL_CTX_set_tlsext_ticket_key_evp_cb(s, gw_tickets_cb);
  }
  if (!set_session_context(s, conf)) {
    snprintf(err, errlen, "cannot set the session id context: %s", ssl_reason());
    return GW_ENOSPACE;
  }
  int rc = set_client_auth(s, conf, err, errlen);
  if (rc) return rc;
  if (SSL_CTX_set_cipher_list(s, CIPHERS_TLS12) != 1) {
    snprintf(err, errlen, "cannot set the cipher list: %s", ssl_reason());
    return GW_ECONFIG;
  }
  if (SSL_CTX_set_ciphersuites(s, SUITES_TLS13) != 1) {
    snprintf(err, errlen, "cannot set the TLS 1.3 suites: %s", ssl_reason());
    return GW_ECONFIG;
  }
  if (SSL_CTX_set1_groups_list(s, GROUPS) != 1) {
    snprintf(err, errlen, "cannot set the key exchange groups: %s", ssl_reason());
    return GW_ECONFIG;
  }
  if (SSL_CTX_use_certificate_chain_file(s, cfg->cert) != 1) {
    snprintf(err, errlen, "bad certificate %s: %s", cfg->cert, ssl_reason());
    return GW_ECONFIG;
  }
  if (SSL_CTX_use_PrivateKey_file(s, cfg->key, SSL_FILETYPE_PEM) != 1) {
    snprintf(err, errlen, "bad key %s: %s", cfg->key, ssl_reason());
    return GW_ECONFIG;
  }
  if (SSL_CTX_check_private_key(s) != 1) {
    snprintf(err, errlen, "key %s does not match certificate %s", cfg->key, cfg->cert);
    ERR_clear_error();
    return GW_ECONFIG;
  }
  collect_names(c, SSL_CTX_get0_certificate(s));
  return 0;
}

gw_tls_ctx_t *gw_tls_ctx_make(const gw_tls_server_t *conf, char *err, size_t errlen) {
  ERR_clear_error();
  size_t n = conf->ncerts;
  if (n == 0) {
    snprintf(err, errlen, "no certificate");
    return NULL;
  }
  if (init_out_method() != 0) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  gw_tls_ctx_t *ctx = gw_xcalloc(1, sizeof *ctx);
  ctx->refs = 1;
  ctx->certs = gw_xcalloc(n, sizeof *ctx->certs);
  for (size_t i = 0; i < n; i++) {
    ctx->ncerts++;
    if (load_cert(ctx, &ctx->certs[i], &conf->certs[i], conf, err, errlen) != 0) {
      gw_tls_ctx_free(ctx);
      return NULL;
    }
  }
  return ctx;
}

gw_tls_ctx_t *gw_tls_ctx_new(const gw_tls_cert_t *certs, size_t n, char *err, size_t errlen) {
  gw_tls_server_t conf = {certs, n, NULL, GW_TLS_VERIFY_OFF, NULL, 0};
  return gw_tls_ctx_make(&conf, err, errlen);
}

int gw_tls_check_ca(const char *path, char *err, size_t errlen) {
  ERR_clear_error();
  SSL_CTX *s = SSL_CTX_new(TLS_server_method());
  if (!s) {
    snprintf(err, errlen, "cannot make a TLS context: %s", ssl_reason());
    return GW_ENOSPACE;
  }
  gw_tls_server_t conf = {NULL, 0, path, GW_TLS_VERIFY_ON, NULL, 0};
  int rc = set_client_auth(s, &conf, err, errlen);
  SSL_CTX_free(s);
  ERR_clear_error();
  return rc;
}

void gw_tls_ctx_free(gw_tls_ctx_t *ctx) {
  if (!ctx || --ctx->refs > 0) return;
  for (size_t i = 0; i < ctx->ncerts; i++) {
    SSL_CTX_free(ctx->certs[i].ssl_ctx);
    for (size_t k = 0; k < ctx->certs[i].nnames; k++) free(ctx->certs[i].names[k]);
    free(ctx->certs[i].names);
  }
  free(ctx->certs);
  free(ctx);
}

/* ---- connections ---- */

gw_tls_t *gw_tls_new(gw_tls_ctx_t *ctx) {
  ERR_clear_error();
  gw_tls_t *t = gw_xcalloc(1, sizeof *t);
  t->ssl = SSL_new(ctx->certs[0].ssl_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(out_method);
  if (!t->ssl || !t->rbio || !wbio) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(wbio);
    free(t);
    ERR_clear_error();
    return NULL;
  }
  BIO_set_data(wbio, t);
  SSL_set_bio(t->ssl, t->rbio, wbio); /* the SSL owns both from here */
  SSL_set_accept_state(t->ssl);
  SSL_set_app_data(t->ssl, t); /* for on_keylog */
  t->ctx = ctx;
  ctx->refs++;
  return t;
}

static void free_peer(gw_tls_peer_t *p) {
  if (!p) return;
  free(p->subject);
  free(p->issuer);
  free(p->serial);
  free(p->fingerprint);
  free(p);
}

void gw_tls_free(gw_tls_t *t) {
  if (!t) return;
  SSL_free(t->ssl);
  gw_tls_rec_free(t->rec);
  OPENSSL_cleanse(t->client_secret, sizeof t->client_secret);
  OPENSSL_cleanse(t->server_secret, sizeof t->server_secret);
  gw_tls_ctx_free(t->ctx); /* after SSL_free: the SSL may still use its SSL_CTX */
  free_peer(t->peer);
  gw_buf_free(&t->out);
  free(t);
}

static ssize_t fail(gw_tls_t *t) {
  t->failed = 1;
  t->reason = ssl_reason();
  return GW_ETLS;
}

/* ERR_clear_error wipes all 16 slots of the queue whether or not they hold
 * anything, some 400 instructions: on the per-record paths, look first. */
static void clear_errors(void) {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

/* A result of our record layer, with its failure noted as OpenSSL's are. */
static ssize_t rec_result(gw_tls_t *t, ssize_t rc) {
  const char *why = gw_tls_rec_error(t->rec);
  if (why) t->reason = why;
  if (rc == GW_ETLS) t->failed = 1;
  return rc;
}

/* The first records after the handshake, which OpenSSL left in its BIO. */
static ssize_t read_leftover(gw_tls_t *t, gw_buf_t *plain) {
  char *p;
  long n = BIO_get_mem_data(t->rbio, &p);
  ssize_t rc = n > 0 ? gw_tls_rec_read(t->rec, p, (size_t)n, plain, &t->out) : 0;
  (void)BIO_reset(t->rbio);
  return rec_result(t, rc);
}

ssize_t gw_tls_read(gw_tls_t *t, const char *in, size_t n, gw_buf_t *plain) {
  if (t->failed) return GW_ETLS;
  if (t->rec) return rec_result(t, gw_tls_rec_read(t->rec, in, n, plain, &t->out));
  clear_errors();
  /* Copy `in` first: growing `plain` below may move the memory it is in. */
  if (n > 0 && BIO_write(t->rbio, in, (int)n) != (int)n) return fail(t);
  if (!t->ready) {
    size_t mark = t->out.len;
    int rc = SSL_do_handshake(t->ssl);
    if (rc != 1) {
      int e = SSL_get_error(t->ssl, rc);
      if (e == SSL_ERROR_WANT_READ) return 0;
      return fail(t);
    }
    t->ready = 1;
    if (t->secrets_seen) take_over_records(t, mark);
    if (t->rec) return read_leftover(t, plain);
  }
  ssize_t total = 0;
  for (;;) {
    gw_buf_reserve(plain, 16384);
    size_t got = 0;
    int rc = SSL_read_ex(t->ssl, plain->base + plain->len, plain->cap - plain->len, &got);
    if (rc == 1) {
      plain->len += got;
      total += (ssize_t)got;
      /* Nothing buffered on either side: the next SSL_read_ex could only
       * say WANT_READ, so save the call (one request is one record). */
      if (!SSL_has_pending(t->ssl) && BIO_ctrl_pending(t->rbio) == 0) break;
      continue;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) break;
    /* close_notify: plaintext read before it still counts; the socket's EOF
     * follows, or the connection's timeouts end it. */
    if (e == SSL_ERROR_ZERO_RETURN) {
      ERR_clear_error();
      t->peer_closed = 1;
      return total > 0 ? total : UV_EOF;
    }
    /* Hand over what decrypted cleanly; the next read reports the error
     * (fail takes the reason from the error queue and clears it). */
    ssize_t failed = fail(t);
    return total > 0 ? total : failed;
  }
  return total;
}

int gw_tls_ready(const gw_tls_t *t) { return t->ready; }

int gw_tls_peer_closed(const gw_tls_t *t) { return t->rec ? gw_tls_rec_peer_closed(t->rec) : t->peer_closed; }

int gw_tls_write(gw_tls_t *t, const char *p, size_t len) {
  if (t->failed || !t->ready || t->shut) return GW_ETLS;
  if (t->rec) {
    uv_buf_t one = {.base = (char *)p, .len = len}; /* len is a size_t on Unix */
    return (int)rec_result(t, gw_tls_rec_write(t->rec, &one, 1, &t->out));
  }
  clear_errors();
  while (len > 0) {
    size_t done = 0;
    if (SSL_write_ex(t->ssl, p, len, &done) != 1) return (int)fail(t);
    p += done;
    len -= done;
  }
  return 0;
}

int gw_tls_writev(gw_tls_t *t, const uv_buf_t *bufs, unsigned n) {
  if (t->rec) {
    if (t->failed || t->shut) return GW_ETLS;
    return (int)rec_result(t, gw_tls_rec_write(t->rec, bufs, n, &t->out));
  }
  /* Each SSL_write makes at least one record: one AEAD seal and 22 bytes
   * of framing (TLS 1.3). Joining small pieces saves both. */
  char joined[16384]; /* one record's plaintext at most */
  size_t used = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t len = bufs[i].len;
    if (used + len <= sizeof joined) {
      memcpy(joined + used, bufs[i].base, len);
      used += len;
      continue;
    }
    if (used > 0) {
      int rc = gw_tls_write(t, joined, used);
      if (rc) return rc;
      used = 0;
    }
    if (len <= sizeof joined) {
      memcpy(joined, bufs[i].base, len);
      used = len;
    } else {
      int rc = gw_tls_write(t, bufs[i].base, len);
      if (rc) return rc;
    }
  }
  return used > 0 ? gw_tls_write(t, joined, used) : 0;
}

void gw_tls_shutdown(gw_tls_t *t) {
  if (t->shut || t->failed || !t->ready) return;
  t->shut = 1;
  if (t->rec) {
    gw_tls_rec_close(t->rec, &t->out);
    return;
  }
  ERR_clear_error();
  SSL_shutdown(t->ssl); /* queues close_notify; we do not wait for the peer's */
  ERR_clear_error();
}

size_t gw_tls_pending(gw_tls_t *t, const char **p) {
  *p = t->out.base;
  return t->out.len;
}

void gw_tls_drained(gw_tls_t *t) {
  t->out.len = 0;
  if (t->out.cap > OUT_KEEP_MAX) gw_buf_free(&t->out);
}

const char *gw_tls_error(const gw_tls_t *t) { return t->reason ? t->reason : "no error"; }

/* ---- the client certificate ---- */

static char *name_text(const X509_NAME *n) {
  BIO *b = BIO_new(BIO_s_mem());
  char *out = NULL;
  if (b && X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
    char *p;
    long len = BIO_get_mem_data(b, &p);
    out = gw_xstrndup(p, len > 0 ? (size_t)len : 0);
  }
  BIO_free(b);
  return out ? out : gw_xstrndup("", 0);
}

static char *hex(const unsigned char *p, size_t n) {
  char *s = gw_xmalloc(2 * n + 1);
  for (size_t i = 0; i < n; i++) snprintf(s + 2 * i, 3, "%02x", p[i]);
  s[2 * n] = '\0';
  return s;
}

static char *serial_text(const X509 *x) {
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  char *h = bn ? BN_bn2hex(bn) : NULL;
  char *out = gw_xstrndup(h ? h : "", h ? strlen(h) : 0);
  OPENSSL_free(h);
  BN_free(bn);
  return out;
}

const gw_tls_peer_t *gw_tls_peer(gw_tls_t *t) {
  if (t->peer_done || !t->ready) return t->peer;
  t->peer_done = 1;
  ERR_clear_error();
  /* After a resumption the certificate comes from the session (the
   * ticket), with the verification result of the original handshake. */
  X509 *x = SSL_get0_peer_certificate(t->ssl);
  if (!x) return NULL;
  gw_tls_peer_t *p = gw_xcalloc(1, sizeof *p);
  p->subject = name_text(X509_get_subject_name(x));
  p->issuer = name_text(X509_get_issuer_name(x));
  p->serial = serial_text(x);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (X509_digest(x, EVP_sha256(), md, &len) != 1) len = 0;
  p->fingerprint = hex(md, len);
  long v = SSL_get_verify_result(t->ssl);
  p->verified = v == X509_V_OK;
  if (!p->verified) p->error = X509_verify_cert_error_string(v);
  ERR_clear_error();
  t->peer = p;
  return p;
}

/* ---- the client side: upstreams over TLS ----
 *
 * Kept apart from the server side on purpose: a client context is one
 * SSL_CTX with the group's trust settings, and a client state is an
 * ordinary gw_tls_t in connect state, so reads, writes and the outgoing
 * buffer work exactly as for a listener's connections.
 *
 * Sessions: OpenSSL's own client cache is off (it has no notion of which
 * server a session belongs to); the new-session callback hands every
 * session the server gives (TLS 1.3 tickets arrive after the handshake, so
 * SSL_get1_session right after it would be too early) to the server's
 * gw_tls_resume_t, found through the SSL's ex-data. */

/* Owned by its upstream group (upstream.c); freed when the group's tls
 * settings change. The SSL_CTX lives on while states made from it do. */
struct gw_tls_client_ctx_s {
  SSL_CTX *ssl_ctx;
  uint64_t id;                 /* never reused: ties kept sessions to this context */
  int verify;                  /* as given to gw_tls_client_ctx_new */
  int has_ca;                  /* a `ca` file was given ... */
  unsigned char ca_digest[32]; /* ... and this is the SHA-256 of what it held */
};

static int resume_index = -1; /* SSL ex-data slot: the state's gw_tls_resume_t */
static uint64_t client_ctx_ids;

static int on_new_session(SSL *s, SSL_SESSION *sess) {
  gw_tls_resume_t *r = SSL_get_ex_data(s, resume_index);
  const gw_tls_client_ctx_t *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
  /* A session from a context the server's settings moved away from (a
   * reload changed `tls` while this handshake ran) is not kept. */
  if (!r || !ctx || r->ctx_id != ctx->id || !SSL_SESSION_is_resumable(sess)) return 0;
  SSL_SESSION_free(r->session);
  r->session = sess;
  return 1; /* the reference is ours now */
}

/* The SHA-256 of the file at `path`: two contexts loaded from the same
 * bytes trust the same certificates (a reload compares them). */
static int ca_digest(const char *path, unsigned char out[32], char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot read ca %s: %s", path, strerror(errno));
    return GW_ECONFIG;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
  char buf[16384];
  size_t n;
  while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) ok = EVP_DigestUpdate(md, buf, n) == 1;
  if (ferror(f)) {
    snprintf(err, errlen, "cannot read ca %s: %s", path, strerror(errno));
    ok = 0;
  } else if (!ok || EVP_DigestFinal_ex(md, out, NULL) != 1) {
    snprintf(err, errlen, "cannot read ca %s: out of memory", path);
    ok = 0;
  }
  EVP_MD_CTX_free(md);
  fclose(f);
  ERR_clear_error();
  return ok ? 0 : GW_ECONFIG;
}

gw_tls_client_ctx_t *gw_tls_client_ctx_new(int verify, const char *ca, char *err, size_t errlen) {
  ERR_clear_error();
  if (init_out_method() != 0) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (resume_index < 0) resume_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  unsigned char digest[32];
  if (ca && ca_digest(ca, digest, err, errlen) != 0) return NULL;
  SSL_CTX *s = SSL_CTX_new(TLS_client_method());
  if (!s || resume_index < 0) {
    snprintf(err, errlen, "cannot make a TLS context: %s", ssl_reason());
    SSL_CTX_free(s);
    return NULL;
  }
  gw_tls_client_ctx_t *ctx = gw_xcalloc(1, sizeof *ctx);
  ctx->ssl_ctx = s;
  ctx->id = ++client_ctx_ids;
  ctx->verify = verify;
  ctx->has_ca = ca != NULL;
  if (ca) memcpy(ctx->ca_digest, digest, sizeof digest);
  SSL_CTX_set_app_data(s, ctx);
  SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
  SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(s, on_new_session);
  static const unsigned char alpn[] = "\x08http/1.1";
  if (SSL_CTX_set_cipher_list(s, CIPHERS_TLS12) != 1 ||
      SSL_CTX_set_alpn_protos(s, alpn, sizeof alpn - 1) != 0) {
    snprintf(err, errlen, "cannot set the ciphers: %s", ssl_reason());
    gw_tls_client_ctx_free(ctx);
    return NULL;
  }
  if (verify) {
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
    int ok = ca ? SSL_CTX_load_verify_locations(s, ca, NULL) : SSL_CTX_set_default_verify_paths(s);
    if (ok != 1) {
      if (ca) snprintf(err, errlen, "bad ca %s: %s", ca, ssl_reason());
      else snprintf(err, errlen, "cannot use the system certificates: %s", ssl_reason());
      gw_tls_client_ctx_free(ctx);
      return NULL;
    }
  } else {
    SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
    /* Still read: a `ca` that does not load is a mistake worth reporting. */
    if (ca && SSL_CTX_load_verify_locations(s, ca, NULL) != 1) {
      snprintf(err, errlen, "bad ca %s: %s", ca, ssl_reason());
      gw_tls_client_ctx_free(ctx);
      return NULL;
    }
  }
  ERR_clear_error();
  return ctx;
}

void gw_tls_client_ctx_free(gw_tls_client_ctx_t *ctx) {
  if (!ctx) return;
  /* States made from it hold their own references to the SSL_CTX; the app
   * data must not lead them back here. */
  SSL_CTX_set_app_data(ctx->ssl_ctx, NULL);
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

uint64_t gw_tls_client_ctx_id(const gw_tls_client_ctx_t *ctx) { return ctx->id; }

int gw_tls_client_ctx_same(const gw_tls_client_ctx_t *a, const gw_tls_client_ctx_t *b) {
  if (a->verify != b->verify || a->has_ca != b->has_ca) return 0;
  return !a->has_ca || memcmp(a->ca_digest, b->ca_digest, sizeof a->ca_digest) == 0;
}

/* 1 if `host` is an IPv4 or IPv6 address literal (checked as an address,
 * not as a DNS name, and never sent as SNI: RFC 6066 3). */
static int is_ip_literal(const char *host) {
  unsigned char buf[16];
  return uv_inet_pton(AF_INET, host, buf) == 0 || uv_inet_pton(AF_INET6, host, buf) == 0;
}

gw_tls_t *gw_tls_client_new(gw_tls_client_ctx_t *ctx, const char *sni, const char *host,
                            gw_tls_resume_t *resume) {
  ERR_clear_error();
  gw_tls_t *t = gw_xcalloc(1, sizeof *t);
  t->ssl = SSL_new(ctx->ssl_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(out_method);
  if (!t->ssl || !t->rbio || !wbio) goto fail;
  BIO_set_data(wbio, t);
  SSL_set_bio(t->ssl, t->rbio, wbio);
  SSL_set_connect_state(t->ssl);
  if (sni && SSL_set_tlsext_host_name(t->ssl, sni) != 1) goto fail_ssl;
  if (host && SSL_get_verify_mode(t->ssl) != SSL_VERIFY_NONE) {
    /* The certificate must name `host`: a DNS name (no partial wildcards,
     * as browsers do) or, for an address literal, an IP SAN. */
    X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok = is_ip_literal(host) ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                                 : X509_VERIFY_PARAM_set1_host(param, host, 0);
    if (ok != 1) goto fail_ssl;
  }
  if (resume) {
    if (resume->ctx_id != ctx->id) {
      /* The settings changed since this session was made: forget it. */
      gw_tls_resume_clear(resume);
      resume->ctx_id = ctx->id;
    }
    if (resume->session) SSL_set_session(t->ssl, resume->session);
    SSL_set_ex_data(t->ssl, resume_index, resume);
  }
  ERR_clear_error();
  return t;
fail:
  BIO_free(t->rbio);
  BIO_free(wbio);
fail_ssl:
  SSL_free(t->ssl); /* owns the BIOs once SSL_set_bio ran */
  free(t);
  ERR_clear_error();
  return NULL;
}

int gw_tls_connect(gw_tls_t *t) {
  ERR_clear_error();
  int rc = SSL_do_handshake(t->ssl);
  if (rc == 1) {
    t->ready = 1;
    return 0;
  }
  if (SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    return 0;
  }
  return (int)fail(t);
}

const char *gw_tls_verify_error(const gw_tls_t *t) {
  /* Without verification OpenSSL still records a result, but it was not
   * the reason for anything. */
  if (SSL_get_verify_mode(t->ssl) == SSL_VERIFY_NONE) return NULL;
  long v = SSL_get_verify_result(t->ssl);
  return v == X509_V_OK ? NULL : X509_verify_cert_error_string(v);
}

int gw_tls_resumed(const gw_tls_t *t) { return SSL_session_reused(t->ssl); }

void gw_tls_resume_clear(gw_tls_resume_t *r) {
  SSL_SESSION_free(r->session);
  r->session = NULL;
}
