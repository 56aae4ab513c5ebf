/*
 * ffi_tls.c: what lua/ needs from tls.c at configuration time.
 *
 * gw.config checks every certificate of a TLS listener as it reads the
 * table, so a missing file, a bad PEM or a key that does not match is a
 * configuration error with the script's file:line (`gateway -t` included),
 * not a worker that fails to start. The worker loads the files again when
 * it opens its listeners (worker.c).
 */
#include <stdio.h>

#include "ffi.h"
#include "tls.h"

/* Loads `cert` (a PEM chain) and `key` the way a listener would. Returns
 * GW_FFI_OK, or GW_FFI_ERROR with a message (naming the file) in `err`. */
GW_FFI_EXPORT int gw_ffi_tls_check(const char *cert, const char *key, char *err, size_t errlen) {
  gw_tls_cert_t c = {(char *)cert, (char *)key};
  gw_tls_ctx_t *ctx = gw_tls_ctx_new(&c, 1, err, errlen);
  if (!ctx) return GW_FFI_ERROR;
  gw_tls_ctx_free(ctx);
  return GW_FFI_OK;
}
