/*
 * worker.c: a worker process (see worker.h).
 *
 * Start-up: load the configuration into the first VM generation, open the
 * logs and the listeners, then run the loop. SIGTERM/SIGINT start a drain:
 * listeners close at once, idle connections close, busy ones close after
 * their current answer, and the loop ends when none is left or when
 * timeouts.drain has passed. SIGUSR1 reopens the log files; SIGHUP reloads
 * the configuration (reload.h).
 */
#include "worker.h"

#include "watchdog.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "conn.h"
#include "errors.h"
#include "ffi_time.h"
#include "listener.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "reload.h"
#include "shm.h"
#include "tls_record.h"
#include "tls_tickets.h"

gw_worker_t *gw__worker;

static void on_connection(uv_stream_t *server, int status) {
  gw_worker_t *w = server->data;
  if (status < 0 || w->draining) return;
  gw_tls_ctx_t *tls = NULL;
  for (size_t i = 0; i < w->nlisteners; i++)
    if (server == (uv_stream_t *)&w->listeners[i]) tls = w->tls[i];
  int rc = gw_conn_accept(w, server, tls);
  if (rc != 0 && rc != UV_EAGAIN) gw_log_warn("accept: %s", gw_strerror(rc));
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (s) gw_shm_store(&s->connections, w->nconns);
}

static void stop_loop_if_idle(gw_worker_t *w) {
  if (w->draining && w->nconns == 0) uv_stop(w->loop);
}

void gw_worker_conn_closed(gw_worker_t *w) {
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (s) gw_shm_store(&s->connections, w->nconns);
  stop_loop_if_idle(w);
}

void gw_worker_publish(gw_worker_t *w) {
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (!s) return;
  gw_shm_store32(&s->generation, w->vm->generation);
  gw_shm_store32(&s->generations_alive, gw_vm_live_count());
  gw_shm_store(&s->connections, w->nconns);
  gw_shm_store(&s->lua_memory, gw_vm_live_memory());
}

static void on_stats_timer(uv_timer_t *t) { gw_worker_publish(t->data); }

static void on_drain_timeout(uv_timer_t *t) {
  gw_worker_t *w = t->data;
  gw_log_warn("drain timeout: closing %zu connection(s) with requests in flight", w->nconns);
  uv_stop(w->loop);
}

static void start_drain(gw_worker_t *w) {
  if (w->draining) return;
  w->draining = 1;
  gw_reload_stop(w);
  for (size_t i = 0; i < w->nlisteners; i++) uv_close((uv_handle_t *)&w->listeners[i], NULL);
  w->nlisteners = 0;
  if (w->admin_open) uv_close((uv_handle_t *)&w->admin_listener, NULL);
  w->admin_open = 0;
  for (gw_conn_t *c = w->conns, *next; c; c = next) {
    next = c->next;
    gw_conn_drain(c);
  }
  uv_timer_init(w->loop, &w->drain_timer);
  w->drain_timer.data = w;
  uv_timer_start(&w->drain_timer, on_drain_timeout, gw_seconds_to_ms(w->cfg->timeouts.drain), 0);
  uv_unref((uv_handle_t *)&w->drain_timer);
  stop_loop_if_idle(w);
}

static void on_signal(uv_signal_t *s, int signum) {
  gw_worker_t *w = s->data;
  switch (signum) {
    case SIGTERM:
    case SIGINT: start_drain(w); break;
    case SIGUSR1:
      if (gw_log_reopen() != 0) gw_log_error("reopening the logs failed");
      break;
    case SIGHUP: {
      char err[4096];
      gw_reload(w, "SIGHUP", err, sizeof err); /* logs and publishes the outcome */
      break;
    }
  }
}

static void watch_signal(gw_worker_t *w, uv_signal_t *s, int signum) {
  uv_signal_init(w->loop, s);
  s->data = w;
  uv_signal_start(s, on_signal, signum);
  uv_unref((uv_handle_t *)s);
}

static int open_logs(const gw_config_t *cfg) {
  int rc = gw_log_open_error(cfg->error_log);
  if (rc) {
    gw_log_error("cannot open error log %s: %s", cfg->error_log, gw_strerror(rc));
    return rc;
  }
  rc = gw_log_open_access(cfg->access_log);
  if (rc) gw_log_error("cannot open access log %s: %s", cfg->access_log, gw_strerror(rc));
  return rc;
}

