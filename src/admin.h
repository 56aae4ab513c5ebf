/*
 * admin.h: the admin listener's endpoints, answered in C.
 *
 * Where gw.config{ admin = "host:port" } is set, every worker listens there
 * too (its own SO_REUSEPORT socket, like the public listeners). Connections
 * accepted on it use the same connection and HTTP/1.1 machinery (conn.c)
 * but never reach Lua: conn.c hands each of their requests to
 * gw_admin_handle. The public listeners never serve these paths, and the
 * admin listener never serves the configuration's routes.
 *
 *   GET  /status   JSON: version, uptime, workers, configuration hash and
 *                  load time, reload results and the last reload error
 *                  (with file and line), shared dicts, upstreams
 *   GET  /metrics  Prometheus text, summed over all workers (metrics.h)
 *   POST /reload   reloads this worker now and answers with the result,
 *                  then asks the master (SIGHUP with the worker's index as
 *                  the signal's value) to reload all the other workers
 *
 * Each worker publishes what it knows in the shared memory zone (shm.h), so
 * whichever worker takes an admin request answers for all of them.
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include "request.h"

/* Answers `r`, a request that arrived on the admin listener. The answer is
 * handed to the connection before this returns. Reloads (POST /reload),
 * which runs Lua: never call it from inside Lua code. */
void gw_admin_handle(gw_req_t *r);

#endif
