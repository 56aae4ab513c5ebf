/*
 * ffi_tls.c: what lua/ needs from tls.c.
 *
 * At configuration time: gw.config checks every certificate and client CA
 * of a TLS listener as it reads the table, so a missing file, a bad PEM or
 * a key that does not match is a configuration error with the script's
 * file:line (`gateway -t` included), not a worker that fails to start. The
 * worker loads the files again when it opens its listeners and at each
 * reload (worker.c).
 *
 * For requests: req.client_cert (gw_ffi_req_client_cert).
 */
#include <stdio.h>

#include "conn.h"
#include "ffi.h"
#include "request.h"
#include "tls.h"

/* The client certificate as lua/gateway/request.lua reads it. The strings
 * are NUL-terminated and borrowed from the connection (valid while it
 * lives; Lua copies them at once). */
typedef struct gw_ffi_cert_s {
  const char *subject;
  const char *issuer;
  const char *serial;
  const char *fingerprint;
  const char *error; /* NULL when verified */
  int verified;
} gw_ffi_cert_t;

/* Fills `out` with the certificate the client sent on this request's
 * connection. GW_FFI_OK; GW_FFI_DECLINED when it sent none (or the
 * connection is not TLS); GW_FFI_BAD_CONTEXT for a stale request. */
GW_FFI_EXPORT int gw_ffi_req_client_cert(gw_req_t *r, uint32_t s, gw_ffi_cert_t *out) {
  if (!gw_req_check(r, s)) return GW_FFI_BAD_CONTEXT;
  if (!r->conn->tls) return GW_FFI_DECLINED;
  const gw_tls_peer_t *p = gw_tls_peer(r->conn->tls);
  if (!p) return GW_FFI_DECLINED;
  out->subject = p->subject;
  out->issuer = p->issuer;
  out->serial = p->serial;
  out->fingerprint = p->fingerprint;
  out->error = p->error;
  out->verified = p->verified;
  return GW_FFI_OK;
}

/* Loads a client CA file the way a listener would. Returns GW_FFI_OK, or
 * GW_FFI_ERROR with a message (naming the file) in `err`. */
GW_FFI_EXPORT int gw_ffi_tls_check_ca(const char *path, char *err, size_t errlen) {
  return gw_tls_check_ca(path, err, errlen) == 0 ? GW_FFI_OK : GW_FFI_ERROR;
}

/* Loads `cert` (a PEM chain) and `key` the way a listener would. Returns
 * GW_FFI_OK, or GW_FFI_ERROR with a message (naming the file) in `err`. */
GW_FFI_EXPORT int gw_ffi_tls_check(const char *cert, const char *key, char *err, size_t errlen) {
  gw_tls_cert_t c = {(char *)cert, (char *)key};
  gw_tls_ctx_t *ctx = gw_tls_ctx_new(&c, 1, err, errlen);
  if (!ctx) return GW_FFI_ERROR;
  gw_tls_ctx_free(ctx);
  return GW_FFI_OK;
}
