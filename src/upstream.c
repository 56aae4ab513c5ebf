/*
 * upstream.c: the registry of upstream groups, their servers, name
 * resolution and passive health (see upstream.h).
 *
 * Hostnames are resolved with libuv's getaddrinfo (a thread pool), never on
 * the loop, and again every RESOLVE_EVERY_MS; until a first answer the
 * server is skipped by the balancer.
 */
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "balancer.h"
#include "health.h"
#include "errors.h"
#include "log.h"
#include "mem.h"
#include "worker.h"

#define RESOLVE_EVERY_MS 30000

static gw_upstream_t **registry;
static size_t nregistry;

uint64_t gw_now_ms(void) { return uv_hrtime() / 1000000; }

gw_upstream_t *gw_upstream_get(const char *name) {
  for (size_t i = 0; i < nregistry; i++)
    if (strcmp(registry[i]->name, name) == 0) return registry[i];
  gw_upstream_t *up = gw_xcalloc(1, sizeof *up);
  up->name = gw_xstrndup(name, strlen(name));
  up->keepalive_idle = 32;
  up->keepalive_timeout = 60;
  up->t_connect = 5;
  up->t_send = 30;
  up->t_read = 30;
  up->retries = 1;
  up->max_body = 8 * 1024 * 1024;
  up->breaker = gw_health_get(name, "");
  registry = gw_xrealloc(registry, (nregistry + 1) * sizeof *registry);
  registry[nregistry++] = up;
  return up;
}

/* ---- resolution ---- */

typedef struct {
  uv_getaddrinfo_t req;
  gw_server_t *server;
} resolve_t;

static void resolve_later(gw_server_t *s);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  resolve_t *r = req->data;
  gw_server_t *s = r->server;
  if (status == 0 && res) {
    memcpy(&s->sa, res->ai_addr, res->ai_addrlen);
    if (s->sa.ss_family == AF_INET) ((struct sockaddr_in *)&s->sa)->sin_port = htons((uint16_t)s->port);
    else ((struct sockaddr_in6 *)&s->sa)->sin6_port = htons((uint16_t)s->port);
    s->resolved = 1;
  } else if (!s->resolved) {
    gw_log_warn("upstream server %s: cannot resolve: %s", s->addr, gw_strerror(status));
  }
  uv_freeaddrinfo(res);
  free(r);
  if (!s->retired) resolve_later(s);
}

static void start_resolve(gw_server_t *s) {
  if (!gw__worker) return; /* configuration check or master: nothing to connect */
  s->resolving = 1;        /* from now on on_resolved keeps it going, every RESOLVE_EVERY_MS */
  resolve_t *r = gw_xcalloc(1, sizeof *r);
  r->server = s;
  r->req.data = r;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (uv_getaddrinfo(gw__worker->loop, &r->req, on_resolved, s->host, NULL, &hints) != 0) free(r);
}

static void on_resolve_timer(uv_timer_t *t) {
  gw_server_t *s = t->data;
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  start_resolve(s);
}

static void resolve_later(gw_server_t *s) {
  uv_timer_t *t = gw_xmalloc(sizeof *t);
  uv_timer_init(gw__worker->loop, t);
  t->data = s;
  uv_timer_start(t, on_resolve_timer, RESOLVE_EVERY_MS, 0);
  uv_unref((uv_handle_t *)t);
}

/* ---- servers ---- */

/* A host name or address: no control byte, space or URL punctuation (a
 * path, a query, user info), brackets only around an IPv6 address. */
static int host_valid(const char *host, size_t len) {
  if (len >= 2 && host[0] == '[') return host[len - 1] == ']';
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)host[i];
    if (ch <= 0x20 || ch == 0x7f || strchr("/?#@[]\\", ch)) return 0;
  }
  return 1;
}

static int parse_addr(const char *addr, gw_server_t *s, char *err, size_t errlen) {
  int port = 80;
  if (strncmp(addr, "https://", 8) == 0) {
    addr += 8;
    port = 443;
    s->tls = 1;
  } else if (strncmp(addr, "http://", 7) == 0) {
    addr += 7;
  } else if (strstr(addr, "://")) {
    snprintf(err, errlen, "server %s: only http:// and https:// servers", addr);
    return GW_ECONFIG;
  }
  /* "host[:port]/" at most: one trailing slash, no path. */
  size_t alen = strlen(addr);
  if (alen > 0 && addr[alen - 1] == '/') alen--;
  const char *colon = memrchr(addr, ':', alen);
  const char *host = addr;
  size_t hlen = colon ? (size_t)(colon - addr) : alen;
  if (colon) {
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (end != addr + alen) p = 0;
    if (p < 1 || p > 65535) {
      snprintf(err, errlen, "server %s: bad port", addr);
      return GW_ECONFIG;
    }
    port = (int)p;
  }
  if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
    host++;
    hlen -= 2;
  }
  if (hlen == 0) {
    snprintf(err, errlen, "server %s: no host", addr);
    return GW_ECONFIG;
  }
  if (!host_valid(host, hlen)) {
    snprintf(err, errlen, "server %s: bad host", addr);
    return GW_ECONFIG;
  }
  s->host = gw_xstrndup(host, hlen);
  s->port = port;
  if (uv_ip4_addr(s->host, port, (struct sockaddr_in *)&s->sa) == 0 ||
      uv_ip6_addr(s->host, port, (struct sockaddr_in6 *)&s->sa) == 0)
    s->resolved = s->ip_literal = 1;
  return 0;
}

