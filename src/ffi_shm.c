/*
 * ffi_shm.c: shared dicts for Lua (lua/gateway/shared.lua), through the FFI.
 *
 * A dict handle (gw_shdict_t *) points into the shared memory zone, which is
 * never unmapped, so Lua may keep it for the life of the process, across
 * reloads. Strings read from a dict are copied under its lock into one
 * process-local buffer: the pointer handed back is borrowed until the next
 * call, and Lua copies it at once with ffi.string. Errors come back as
 * short, stable strings in *err ("exists", "not found", "not a number",
 * "no memory"), which the Lua wrappers return as `nil/false, err`.
 * Nothing here yields or calls back into Lua.
 */
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "errors.h"
#include "ffi.h"
#include "shdict.h"
#include "shm.h"

/* Mirrors gw_shvalue_t for the cdef in lua/gateway/base.lua. */
typedef struct gw_ffi_shval_s {
  int type;        /* gw_shv_type_t */
  double num;      /* number, or 0/1 for a boolean */
  const char *str; /* string bytes, borrowed until the next call */
  size_t len;      /* string length */
} gw_ffi_shval_t;

_Static_assert(sizeof(gw_ffi_shval_t) == sizeof(gw_shvalue_t), "gw_ffi_shval_t mirrors gw_shvalue_t");

static gw_buf_t copy_buf; /* the process's copy of the last string read */

static int bad_key(size_t klen) { return klen == 0 || klen > GW_SHDICT_KEY_MAX; }

static int fail(int rc, const char **err) {
  *err = gw_strerror(rc);
  return GW_FFI_ERROR;
}

GW_FFI_EXPORT size_t gw_ffi_shdict_min_size(void) { return GW_SHDICT_MIN_SIZE; }

/* The dict called `name` and its size in *size, or NULL when the zone has
 * no such dict (or no zone exists: master, `gateway -t`). */
GW_FFI_EXPORT gw_shdict_t *gw_ffi_shdict_find(const char *name, size_t len, size_t *size) {
  gw_shdict_t *d = gw_shm_dict(name, len);
  if (d) *size = gw_shdict_size(d);
  return d;
}

/* GW_FFI_OK with *out filled, or GW_FFI_DECLINED when missing or expired. */
GW_FFI_EXPORT int gw_ffi_shdict_get(gw_shdict_t *d, const char *key, size_t klen, gw_ffi_shval_t *out) {
  if (bad_key(klen)) return GW_FFI_DECLINED;
  return gw_shdict_get(d, key, klen, (gw_shvalue_t *)out, &copy_buf) == 0 ? GW_FFI_OK : GW_FFI_DECLINED;
}

/* Stores a value (type GW_SHV_*; `num` for numbers and booleans, `str` for
 * strings). `add` non-zero fails with "exists" when a live value is there. */
GW_FFI_EXPORT int gw_ffi_shdict_set(gw_shdict_t *d, const char *key, size_t klen, int type, double num,
                                    const char *str, size_t len, double ttl, int add, const char **err) {
  if (bad_key(klen)) return fail(GW_ELIMIT, err);
  gw_shvalue_t v = {type, num, str, len};
  int rc = gw_shdict_set(d, key, klen, &v, ttl, add);
  return rc == 0 ? GW_FFI_OK : fail(rc, err);
}

/* *out = value + by; a missing key starts at `init` when has_init. */
GW_FFI_EXPORT int gw_ffi_shdict_incr(gw_shdict_t *d, const char *key, size_t klen, double by, int has_init,
                                     double init, double ttl, double *out, const char **err) {
  if (bad_key(klen)) return fail(GW_ELIMIT, err);
  int rc = gw_shdict_incr(d, key, klen, by, has_init ? &init : NULL, ttl, out);
  return rc == 0 ? GW_FFI_OK : fail(rc, err);
}

GW_FFI_EXPORT int gw_ffi_shdict_delete(gw_shdict_t *d, const char *key, size_t klen) {
  if (bad_key(klen)) return GW_FFI_DECLINED;
  return gw_shdict_delete(d, key, klen) == 0 ? GW_FFI_OK : GW_FFI_DECLINED;
}

/* Mirrors gw_shdict_gcra_t for the cdef in lua/gateway/base.lua. */
typedef struct gw_ffi_gcra_s {
  int allowed;
  double remaining;
  double reset_ms;
  double retry_after_ms;
} gw_ffi_gcra_t;

_Static_assert(sizeof(gw_ffi_gcra_t) == sizeof(gw_shdict_gcra_t), "gw_ffi_gcra_t mirrors gw_shdict_gcra_t");

/* One GCRA decision on `key` (see gw_shdict_gcra; now_ms < 0: the shared
 * monotonic clock, read under the dict's lock). */
GW_FFI_EXPORT int gw_ffi_shdict_gcra(gw_shdict_t *d, const char *key, size_t klen, double emission_ms,
                                     double tolerance_ms, double now_ms, gw_ffi_gcra_t *out,
                                     const char **err) {
  if (bad_key(klen) || !(emission_ms > 0) || !(tolerance_ms >= 0)) return fail(GW_ELIMIT, err);
  int rc = gw_shdict_gcra(d, key, klen, emission_ms, tolerance_ms, now_ms, (gw_shdict_gcra_t *)out);
  return rc == 0 ? GW_FFI_OK : fail(rc, err);
}
