/* config.c: freeing a gw_config_t and parsing listen addresses. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "mem.h"

void gw_config_free(gw_config_t *c) {
  for (size_t i = 0; i < c->nlisten; i++) free(c->listen[i].host);
  free(c->listen);
  free(c->admin);
  free(c->access_log);
  free(c->error_log);
  memset(c, 0, sizeof *c);
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
