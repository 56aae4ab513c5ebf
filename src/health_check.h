/*
 * health_check.h: active health checks (health.active of gw.upstream).
 *
 * Worker 0 alone sends the checks (a GET of `path` to every server of the
 * group every `interval` seconds) and writes the verdict to the shared
 * health table, so the servers' state is one for all workers and the
 * servers are not asked N times. A server is out after `unhealthy`
 * consecutive failed checks (a transport error, a timeout, or a status
 * outside 200-399) and back after `healthy` consecutive good ones. If worker
 * 0 dies, its replacement takes the checks up again.
 */
#ifndef GW_HEALTH_CHECK_H
#define GW_HEALTH_CHECK_H

#include "upstream.h"

typedef struct gw_active_check_s {
  char *path;      /* the request target of the check */
  double interval; /* seconds between rounds */
  double timeout;  /* seconds a check may take */
  int healthy;     /* consecutive successes that bring a server back */
  int unhealthy;   /* consecutive failures that take it out */
} gw_active_check_t;

/* Sets (path != NULL) or removes the active checks of `up`; in worker 0 the
 * checks (re)start on the next turn of the loop. */
void gw_health_check_configure(gw_upstream_t *up, const char *path, double interval, double timeout,
                               int healthy, int unhealthy);

/* Forgets what active checks decided about the servers of `up`. */
void gw_health_check_clear(gw_upstream_t *up);

#endif
