/*
 * tls.h: TLS on libuv streams through memory BIOs.
 *
 * OpenSSL never sees a socket. The connection reads ciphertext from libuv as
 * usual and hands it to gw_tls_read, which decrypts into the connection's
 * read buffer; gw_tls_write encrypts plaintext into an internal buffer that
 * the connection drains (gw_tls_pending/gw_tls_drained) and writes to the
 * socket with its ordinary write path. No call here blocks, and no call
 * here touches the loop, so the same state serves the server side and the
 * upstream client (https:// servers).
 *
 * This file is the one place that calls OpenSSL's SSL_* functions. On a
 * server connection that finished a TLS 1.3 handshake, records are sealed
 * and opened by tls_record.c instead of SSL_read/SSL_write (the same calls
 * here serve both; see tls_record.h).
 *
 * A server context (gw_tls_ctx_t) belongs to one listener: the worker makes
 * it when it opens its listeners and again at each reload (so certificates
 * are read again), and it is refcounted: the worker holds one reference and
 * every connection accepted with it another, so a connection made before a
 * reload keeps its certificate and settings until it closes. It holds one
 * SSL_CTX per configured certificate; the first is the default, and the SNI
 * callback switches to the certificate whose names match the requested
 * server name (an exact name first, then a wildcard "*.example.com"
 * covering one label, else the default). Only TLS 1.2 and 1.3 are offered,
 * TLS 1.2 with ECDHE and AEAD ciphers only, and ALPN accepts "http/1.1"
 * only. Sessions resume with tickets only (no session cache), encrypted with
 * keys all workers share (tls_tickets.h). Client certificates are asked for
 * when the listener has a client CA: required ("on") or optional.
 */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "buf.h"

/* One certificate: a PEM chain (leaf first, then intermediates) and its key. */
typedef struct gw_tls_cert_s {
  char *cert; /* path, gw_xmalloc'd */
  char *key;  /* path, gw_xmalloc'd */
} gw_tls_cert_t;

typedef struct gw_tls_ctx_s gw_tls_ctx_t;
typedef struct gw_tls_s gw_tls_t;

/* What a listener does with client certificates. */
typedef enum {
  GW_TLS_VERIFY_OFF = 0,      /* none asked for */
  GW_TLS_VERIFY_ON = 1,       /* required, and must chain to client_ca: else the handshake fails */
  GW_TLS_VERIFY_OPTIONAL = 2, /* asked for; none, or one that does not verify, is let through */
} gw_tls_verify_t;

/* A TLS listener's settings, read by gw_tls_ctx_make; borrowed. */
typedef struct gw_tls_server_s {
  const gw_tls_cert_t *certs; /* ncerts >= 1; the first is the default */
  size_t ncerts;
  const char *client_ca;  /* PEM file of the CAs client certificates must chain to, or NULL */
  gw_tls_verify_t verify; /* OFF when client_ca is NULL */
  const char *id;         /* names the listener ("host:port"), or NULL: a session resumes
                           * only where the same id and client-certificate settings hold */
  int no_resumption;      /* 1: no session tickets, so every handshake is a full one */
} gw_tls_server_t;

/* Builds a server context. Returns it (one reference, the caller's), or
 * NULL with a message in `err` naming the file at fault. The paths are read
 * now; nothing refers to them afterwards. */
gw_tls_ctx_t *gw_tls_ctx_make(const gw_tls_server_t *conf, char *err, size_t errlen);
/* The same for `certs` alone (no client certificates, no id). */
gw_tls_ctx_t *gw_tls_ctx_new(const gw_tls_cert_t *certs, size_t n, char *err, size_t errlen);
/* Drops the caller's reference; the context is freed once no connection
 * made with it is left. NULL is ignored. */
void gw_tls_ctx_free(gw_tls_ctx_t *ctx);
/* Loads a client CA file as a listener would (at least one certificate).
 * Returns 0, or GW_ECONFIG with a message in `err`. */
int gw_tls_check_ca(const char *path, char *err, size_t errlen);

/* A server-side TLS state for one connection, owned by the caller (freed
 * with gw_tls_free). It holds a reference to `ctx`. */
gw_tls_t *gw_tls_new(gw_tls_ctx_t *ctx);
void gw_tls_free(gw_tls_t *t);

/* Feeds `n` ciphertext bytes read from the socket, advances the handshake,
 * and appends whatever plaintext they complete to `plain` (which may be
 * reallocated: `in` is copied before `plain` grows, so `in` may point into
 * `plain`'s spare room). Returns the number of plaintext bytes appended
 * (0: none yet), UV_EOF once the peer sent close_notify, or GW_ETLS when
 * the handshake or a record failed; the connection should then write out
 * what gw_tls_pending holds (an alert) and close. */
ssize_t gw_tls_read(gw_tls_t *t, const char *in, size_t n, gw_buf_t *plain);
/* 1 once the handshake has completed. */
int gw_tls_ready(const gw_tls_t *t);
/* 1 once the peer's close_notify was read. gw_tls_read returns the
 * plaintext that came before it first, and the end only at a later call
 * that may never come (no more bytes): a caller that got data checks this
 * to see the end of the stream at once. */
int gw_tls_peer_closed(const gw_tls_t *t);
/* Encrypts `len` plaintext bytes into the outgoing buffer. Returns 0, or
 * GW_ETLS (before the handshake completed, or after a failure). */