static gw_server_t *find_server(gw_upstream_t *up, const char *addr) {
  for (size_t i = 0; i < up->nservers; i++)
    if (strcmp(up->servers[i]->addr, addr) == 0) return up->servers[i];
  return NULL;
}

int gw_upstream_set_servers(gw_upstream_t *up, const char **addrs, const int *weights, size_t n, char *err,
                            size_t errlen) {
  gw_server_t **list = gw_xcalloc(n ? n : 1, sizeof *list);
  /* Every address is parsed before any lookup starts: a lookup in flight
   * holds its server, so a new server may be freed (a later address is
   * bad) only while none has begun. */
  for (size_t i = 0; i < n; i++) {
    gw_server_t *s = find_server(up, addrs[i]);
    if (!s) {
      s = gw_xcalloc(1, sizeof *s);
      if (parse_addr(addrs[i], s, err, errlen) != 0) {
        free(s->host);
        free(s);
        for (size_t k = 0; k < i; k++)
          if (!find_server(up, list[k]->addr)) {
            free(list[k]->host);
            free(list[k]->addr);
            free(list[k]);
          }
        free(list);
        return GW_ECONFIG;
      }
      s->addr = gw_xstrndup(addrs[i], strlen(addrs[i]));
    }
    list[i] = s;
  }
  for (size_t i = 0; i < n; i++) {
    gw_server_t *s = list[i];
    /* Also for a server found in the list: one declared by the master's own
     * load (inherited by the fork) was never resolved there. */
    if (!s->resolved && !s->resolving) start_resolve(s);
    s->weight = weights[i] > 0 ? weights[i] : 1;
    s->retired = 0;
    /* Looked up again each time: a group declared before the shared zone
     * existed (the master's own load, inherited by forked workers) must
     * move to the shared entries. It is the same entry otherwise. */
    s->health = gw_health_get(up->name, s->addr);
  }
  /* Servers the new list dropped stay allocated for exchanges in flight. */
  for (size_t i = 0; i < up->nservers; i++) {
    int kept = 0;
    for (size_t k = 0; k < n; k++) kept |= list[k] == up->servers[i];
    if (!kept) up->servers[i]->retired = 1;
  }
  up->breaker = gw_health_get(up->name, "");
  free(up->servers);
  up->servers = list;
  up->nservers = n;
  gw_balancer_rebuild(up);
  return 0;
}

static int same_str(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

void gw_upstream_set_tls(gw_upstream_t *up, gw_tls_client_ctx_t *ctx, int verify, const char *sni,
                         const char *ca) {
  if (up->tls_ctx && up->tls_verify == verify && same_str(up->tls_sni, sni) && same_str(up->tls_ca, ca) &&
      gw_tls_client_ctx_same(up->tls_ctx, ctx)) {
    gw_tls_client_ctx_free(ctx); /* it only proved that the settings still load */
    return;
  }
  /* Connections and states made with the old context keep their own
   * references to what they need (OpenSSL counts them). */
  gw_tls_client_ctx_free(up->tls_ctx);
  up->tls_ctx = ctx;
  up->tls_verify = verify;
  free(up->tls_sni);
  free(up->tls_ca);
  up->tls_sni = sni ? gw_xstrndup(sni, strlen(sni)) : NULL;
  up->tls_ca = ca ? gw_xstrndup(ca, strlen(ca)) : NULL;
  up->tls_gen++;
}

gw_server_t *gw_upstream_pick(gw_upstream_t *up, const char *key, size_t keylen, const gw_server_t *avoid) {
  return gw_balancer_pick(up, key, keylen, avoid, gw_now_ms());
}

void gw_server_report(gw_upstream_t *up, gw_server_t *s, int ok, double latency_ms) {
  uint64_t now = gw_now_ms();
  gw_balancer_observe(s, ok ? latency_ms : gw_balancer_failure_ms(latency_ms), now);
  if (gw_health_report(s->health, ok, up->passive_failures, up->passive_cooldown, now))
    gw_log_warn("upstream %s: server %s marked down for %.1f s after failures", up->name, s->addr,
                up->passive_cooldown);
}

int gw_upstream_breaker_allow(gw_upstream_t *up, int *probe) {
  *probe = 0;
  if (up->breaker_failures <= 0) return 1;
  return gw_breaker_allow(up->breaker, gw_now_ms(), probe);
}

void gw_upstream_breaker_report(gw_upstream_t *up, int ok, int probe) {
  if (up->breaker_failures <= 0) return;
  gw_breaker_report(up->breaker, ok, probe, up->breaker_failures, up->breaker_window, up->breaker_cooldown,
                    gw_now_ms());
}

int gw_upstream_live(const gw_upstream_t *up) {
  /* Outside a worker (gateway -t, the master) every group is live. */
  if (!gw__worker || !gw__worker->vm) return 1;
  return up->declared_gen >= gw__worker->vm->generation;
}

gw_upstream_t **gw_upstream_all(size_t *n) {
  *n = nregistry;
  return registry;
}
