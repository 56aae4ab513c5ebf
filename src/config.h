/*
 * config.h: the settings of gw.config{...} as the C core uses them.
 *
 * A gw_config_t is filled from the table the configuration script leaves in
 * its Lua state (lua_vm.c, gw_config_from_lua) after the Lua side has merged
 * it over the defaults, so C never invents a default of its own. Owned by the
 * gw_vm_t that loaded it; freed with it (gw_config_free).
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "tls.h"

/* The longest wait a timeout, timer or sleep given in seconds may ask for:
 * one year. Longer ones (1e300, math.huge) are clamped to it: a timer that
 * long never fires in the life of a process anyway, and a deadline (a
 * clock in ms plus the wait) stays far from the end of uint64_t. */
#define GW_MAX_SECONDS (365.0 * 24 * 3600)

/* `seconds` from the configuration or a script as whole milliseconds,
 * rounded up so that a wait never ends early: NaN and anything <= 0 give 0,
 * anything past GW_MAX_SECONDS gives that maximum. A double converted to an
 * integer type it does not fit is undefined behaviour in C (on x86-64,
 * 1e300 s gave 0 ms or 2^63: an immediate 408, a gw.sleep of 1 ms), so
 * every configured or scripted time becomes an integer here only. Callers
 * that need a minimum (a timer of at least 1 ms) apply it to the result. */
static inline uint64_t gw_seconds_to_ms(double seconds) {
  if (!(seconds > 0)) return 0; /* NaN compares false */
  if (seconds > GW_MAX_SECONDS) seconds = GW_MAX_SECONDS;
  return (uint64_t)ceil(seconds * 1000.0);
}

typedef struct gw_limits_s {
  size_t header_bytes; /* request line + headers; a longer target is 414, a longer head 431 */
  size_t headers;      /* header count; more is 431 */
  size_t body_bytes;   /* request body read by req:body(); more is 413 */
} gw_limits_t;

/* timeouts.script when the configuration does not set it, and the budget of
 * the first load at start-up (before any configuration is known). */
#define GW_SCRIPT_BUDGET_DEFAULT 5.0

/* The most workers gw.config (MAX_WORKERS in lua/gateway.lua) and -w allow. */
#define GW_MAX_WORKERS 1024

typedef struct gw_timeouts_s {
  double header; /* seconds to receive a whole head once it started: 408 */
  double body;   /* seconds between two reads of a body being read */
  double idle;   /* seconds a keep-alive connection may wait for its next request */
  double drain;  /* seconds in-flight requests get after SIGTERM */
  double script; /* seconds a script may run without yielding (watchdog.h) */
} gw_timeouts_t;

typedef struct gw_listen_s {
  char *host;           /* numeric address as written, e.g. "127.0.0.1" or "::1" */
  int port;             /* 1..65535 */
  gw_tls_cert_t *certs; /* TLS listener: ncerts certificates (the first is the default),
                         * paths resolved against the configuration's folder; NULL: plain */
  size_t ncerts;
  char *client_ca;               /* TLS listener: PEM file of the client CAs (resolved path), or NULL */
  gw_tls_verify_t verify_client; /* OFF unless client_ca is set */
} gw_listen_t;

/* One gw.shared_dict(NAME, SIZE) declaration. */
typedef struct gw_dict_decl_s {
  char *name;  /* gw_xmalloc'd */
  size_t size; /* bytes, already parsed from "10m" and the like */
} gw_dict_decl_t;

typedef struct gw_config_s {
  int workers;         /* resolved: "auto" becomes the number of cores */
  gw_listen_t *listen; /* nlisten entries, gw_xmalloc'd */
  size_t nlisten;
  char *admin;      /* "host:port" or NULL when off */
  char *access_log; /* path, "stdout", or NULL when off */
  char *error_log;  /* path or "stderr" */
  gw_limits_t limits;
  gw_timeouts_t timeouts;
  double ticket_rotate;  /* tls.ticket_rotate: seconds each session ticket key encrypts */
  int session_tickets;   /* tls.session_tickets: 0 turns session resumption off */
  gw_dict_decl_t *dicts; /* ndicts entries, gw_xmalloc'd, in declaration order */
  size_t ndicts;
} gw_config_t;

void gw_config_free(gw_config_t *c);
/* Makes `dst` a deep copy of `src`; `dst` owns its strings afterwards. */
void gw_config_copy(gw_config_t *dst, const gw_config_t *src);
/* 1 if the two configurations listen on the same addresses, in the same order
 * (TLS or not alike; certificates and client-certificate settings may differ). */
int gw_config_same_listen(const gw_config_t *a, const gw_config_t *b);
/* Makes `dst`'s TLS settings (certificates, client CA, verify mode) a deep
 * copy of `src`'s, freeing what `dst` had. */
void gw_listen_copy_tls(gw_listen_t *dst, const gw_listen_t *src);
/* Parses "host:port", "[v6]:port" or ":port"; fills `out` (host gw_xmalloc'd). */
int gw_listen_parse(const char *s, gw_listen_t *out);
/* Every address `cfg` accepts connections on: its listen entries, then the
 * admin address when it parses (one that does not is reported where the
 * admin listener opens). Returns the count; *out gets an array of host and
 * port copies (no TLS settings), freed with gw_listen_addresses_free. */
size_t gw_config_addresses(const gw_config_t *cfg, gw_listen_t **out);
void gw_listen_addresses_free(gw_listen_t *a, size_t n);

#endif
