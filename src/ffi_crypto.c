/*
 * ffi_crypto.c: password hashes for Lua (gw.crypto.crypt_verify, used by
 * gw.mw.basic_auth), through libcrypt's crypt_rn.
 *
 * Everything else in gw.crypto (digests, HMAC, random bytes, signature
 * checks) is called straight from lua/gateway/crypto.lua through the FFI:
 * libcrypto is a dependency of the binary, so ffi.C finds its symbols. This
 * file is needed for two reasons the FFI cannot meet:
 *  - a strong password hash (bcrypt, yescrypt, sha512crypt) costs tens to
 *    hundreds of milliseconds of CPU on purpose; done on the loop it would
 *    stall every connection of the worker. It runs on libuv's thread pool
 *    while the request's coroutine waits (the usual waiter protocol);
 *  - the binary is linked with --as-needed, so libcrypt stays linked only
 *    if C code references it.
 * The comparison of the computed hash with the stored one uses
 * CRYPTO_memcmp, and the passphrase copy is wiped before it is freed.
 */
#include <crypt.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ffi.h"
#include "lua_vm.h"
#include "mem.h"
#include "worker.h"

/* One verification. Owned by itself: allocated by gw_ffi_crypt_check and
 * freed in on_job_done, which libuv always calls (also after a cancelled
 * waiter, because a job already running on a pool thread cannot be
 * stopped). */
typedef struct {
  gw_waiter_t w;     /* first: the task's waiter */
  uv_work_t work;    /* work.data = the job */
  char *phrase;      /* the candidate password, NUL-terminated; wiped before free */
  size_t phrase_len; /* its length */
  char *setting;     /* the stored hash, NUL-terminated */
  int match;         /* the result, written by the pool thread */
  int cancelled;     /* the task ended first: nobody to wake */
} crypt_job_t;

/* Hashes `phrase` with the method, cost and salt of `setting` and compares
 * the result with `setting`. Thread-safe: crypt_rn keeps its state in `data`
 * (32 KB, so on the heap rather than on a pool thread's stack). */
static int crypt_matches(const char *phrase, const char *setting) {
  struct crypt_data *data = gw_xcalloc(1, sizeof *data);
  const char *out = crypt_rn(phrase, setting, data, (int)sizeof *data);
  size_t slen = strlen(setting);
  /* A failure gives NULL or a string starting with '*', which never equals
   * a valid setting; the length check only guards CRYPTO_memcmp. */
  int ok = out != NULL && out[0] != '*' && strlen(out) == slen && CRYPTO_memcmp(out, setting, slen) == 0;
  OPENSSL_cleanse(data, sizeof *data);
  free(data);
  return ok;
}

static void job_free(crypt_job_t *job) {
  OPENSSL_cleanse(job->phrase, job->phrase_len);
  free(job->phrase);
  free(job->setting);
  free(job);
}

static void on_job_work(uv_work_t *req) {
  crypt_job_t *job = req->data;
  job->match = crypt_matches(job->phrase, job->setting);
}

static int push_match(lua_State *co, void *arg) {
  lua_pushboolean(co, ((crypt_job_t *)arg)->match);
  return 1;
}

static void on_job_done(uv_work_t *req, int status) {
  crypt_job_t *job = req->data;
  if (status == 0 && !job->cancelled) gw_waiter_wake(&job->w, push_match, job);
  job_free(job);
}

/* The task ended while the job was queued or running: stop it if it has not
 * started; on_job_done frees it either way. */
static void cancel_job(gw_waiter_t *w) {
  crypt_job_t *job = (crypt_job_t *)w;
  job->cancelled = 1;
  uv_cancel((uv_req_t *)&job->work);
}

/* Checks password `phrase` against crypt(3) hash `hash`.
 * With a task (t, ts) inside a worker: queues the work on the thread pool
 * and returns GW_FFI_AGAIN with *wait_id; the task is woken with one
 * boolean. With t == NULL (no request: configuration time, `gateway -t`):
 * checks at once, blocking, and returns GW_FFI_OK on a match,
 * GW_FFI_DECLINED otherwise. A phrase or hash holding a NUL byte never
 * matches (crypt would silently cut it). Returns GW_FFI_BAD_CONTEXT for a
 * stale task. Both strings are copied; the caller keeps its own. */
GW_FFI_EXPORT int gw_ffi_crypt_check(gw_task_t *t, uint32_t ts, const char *phrase, size_t plen,
                                     const char *hash, size_t hlen, uint32_t *wait_id) {
  if (t != NULL && (!gw_task_check(t, ts) || !gw__worker)) return GW_FFI_BAD_CONTEXT;
  if (memchr(phrase, '\0', plen) || memchr(hash, '\0', hlen) || hlen == 0) return GW_FFI_DECLINED;
  crypt_job_t *job = gw_xcalloc(1, sizeof *job);
  job->phrase = gw_xstrndup(phrase, plen);
  job->phrase_len = plen;
  job->setting = gw_xstrndup(hash, hlen);
  if (t == NULL) {
    int ok = crypt_matches(job->phrase, job->setting);
    job_free(job);
    return ok ? GW_FFI_OK : GW_FFI_DECLINED;
  }
  job->work.data = job;
  job->w.cancel = cancel_job;
  if (uv_queue_work(gw__worker->loop, &job->work, on_job_work, on_job_done) != 0) {
    job_free(job);
    return GW_FFI_ERROR;
  }
  gw_waiter_add(t, &job->w);
  *wait_id = job->w.id;
  return GW_FFI_AGAIN;
}

/* How libcrypt rates hash `hash` (NUL-terminated) as a setting:
 * CRYPT_SALT_OK (0), _INVALID (1), _METHOD_DISABLED (2), _METHOD_LEGACY (3)
 * or _TOO_CHEAP (4). Cheap: it hashes nothing. */
GW_FFI_EXPORT int gw_ffi_crypt_checksalt(const char *hash) { return crypt_checksalt(hash); }
