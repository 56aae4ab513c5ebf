/*
 * reload.c: hot reload inside one worker (see reload.h).
 *
 * Ordering in gw_reload: the file's hash is taken before the load so that
 * /status never shows the hash of a newer file than the one loaded; the
 * new generation is checked (settings that need a restart) and its timers
 * started before it becomes current; the old one is retired (no new
 * timers, repeating ones stopped) before its "current" reference is
 * dropped, which frees it at once if nothing else runs on it.
 *
 * Everything a reload decides is published in the worker's shared memory
 * slot (shm.h) for /status and /metrics.
 */
#include "reload.h"

#include "watchdog.h"

#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "errors.h"
#include "ffi_time.h"
#include "log.h"
#include "mem.h"
#include "shm.h"
#include "watch.h"
#include "worker.h"

void gw_reload_file_hash(const char *path, char hex[65]) {
  hex[0] = '\0';
  FILE *f = fopen(path, "rb");
  if (!f) return;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
  char buf[16384];
  size_t n;
  while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) ok = EVP_DigestUpdate(ctx, buf, n) == 1;
  ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &len) == 1;
  EVP_MD_CTX_free(ctx);
  fclose(f);
  if (!ok) return;
  for (unsigned i = 0; i < len && i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* ---- which files to watch ---- */

/* 1 if `path` lies inside directory `dir` (both resolved). */
static int inside(const char *dir, const char *path) {
  char real[PATH_MAX];
  if (!realpath(path, real)) return 0;
  size_t n = strlen(dir);
  return strncmp(real, dir, n) == 0 && (real[n] == '/' || (n == 1 && dir[0] == '/'));
}

static int listed(char *const *list, size_t n, const char *path) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(list[i], path) == 0) return 1;
  return 0;
}

/* Watches the configuration and the files it loaded from its folder. After
 * a failed load (`failed`), also what was watched before: a load stopped by
 * a missing module never reads it (or what came after it), and recreating
 * that file must still reload. */
static void watch_files(gw_worker_t *w, const gw_vm_files_t *files, int failed) {
  if (!w->watch || files->n == 0) return;
  char copy[PATH_MAX], real_dir[PATH_MAX];
  snprintf(copy, sizeof copy, "%s", files->paths[0]);
  int have_dir = realpath(dirname(copy), real_dir) != NULL;
  char *const *before = NULL;
  size_t nbefore = failed ? gw_watch_paths(w->watch, &before) : 0;
  char **keep = gw_xcalloc(files->n + nbefore, sizeof *keep);
  size_t n = 0;
  keep[n++] = files->paths[0];
  for (size_t i = 1; i < files->n; i++)
    if (have_dir && inside(real_dir, files->paths[i]) && !listed(keep, n, files->paths[i]))
      keep[n++] = files->paths[i];
  for (size_t i = 0; i < nbefore; i++)
    if (!listed(keep, n, before[i])) keep[n++] = before[i];
  gw_watch_set(w->watch, keep, n);
  free(keep);
}

/* A configuration written between the hash taken before a load and the
 * moment its watches are in place makes no event: compare, and reload if
 * the file is no longer the one loaded. */
static void changed_while_loading(gw_worker_t *w, const char *loaded_hash) {
  char now[65];
  gw_reload_file_hash(w->path, now);
  if (w->watch && now[0] && strcmp(now, loaded_hash) != 0) {
    gw_log_info("%s changed while it was loading: reloading", w->path);
    gw_watch_poke(w->watch);
  }
}

static void on_files_changed(void *data) {
  char err[4096];
  gw_reload(data, "file change", err, sizeof err);
}

/* ---- publishing ---- */

static void publish_loaded(gw_worker_t *w, const char *hash, const char *trigger, const char *restart) {
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (!s) return;
  gw_shm_info_begin(s);
  s->info.loaded_at = gw_ffi_now();
  snprintf(s->info.config_hash, sizeof s->info.config_hash, "%s", hash);
  if (trigger) {
    snprintf(s->info.last_trigger, sizeof s->info.last_trigger, "%s", trigger);
    s->info.last_reload_at = s->info.loaded_at;
    s->info.last_reload_ok = 1;
    snprintf(s->info.restart_needed, sizeof s->info.restart_needed, "%s", restart);
  }
  gw_shm_info_end(s);
  if (trigger) gw_shm_add(&s->reloads_ok, 1);
  gw_worker_publish(w);
}

static void publish_failed(gw_worker_t *w, const char *trigger, unsigned generation, const char *err) {
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (!s) return;
  gw_shm_info_begin(s);
  snprintf(s->info.last_trigger, sizeof s->info.last_trigger, "%s", trigger);
  s->info.last_reload_at = s->info.last_error_at = gw_ffi_now();
  s->info.last_reload_ok = 0;
  s->info.last_error_generation = generation;
  /* Cut at a character boundary: /status shows the text as JSON, where a
   * split character would turn into replacement characters. */
  size_t len = gw_utf8_cut(err, strlen(err), sizeof s->info.last_error - 1);
  memcpy(s->info.last_error, err, len);
  s->info.last_error[len] = '\0';
  gw_shm_info_end(s);
  gw_shm_add(&s->reloads_failed, 1);
}

/* ---- the reload ---- */