/* The TLS context of listener `l` (NULL with a message in err). */
static gw_tls_ctx_t *make_tls(const gw_config_t *cfg, const gw_listen_t *l, char *err, size_t errlen) {
  char id[300];
  snprintf(id, sizeof id, "%s:%d", l->host, l->port);
  gw_tls_server_t conf = {l->certs, l->ncerts, l->client_ca, l->verify_client, id, !cfg->session_tickets};
  char why[1024];
  gw_tls_ctx_t *ctx = gw_tls_ctx_make(&conf, why, sizeof why);
  if (!ctx) snprintf(err, errlen, "cannot set up TLS on %s: %s", id, why);
  return ctx;
}

int gw_worker_tls_reload(gw_worker_t *w, const gw_config_t *next, char *err, size_t errlen) {
  /* Before the contexts are made: they take the ticket lifetime from it. */
  gw_tickets_set_rotate(next->ticket_rotate);
  if (!gw_config_same_listen(w->cfg, next) || w->draining) return 0; /* needs a restart */
  gw_tls_ctx_t **made = gw_xcalloc(next->nlisten ? next->nlisten : 1, sizeof *made);
  for (size_t i = 0; i < next->nlisten; i++) {
    if (next->listen[i].ncerts == 0) continue;
    made[i] = make_tls(next, &next->listen[i], err, errlen);
    if (!made[i]) {
      for (size_t k = 0; k < i; k++) gw_tls_ctx_free(made[k]);
      free(made);
      gw_tickets_set_rotate(w->cfg->ticket_rotate);
      return GW_ECONFIG;
    }
  }
  /* All or nothing: only now do the listeners switch. Connections keep a
   * reference to the context they were accepted with. */
  for (size_t i = 0; i < next->nlisten; i++) {
    if (!made[i]) continue;
    gw_tls_ctx_free(w->tls[i]);
    w->tls[i] = made[i];
  }
  free(made);
  return 0;
}

/* The socket the master made for this address, else one of our own. */
static int listen_on(gw_worker_t *w, uv_tcp_t *handle, const gw_listen_t *addr) {
  int fd = gw_listener_take(addr->host, addr->port);
  if (fd >= 0) return gw_listener_adopt(w->loop, handle, fd, on_connection);
  return gw_listener_open(w->loop, handle, addr, on_connection);
}

/* The configuration's listen and admin addresses are the ones the master
 * made this slot's sockets for (listener.h). */
static int same_addresses_as_master(gw_worker_t *w) {
  gw_listen_t *all;
  size_t n = gw_config_addresses(w->cfg, &all);
  int same = gw_listener_inherited_match(all, n);
  gw_listen_addresses_free(all, n);
  return same;
}

static int has_tls_listener(const gw_config_t *cfg) {
  for (size_t i = 0; i < cfg->nlisten; i++)
    if (cfg->listen[i].ncerts > 0) return 1;
  return 0;
}

/* Says so when a TLS 1.3 suite will not use the gateway's own record code
 * (tls_record.c): its start-up checks against OpenSSL failed on this
 * machine. Connections still work, through OpenSSL's slower record layer.
 * Every worker runs the same code on the same CPU: the first one speaks. */
static void warn_of_slow_tls_records(void) {
  char why[600];
  if (gw_tls_rec_self_check(why, sizeof why) != 0) gw_log_warn("TLS: %s", why);
}

