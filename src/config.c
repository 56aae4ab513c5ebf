/* config.c: freeing a gw_config_t and parsing listen addresses. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "mem.h"

static void free_certs(gw_listen_t *l) {
  for (size_t i = 0; i < l->ncerts; i++) {
    free(l->certs[i].cert);
    free(l->certs[i].key);
  }
  free(l->certs);
  l->certs = NULL;
  l->ncerts = 0;
  free(l->client_ca);
  l->client_ca = NULL;
}

void gw_listen_copy_tls(gw_listen_t *dst, const gw_listen_t *src) {
  free_certs(dst);
  dst->ncerts = src->ncerts;
  if (src->ncerts) {
    dst->certs = gw_xcalloc(src->ncerts, sizeof *dst->certs);
    for (size_t k = 0; k < src->ncerts; k++) {
      dst->certs[k].cert =
          src->certs[k].cert ? gw_xstrndup(src->certs[k].cert, strlen(src->certs[k].cert)) : NULL;
      dst->certs[k].key =
          src->certs[k].key ? gw_xstrndup(src->certs[k].key, strlen(src->certs[k].key)) : NULL;
    }
  }
  dst->client_ca = src->client_ca ? gw_xstrndup(src->client_ca, strlen(src->client_ca)) : NULL;
  dst->verify_client = src->verify_client;
}

void gw_config_free(gw_config_t *c) {
  for (size_t i = 0; i < c->nlisten; i++) {
    free(c->listen[i].host);
    free_certs(&c->listen[i]);
  }
  free(c->listen);
  free(c->admin);
  free(c->access_log);
  free(c->error_log);
  for (size_t i = 0; i < c->ndicts; i++) free(c->dicts[i].name);
  free(c->dicts);
  memset(c, 0, sizeof *c);
}

static char *dup_or_null(const char *s) { return s ? gw_xstrndup(s, strlen(s)) : NULL; }

void gw_config_copy(gw_config_t *dst, const gw_config_t *src) {
  *dst = *src;
  dst->listen = gw_xcalloc(src->nlisten ? src->nlisten : 1, sizeof *dst->listen);
  for (size_t i = 0; i < src->nlisten; i++) {
    dst->listen[i].host = dup_or_null(src->listen[i].host);
    dst->listen[i].port = src->listen[i].port;
    gw_listen_copy_tls(&dst->listen[i], &src->listen[i]);
  }
  dst->admin = dup_or_null(src->admin);
  dst->access_log = dup_or_null(src->access_log);
  dst->error_log = dup_or_null(src->error_log);
  dst->dicts = gw_xcalloc(src->ndicts ? src->ndicts : 1, sizeof *dst->dicts);
  for (size_t i = 0; i < src->ndicts; i++) {
    dst->dicts[i].name = dup_or_null(src->dicts[i].name);
    dst->dicts[i].size = src->dicts[i].size;
  }
}

int gw_config_same_listen(const gw_config_t *a, const gw_config_t *b) {
  if (a->nlisten != b->nlisten) return 0;
  for (size_t i = 0; i < a->nlisten; i++)
    if (a->listen[i].port != b->listen[i].port || strcmp(a->listen[i].host, b->listen[i].host) != 0 ||
        (a->listen[i].ncerts > 0) != (b->listen[i].ncerts > 0))
      return 0;
  return 1;
}

int gw_listen_parse(const char *s, gw_listen_t *out) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon[1] == '\0') return GW_ECONFIG;
  const char *host = s;
  size_t host_len = (size_t)(colon - s);
  if (host_len >= 2 && host[0] == '[' && host[host_len - 1] == ']') {
    host++;
    host_len -= 2;
  }
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535) return GW_ECONFIG;
  out->host = host_len ? gw_xstrndup(host, host_len) : gw_xstrndup("0.0.0.0", 7);
  out->port = (int)port;
  return 0;
}

size_t gw_config_addresses(const gw_config_t *cfg, gw_listen_t **out) {
  gw_listen_t *a = gw_xcalloc(cfg->nlisten + 1, sizeof *a);
  size_t n = 0;
  for (; n < cfg->nlisten; n++) {
    a[n].host = gw_xstrndup(cfg->listen[n].host, strlen(cfg->listen[n].host));
    a[n].port = cfg->listen[n].port;
  }
  if (cfg->admin && gw_listen_parse(cfg->admin, &a[n]) == 0) n++;
  *out = a;
  return n;
}

void gw_listen_addresses_free(gw_listen_t *a, size_t n) {
  for (size_t i = 0; i < n; i++) free(a[i].host);
  free(a);
}