int gw_tls_write(gw_tls_t *t, const char *p, size_t len);
/* Encrypts `n` buffers in order, joining pieces that fit in one record (an
 * answer's head and a short body go out as one record). Same returns. */
int gw_tls_writev(gw_tls_t *t, const uv_buf_t *bufs, unsigned n);
/* Queues a close_notify alert (once); never fails. */
void gw_tls_shutdown(gw_tls_t *t);
/* The ciphertext waiting for the socket: sets *p, returns its length. The
 * bytes stay valid until gw_tls_drained or the next call on `t`. */
size_t gw_tls_pending(gw_tls_t *t, const char **p);
/* The caller took (copied or wrote) everything gw_tls_pending returned. */
void gw_tls_drained(gw_tls_t *t);
/* The failure reason after GW_ETLS, for the log (valid until gw_tls_free). */
const char *gw_tls_error(const gw_tls_t *t);

/* The client certificate of a connection, as scripts see it. Made on first
 * request (gw_tls_peer) and owned by the gw_tls_t; freed with it. */
typedef struct gw_tls_peer_s {
  char *subject;     /* RFC 2253: "CN=alice,O=Example" */
  char *issuer;      /* the same for the issuer */
  char *serial;      /* upper-case hex, as `openssl x509 -serial` prints it */
  char *fingerprint; /* SHA-256 of the DER certificate, lower-case hex */
  const char *error; /* why it did not verify (static OpenSSL text), or NULL */
  int verified;      /* 1 if it chained to client_ca (always 1 with verify "on") */
} gw_tls_peer_t;

/* The client's certificate after the handshake, or NULL when it sent none. */
const gw_tls_peer_t *gw_tls_peer(gw_tls_t *t);

/* ---- the client side: upstreams over TLS (https:// servers) ----
 *
 * A client context (gw_tls_client_ctx_t) belongs to one upstream group: it
 * holds the group's `tls` settings (verification on or off, the trusted
 * certificates) and lives until the group's settings change (the states made
 * from it keep what they need: OpenSSL counts its references). A client
 * state is the same gw_tls_t as the server's, driven by the same calls
 * (gw_tls_read, gw_tls_write, gw_tls_pending, gw_tls_drained), started with
 * gw_tls_connect. */

typedef struct gw_tls_client_ctx_s gw_tls_client_ctx_t;

/* The last session one upstream server gave, so that the next connection
 * resumes it (an abbreviated handshake) instead of a full one. Owned by the
 * server (zeroed when the server is made, never freed while the worker
 * runs). A session is only offered through the context it came from
 * (`ctx_id`), so changed tls settings never resume a session that was
 * checked under the old ones. */
typedef struct gw_tls_resume_s {
  void *session;   /* an SSL_SESSION (one reference), or NULL */
  uint64_t ctx_id; /* gw_tls_client_ctx_id of the context that made it */
} gw_tls_resume_t;

/* Builds a client context: TLS 1.2 and 1.3 with the listeners' ciphers,
 * ALPN "http/1.1". With `verify`, the server's chain must lead to one of the
 * certificates in `ca` (a PEM file, read now), or, when `ca` is NULL, to one
 * of the system's (OpenSSL's default paths: /etc/ssl/certs on Debian).
 * Returns it, or NULL with a message in `err` naming the file at fault. */
gw_tls_client_ctx_t *gw_tls_client_ctx_new(int verify, const char *ca, char *err, size_t errlen);
void gw_tls_client_ctx_free(gw_tls_client_ctx_t *ctx);
/* A number unique to `ctx` in this process (never reused). */
uint64_t gw_tls_client_ctx_id(const gw_tls_client_ctx_t *ctx);
/* 1 if `a` and `b` check certificates alike: the same `verify`, and the
 * same bytes in their `ca` files (or no file for either). */
int gw_tls_client_ctx_same(const gw_tls_client_ctx_t *a, const gw_tls_client_ctx_t *b);

/* A client-side TLS state for one upstream connection, owned by the caller
 * (gw_tls_free). `sni` is sent as the server name (NULL: none); `host` is
 * the name (or IP address literal) the certificate must be valid for when
 * the context verifies (NULL: no name check). Both are copied. `resume`
 * (may be NULL) must outlive the state: its session is offered, and every
 * new session the server hands out replaces it. */
gw_tls_t *gw_tls_client_new(gw_tls_client_ctx_t *ctx, const char *sni, const char *host,
                            gw_tls_resume_t *resume);
/* Starts a client handshake: the ClientHello waits in gw_tls_pending; the
 * rest goes on in gw_tls_read until gw_tls_ready. Returns 0 or GW_ETLS. */
int gw_tls_connect(gw_tls_t *t);
/* After a failed client handshake: why the server's certificate was
 * refused ("hostname mismatch", "self-signed certificate", ...; static
 * storage), or NULL when the certificate was not the reason. */
const char *gw_tls_verify_error(const gw_tls_t *t);
/* 1 if the handshake resumed a session. */
int gw_tls_resumed(const gw_tls_t *t);
/* Drops the session kept in `r` (the owner is going away, or it failed). */
void gw_tls_resume_clear(gw_tls_resume_t *r);

#endif