static int open_listeners(gw_worker_t *w) {
  if (!same_addresses_as_master(w)) {
    gw_log_error("the listen or admin addresses changed since the gateway started: restart it to apply them");
    return GW_ECONFIG;
  }
  w->listeners = gw_xcalloc(w->cfg->nlisten, sizeof *w->listeners);
  w->tls = gw_xcalloc(w->cfg->nlisten ? w->cfg->nlisten : 1, sizeof *w->tls);
  if (w->index == 0 && has_tls_listener(w->cfg)) warn_of_slow_tls_records();
  for (size_t i = 0; i < w->cfg->nlisten; i++) {
    const gw_listen_t *l = &w->cfg->listen[i];
    if (l->ncerts > 0) {
      /* The files were checked when the configuration loaded (gw.config);
       * this can still fail if they changed since. */
      char err[1400];
      w->tls[i] = make_tls(w->cfg, l, err, sizeof err);
      if (!w->tls[i]) {
        gw_log_error("%s", err);
        return GW_ECONFIG;
      }
    }
    int rc = listen_on(w, &w->listeners[i], l);
    if (rc) {
      gw_log_error("cannot listen on %s:%d: %s", l->host, l->port, gw_strerror(rc));
      return rc;
    }
    w->listeners[i].data = w;
    w->nlisteners++;
  }
  if (!w->cfg->admin) return 0;
  /* The admin listener: same accept path; conn.c tells its connections
   * apart by the server handle and hands their requests to admin.c. */
  gw_listen_t addr = {0};
  int rc = gw_listen_parse(w->cfg->admin, &addr);
  if (rc == 0) rc = listen_on(w, &w->admin_listener, &addr);
  if (rc) {
    gw_log_error("cannot listen on admin address %s: %s", w->cfg->admin, gw_strerror(rc));
  } else {
    w->admin_listener.data = w;
    w->admin_open = 1;
  }
  free(addr.host);
  return rc;
}

/* Takes over this worker's shared memory slot (see shm.h: one writer per slot). */
static void publish_start(gw_worker_t *w) {
  gw_shm_worker_t *s = gw_shm_worker((unsigned)w->index);
  if (!s) return;
  /* A predecessor killed while writing left seq odd: make it even again. */
  if (s->seq & 1) gw_shm_info_end(s);
  s->pid = (int32_t)getpid();
  gw_shm_info_begin(s);
  s->info.started_at = gw_ffi_now();
  gw_shm_info_end(s);
  gw_worker_publish(w);
}

int gw_worker_run(const char *path, int index, int workers_override) {
  char role[32];
  snprintf(role, sizeof role, "worker %d", index);
  gw_log_set_role(role);
  /* A worker never outlives its master. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) return 1;

  static gw_worker_t worker;
  gw_worker_t *w = &worker;
  gw__worker = w;
  w->index = index;
  w->loop = uv_default_loop();
  w->path = path;
  w->workers_override = workers_override;

  char err[4096], loaded_hash[65];
  gw_vm_files_t files = {NULL, 0};
  gw_reload_file_hash(path, loaded_hash); /* before the load: see changed_while_loading */
  w->vm = gw_vm_load(path, GW_VM_WORKER, 1, 0, &files, err, sizeof err);
  if (!w->vm) {
    gw_log_error("%s", err);
    return 2;
  }
  gw_config_copy(&w->config, &w->vm->config);
  w->cfg = &w->config;
  gw_tickets_set_rotate(w->cfg->ticket_rotate);
  if (gw_watchdog_start(w->cfg->timeouts.script) != 0)
    gw_log_warn("cannot start the watchdog timer: scripts have no CPU budget");
  gw_metrics_init((unsigned)index);
  publish_start(w);
  int opened = open_logs(w->cfg) == 0 && open_listeners(w) == 0;
  gw_listener_drop_untaken();
  if (!opened) return 2;
  if (gw_vm_start(w->vm, err, sizeof err) != 0) {
    gw_log_error("%s", err);
    return 2;
  }
  gw_reload_init(w, &files, loaded_hash);
  gw_vm_files_free(&files);
  watch_signal(w, &w->sig_term, SIGTERM);
  watch_signal(w, &w->sig_int, SIGINT);
  watch_signal(w, &w->sig_usr1, SIGUSR1);
  watch_signal(w, &w->sig_hup, SIGHUP);
  /* The master forked us with these blocked (master.c spawn_worker): now
   * that the handlers are in place, let whatever arrived meanwhile in. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  uv_timer_init(w->loop, &w->stats_timer);
  w->stats_timer.data = w;
  uv_timer_start(&w->stats_timer, on_stats_timer, 1000, 1000);
  uv_unref((uv_handle_t *)&w->stats_timer);
  uv_run(w->loop, UV_RUN_DEFAULT);
  return 0;
}
