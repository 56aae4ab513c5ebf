/*
 * upstream.h: upstream groups and their servers, as a worker knows them.
 *
 * gw.upstream(NAME, spec) declares a group in the configuration. The C side
 * keeps one gw_upstream_t per name for the life of the worker process, so a
 * reload that declares the group again finds it, with its servers' idle
 * connections and health: a server with the same address keeps its state.
 * Groups and servers are never freed while the worker runs (a removed
 * server is only marked `retired`, a group a reload dropped is no longer
 * `live`), so an exchange in flight never holds a dangling pointer.
 *
 * Choosing a server (gw_upstream_pick) skips servers that health (health.h:
 * passive, active checks, shared by all workers) has out, and applies the
 * group's balancer (balancer.c).
 */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tls.h"

typedef struct gw_uconn_s gw_uconn_t;

typedef enum {
  GW_BALANCE_ROUND_ROBIN = 0, /* smooth weighted round robin (nginx's) */
  GW_BALANCE_LEAST_CONN,      /* fewest exchanges in flight, weighted */
  GW_BALANCE_HASH,            /* consistent hash of a key (ring with virtual nodes) */
  GW_BALANCE_EWMA             /* peak-EWMA latency x (in flight + 1) */
} gw_balance_t;

/* Owned by its group; never freed while the worker runs. */
typedef struct gw_server_s {
  char *addr; /* "host:port" as declared */
  char *host; /* host part, for the Host header and SNI */
  int port;
  struct sockaddr_storage sa; /* resolved address */
  int resolved;               /* sa is valid */
  int resolving;              /* this worker resolves it (now, or again later) */
  int weight;                 /* >= 1 */
  int current_weight;         /* smooth round robin state */
  int active;                 /* exchanges in flight */
  double ewma_ms;             /* peak-EWMA of response latency */
  uint64_t ewma_stamp;        /* ms of the last update */
  struct gw_health_s *health; /* passive/active health, shared by all workers */
  int retired;                /* dropped by a reload; kept for exchanges in flight */
  gw_uconn_t *idle;           /* pooled keep-alive connections (LIFO) */
  int nidle;
  uint64_t requests;          /* exchanges started, for status */
  uint8_t tls;                /* declared https://: connections speak TLS */
  uint8_t ip_literal;         /* host is an address: no SNI, the certificate is checked for the IP */
  gw_tls_resume_t tls_resume; /* its last TLS session, offered by the next connection */
} gw_server_t;

/* Owned by the registry; never freed while the worker runs. */
typedef struct gw_upstream_s {
  char *name;
  gw_server_t **servers; /* nservers pointers */
  size_t nservers;
  gw_balance_t balance;
  uint32_t *ring;        /* consistent-hash ring: hashes */
  uint32_t *ring_server; /* ... and the server index of each point */
  size_t nring;
  size_t rr_next;                   /* least_conn: where the next tie-break starts */
  unsigned declared_gen;            /* the VM generation that last declared the group */
  int keepalive_idle;               /* idle connections kept per server */
  double keepalive_timeout;         /* seconds an idle connection is kept */
  double t_connect, t_send, t_read; /* seconds */
  int retries;                      /* extra tries for idempotent requests */
  int passive_failures;             /* failures that mark a server down (0: off) */
  double passive_cooldown;          /* seconds it stays down */
  int breaker_failures;             /* failures within breaker_window that open the breaker (0: off) */
  double breaker_window;            /* seconds */
  double breaker_cooldown;          /* seconds open before a half-open probe */
  struct gw_health_s *breaker;      /* the group's breaker state, shared by all workers */
  size_t max_body;                  /* buffered answers larger than this fail */
  /* `tls` settings, for https:// servers (see gw_upstream_set_tls). */
  gw_tls_client_ctx_t *tls_ctx; /* NULL until a declaration asks for TLS */
  int tls_verify;               /* check certificates (the default) */
  char *tls_sni;                /* the server name to send and check, or NULL: the host */
  char *tls_ca;                 /* the trusted certificates file, or NULL: the system's */
  unsigned tls_gen;             /* bumped when the settings change: older pooled connections go */
} gw_upstream_t;

/* The group named `name`, made empty on first use. */
gw_upstream_t *gw_upstream_get(const char *name);
/* Replaces the group's server list with `addrs` (weights alongside); keeps
 * the state of servers whose address did not change. Returns 0, or
 * GW_ECONFIG with `err` filled (bad address). "https://host[:port]" servers
 * (port 443 by default) speak TLS with the group's tls settings. */
int gw_upstream_set_servers(gw_upstream_t *up, const char **addrs, const int *weights, size_t n, char *err,
                            size_t errlen);
/* Installs `ctx` (made by the caller from `verify` and `ca`; owned by `up`
 * from now on) as the group's TLS context with `sni` (may be NULL). When
 * the settings equal the current ones (the `ca` file's bytes included),
 * `ctx` is freed and the current one stays, with the servers' sessions and
 * pooled connections; otherwise the old context goes, and pooled
 * connections and sessions made with it are not reused. */
void gw_upstream_set_tls(gw_upstream_t *up, gw_tls_client_ctx_t *ctx, int verify, const char *sni,
                         const char *ca);
/* Picks a server for a new exchange; `key` is used by the hash balancer;
 * `avoid` (may be NULL) is skipped when another server is available (retries).
 * Returns NULL when every server is down. */
gw_server_t *gw_upstream_pick(gw_upstream_t *up, const char *key, size_t keylen, const gw_server_t *avoid);
/* Passive health: the outcome of one exchange with `s`. */
void gw_server_report(gw_upstream_t *up, gw_server_t *s, int ok, double latency_ms);
/* The breaker: may an exchange start? (*probe: it is the half-open probe) */
int gw_upstream_breaker_allow(gw_upstream_t *up, int *probe);
/* The breaker: one exchange's outcome. */
void gw_upstream_breaker_report(gw_upstream_t *up, int ok, int probe);
/* Every group of this process, for status and health checks; some may be
 * dropped ones (gw_upstream_live). */
gw_upstream_t **gw_upstream_all(size_t *n);
/* 1 if the worker's current configuration declares `up` (a reload may have
 * dropped it; it stays allocated for exchanges in flight). */
int gw_upstream_live(const gw_upstream_t *up);

uint64_t gw_now_ms(void);

#endif
