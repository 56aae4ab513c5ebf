/*
 * health_check.c: active health checks (see health_check.h).
 *
 * One timer per group, owned by the group (groups live as long as the
 * worker). Each round starts one check exchange per server; a round does
 * not start while the previous one still has checks in flight, so a slow
 * server cannot pile checks up.
 */
#include "health_check.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "client.h"
#include "health.h"
#include "log.h"
#include "mem.h"
#include "worker.h"

/* Per group; made on first configuration, never freed (like the group). */
typedef struct {
  gw_upstream_t *up;
  gw_active_check_t cfg;
  uv_timer_t timer;
  int running;   /* the timer is started */
  int in_flight; /* checks of the current round not finished */
} checker_t;

/* One check; freed in its on_done. */
typedef struct {
  gw_exchange_t x;
  checker_t *ck;
  gw_server_t *server;
} check_t;

static checker_t **checkers;
static size_t nchecker;

static checker_t *checker_of(gw_upstream_t *up) {
  for (size_t i = 0; i < nchecker; i++)
    if (checkers[i]->up == up) return checkers[i];
  checker_t *ck = gw_xcalloc(1, sizeof *ck);
  ck->up = up;
  checkers = gw_xrealloc(checkers, (nchecker + 1) * sizeof *checkers);
  checkers[nchecker++] = ck;
  return ck;
}

static int check_on_head(gw_exchange_t *x) { return 0; }
static int check_on_body(gw_exchange_t *x, const char *p, size_t n) { return 0; }

static void verdict(check_t *c, int ok) {
  gw_health_t *h = c->server->health;
  const gw_active_check_t *cfg = &c->ck->cfg;
  if (ok) {
    __atomic_store_n(&h->active_bad, 0, __ATOMIC_RELAXED);
    uint32_t n = __atomic_add_fetch(&h->active_ok, 1, __ATOMIC_RELAXED);
    if (gw_health_load32(&h->active_down) && n >= (uint32_t)cfg->healthy) {
      __atomic_store_n(&h->active_down, 0, __ATOMIC_RELAXED);
      gw_log_info("upstream %s: server %s is healthy again", c->ck->up->name, c->server->addr);
    }
  } else {
    __atomic_store_n(&h->active_ok, 0, __ATOMIC_RELAXED);
    uint32_t n = __atomic_add_fetch(&h->active_bad, 1, __ATOMIC_RELAXED);
    if (!gw_health_load32(&h->active_down) && n >= (uint32_t)cfg->unhealthy) {
      __atomic_store_n(&h->active_down, 1, __ATOMIC_RELAXED);
      gw_log_warn("upstream %s: server %s failed %u health checks: out", c->ck->up->name, c->server->addr, n);
    }
  }
}

static void check_on_done(gw_exchange_t *x, int err, const char *msg) {
  check_t *c = x->data;
  int status = x->parser.status;
  verdict(c, err == 0 && status >= 200 && status < 400);
  c->ck->in_flight--;
  gw_exchange_release(x);
  free(c);
}

static const gw_exchange_ops_t check_ops = {check_on_head, check_on_body, check_on_done, NULL, NULL};

static void on_round(uv_timer_t *t) {
  checker_t *ck = t->data;
  if (!gw_upstream_live(ck->up)) {
    /* The group was dropped by a reload: its checks stop, their verdicts go. */
    uv_timer_stop(&ck->timer);
    gw_health_check_clear(ck->up);
    return;
  }
  if (!ck->cfg.path || ck->in_flight > 0 || (gw__worker && gw__worker->draining)) return;
  gw_upstream_t *up = ck->up;
  for (size_t i = 0; i < up->nservers; i++) {
    gw_server_t *s = up->servers[i];
    if (!s->resolved) continue;
    check_t *c = gw_xcalloc(1, sizeof *c);
    c->ck = ck;
    c->server = s;
    c->x.up = up;
    c->x.ops = &check_ops;
    c->x.data = c;
    c->x.fixed_server = s;
    c->x.timeout = ck->cfg.timeout;
    /* The path was checked when the configuration loaded (upstream.lua). */
    (void)gw_exchange_set_request(&c->x, "GET", 3, ck->cfg.path, strlen(ck->cfg.path));
    gw_exchange_add_header(&c->x, "User-Agent", 10, "gateway-health-check", 20);
    ck->in_flight++;
    if (gw_exchange_start(&c->x) != 0) {
      ck->in_flight--;
      gw_exchange_release(&c->x);
      free(c);
    }
  }
}

void gw_health_check_clear(gw_upstream_t *up) {
  /* Nobody checks these servers any more: what checks decided no longer holds. */
  for (size_t i = 0; i < up->nservers; i++) {
    gw_health_t *h = up->servers[i]->health;
    __atomic_store_n(&h->active_down, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active_ok, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active_bad, 0, __ATOMIC_RELAXED);
  }
}

void gw_health_check_configure(gw_upstream_t *up, const char *path, double interval, double timeout,
                               int healthy, int unhealthy) {
  if (!gw__worker) return; /* a check of the configuration, or the master */
  checker_t *ck = checker_of(up);
  free(ck->cfg.path);
  ck->cfg.path = path ? gw_xstrndup(path, strlen(path)) : NULL;
  ck->cfg.interval = interval > 0 ? interval : 10;
  ck->cfg.timeout = timeout > 0 ? timeout : 2;
  ck->cfg.healthy = healthy > 0 ? healthy : 2;
  ck->cfg.unhealthy = unhealthy > 0 ? unhealthy : 2;
  if (gw__worker->index != 0) return;
  if (!ck->running) {
    uv_timer_init(gw__worker->loop, &ck->timer);
    ck->timer.data = ck;
    ck->running = 1;
  }
  uint64_t every = gw_seconds_to_ms(ck->cfg.interval);
  if (path) {
    uv_timer_start(&ck->timer, on_round, 0, every);
    /* Checks never keep a draining worker alive. */
    uv_unref((uv_handle_t *)&ck->timer);
  } else {
    uv_timer_stop(&ck->timer);
    gw_health_check_clear(up);
  }
}
