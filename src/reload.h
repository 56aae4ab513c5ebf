/*
 * reload.h: hot reload inside one worker.
 *
 * A reload loads the configuration file again into a new VM generation
 * (generation + 1). If that fails, nothing changes: the current generation
 * keeps serving, and the error (file:line first) goes to the log and to the
 * worker's shared memory slot, where /status shows it. If it succeeds, the
 * new generation becomes the worker's current one, so new requests (also on
 * kept-alive connections) use it; the old one is retired: its repeating
 * timers stop, and it is closed when the requests and timers still running
 * on it drop their last reference.
 *
 * Limits and timeouts take effect at once (they are updated in place in the
 * worker's own configuration copy); log paths are reopened when they change.
 * `listen`, `workers`, `admin` and the size of an existing shared dict only
 * change with a restart: a reload that changes them is applied otherwise,
 * and says so in the log and in /status (restart_needed).
 *
 * Triggers: SIGHUP (the master forwards its own), POST /reload on the admin
 * listener, and changes to the configuration or any Lua file it loaded from
 * its folder (watch.h).
 */
#ifndef GW_RELOAD_H
#define GW_RELOAD_H

#include <stddef.h>

#include "lua_vm.h"

typedef struct gw_worker_s gw_worker_t;

/* Called once the worker's first generation is running: publishes it and
 * starts watching `files` (those of the first load). `loaded_hash` is the
 * configuration's hash taken before that load (gw_reload_file_hash). */
void gw_reload_init(gw_worker_t *w, const gw_vm_files_t *files, const char *loaded_hash);
/* sha256 of the file at `path` as 64 hex digits, or "" if it cannot be read. */
void gw_reload_file_hash(const char *path, char hex[65]);
/* Reloads now. `trigger` says why ("SIGHUP", "file change", "admin").
 * Returns 0, or GW_ECONFIG with the error in err. Runs the new
 * configuration's Lua, so it must not be called from inside Lua code. */
int gw_reload(gw_worker_t *w, const char *trigger, char *err, size_t errlen);
/* The worker is draining: stop watching files and refuse reloads. */
void gw_reload_stop(gw_worker_t *w);

#endif