static int same_str(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Describes, in `out`, what `next` changes that only a restart applies
 * ("" when nothing). */
static void restart_needed(const gw_worker_t *w, const gw_config_t *next, char *out, size_t outlen) {
  const gw_config_t *cur = &w->config;
  gw_buf_t b;
  gw_buf_init(&b);
  if (!gw_config_same_listen(cur, next)) gw_buf_append_str(&b, "; listen changed");
  if (w->workers_override <= 0 && cur->workers != next->workers)
    gw_buf_printf(&b, "; workers changed (%d -> %d)", cur->workers, next->workers);
  if (!same_str(cur->admin, next->admin)) gw_buf_append_str(&b, "; admin changed");
  for (size_t i = 0; i < next->ndicts; i++) {
    const char *name = next->dicts[i].name;
    size_t had = gw_shm_dict_declared(name, strlen(name));
    if (had && had != next->dicts[i].size) gw_buf_printf(&b, "; shared dict '%s' size changed", name);
  }
  snprintf(out, outlen, "%.*s", b.len > 2 ? (int)b.len - 2 : 0, b.len > 2 ? b.base + 2 : "");
  gw_buf_free(&b);
}

/* Applies what can change in place; returns with w->config updated. */
static void apply_settings(gw_worker_t *w, const gw_config_t *next) {
  gw_config_t *cur = &w->config;
  cur->limits = next->limits;     /* every parser points at cur->limits */
  cur->timeouts = next->timeouts; /* read at each timer arm */
  cur->ticket_rotate = next->ticket_rotate;
  cur->session_tickets = next->session_tickets;
  /* The TLS contexts were rebuilt from `next` (gw_worker_tls_reload). */
  if (gw_config_same_listen(cur, next))
    for (size_t i = 0; i < cur->nlisten; i++) gw_listen_copy_tls(&cur->listen[i], &next->listen[i]);
  gw_watchdog_set_budget(cur->timeouts.script);
  if (!same_str(cur->error_log, next->error_log)) {
    int rc = gw_log_open_error(next->error_log);
    if (rc) gw_log_error("reload: cannot open error log %s: %s", next->error_log, gw_strerror(rc));
    free(cur->error_log);
    cur->error_log = next->error_log ? gw_xstrndup(next->error_log, strlen(next->error_log)) : NULL;
  }
  if (!same_str(cur->access_log, next->access_log)) {
    int rc = gw_log_open_access(next->access_log);
    if (rc) gw_log_error("reload: cannot open access log %s: %s", next->access_log, gw_strerror(rc));
    free(cur->access_log);
    cur->access_log = next->access_log ? gw_xstrndup(next->access_log, strlen(next->access_log)) : NULL;
  }
}

/* A log path the new configuration changes must open, or the reload fails
 * like any error (it once reported success and logged nowhere). */
static int new_logs_unopenable(const gw_worker_t *w, const gw_config_t *next, char *err, size_t errlen) {
  const gw_config_t *cur = &w->config;
  const char *error_log = same_str(cur->error_log, next->error_log) ? NULL : next->error_log;
  const char *access_log = same_str(cur->access_log, next->access_log) ? NULL : next->access_log;
  return gw_log_check_paths(error_log, access_log, err, errlen) != 0;
}

int gw_reload(gw_worker_t *w, const char *trigger, char *err, size_t errlen) {
  if (w->draining) {
    snprintf(err, errlen, "the worker is stopping");
    return GW_ESTATE;
  }
  uint64_t t0 = uv_hrtime();
  unsigned generation = w->vm->generation + 1;
  char hash[65];
  gw_reload_file_hash(w->path, hash);
  gw_vm_files_t files = {NULL, 0};
  double budget = w->config.timeouts.script; /* until the new file's gw.config sets its own */
  gw_vm_t *next = gw_vm_load(w->path, GW_VM_WORKER, generation, budget, &files, err, errlen);
  /* Watch what this load read even if it failed: fixing a broken module
   * must reload too. */
  watch_files(w, &files, next == NULL);
  gw_vm_files_free(&files);
  changed_while_loading(w, hash);
  /* Certificates are read again now, so a reload after renewing them is
   * enough; one that cannot be loaded fails the reload like a script error,
   * and the listeners keep the contexts they have. */
  if (next && (new_logs_unopenable(w, &next->config, err, errlen) || gw_vm_start(next, err, errlen) != 0 ||
               gw_worker_tls_reload(w, &next->config, err, errlen) != 0)) {
    gw_vm_retire(next);
    gw_ltimers_cancel(next); /* it never went live: none of its timers may run */
    gw_vm_unref(next);
    next = NULL;
  }
  if (!next) {
    gw_log_error("reload (%s) failed; generation %u keeps serving: %s", trigger, w->vm->generation, err);
    publish_failed(w, trigger, generation, err);
    return GW_ECONFIG;
  }
  char restart[GW_SHM_NOTE_MAX];
  restart_needed(w, &next->config, restart, sizeof restart);
  if (restart[0])
    gw_log_warn("reload (%s): %s: restart the gateway to apply (ignored until then)", trigger, restart);
  apply_settings(w, &next->config);

  gw_vm_t *old = w->vm;
  w->vm = next;
  gw_vm_retire(old);
  gw_ltimers_retire(old);
  gw_vm_unref(old);
  gw_log_info("reload (%s): generation %u serving (loaded in %.1f ms)", trigger, generation,
              (double)(uv_hrtime() - t0) / 1e6);
  publish_loaded(w, hash, trigger, restart);
  return 0;
}

void gw_reload_init(gw_worker_t *w, const gw_vm_files_t *files, const char *loaded_hash) {
  w->watch = gw_watch_new(w->loop, on_files_changed, w);
  watch_files(w, files, 0);
  changed_while_loading(w, loaded_hash);
  publish_loaded(w, loaded_hash, NULL, NULL);
}

void gw_reload_stop(gw_worker_t *w) {
  if (w->watch) gw_watch_close(w->watch);
  w->watch = NULL;
}
