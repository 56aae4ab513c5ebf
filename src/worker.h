/*
 * worker.h: one worker process: a libuv loop, the current VM generation, the
 * listeners and the connections.
 *
 * There is exactly one gw_worker_t per worker process (gw__worker), made in
 * gw_worker_run and alive until the process exits; FFI functions reach the
 * loop through it.
 */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "lua_vm.h"
#include "tls.h"

typedef struct gw_conn_s gw_conn_t;
typedef struct gw_watch_s gw_watch_t;

typedef struct gw_worker_s {
  uv_loop_t *loop;        /* the process's loop */
  const char *path;       /* the configuration file (argv, lives as long as the process) */
  int workers_override;   /* -w N, or 0: then a change of `workers` needs a restart */
  gw_vm_t *vm;            /* current generation; new requests take a ref */
  gw_config_t config;     /* the worker's own copy of the settings: it outlives every
                           * generation; limits and timeouts change in place on reload */
  const gw_config_t *cfg; /* always &config (connections point into it) */
  int index;              /* 0..workers-1, given by the master */
  uv_tcp_t *listeners;    /* one per cfg->listen entry */
  gw_tls_ctx_t **tls;     /* one per cfg->listen entry: its TLS context, or NULL for
                           * plain HTTP; made in open_listeners, replaced by each
                           * reload (gw_worker_tls_reload); the worker's reference */
  size_t nlisteners;
  uv_tcp_t admin_listener; /* cfg->admin's socket when admin_open; conn.c compares to it */
  uint8_t admin_open;
  gw_conn_t *conns; /* every open connection */
  size_t nconns;
  uint8_t draining; /* SIGTERM seen: no new requests, exit when idle */
  uv_signal_t sig_term, sig_int, sig_usr1, sig_hup;
  uv_timer_t drain_timer; /* forces exit after timeouts.drain */
  uv_timer_t stats_timer; /* publishes gauges to the shared memory slot every second */
  gw_watch_t *watch;      /* the configuration's files (reload.c); NULL when draining */
  uint64_t requests;      /* requests finished, admin ones included (/status shows the
                           * shared slot's count, kept by metrics.c without them) */
} gw_worker_t;

extern gw_worker_t *gw__worker;

/* Runs worker `index` with the configuration at `path`; returns the exit
 * status for the process (0 after a graceful stop). */
int gw_worker_run(const char *path, int index, int workers_override);
/* A connection closed: the worker may now be done draining. */
void gw_worker_conn_closed(gw_worker_t *w);
/* Reads the certificates of `next` (a configuration a reload loaded) into
 * new TLS contexts for the listeners, all or nothing: on success new
 * connections use them (open ones keep theirs) and 0 is returned; on
 * failure nothing changes and GW_ECONFIG comes back with the reason in err.
 * Does nothing when `next` listens elsewhere (that needs a restart). */
int gw_worker_tls_reload(gw_worker_t *w, const gw_config_t *next, char *err, size_t errlen);
/* Writes the worker's counters and gauges (generation, requests,
 * connections, Lua memory) to its shared memory slot. */
void gw_worker_publish(gw_worker_t *w);

#endif
