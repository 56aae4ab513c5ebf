/*
 * errors.h: the gateway's error codes.
 *
 * Every fallible function returns 0 or a negative code. libuv's UV_E* codes pass
 * through unchanged; the gateway's own codes come from the table below, kept far
 * below libuv's range so the two never collide. gw_strerror() and gw_err_name()
 * understand both.
 */
#ifndef GW_ERRORS_H
#define GW_ERRORS_H

#define GW_ERRNO_MAP(XX)                                  \
  XX(EPARSE, -10001, "malformed request")                 \
  XX(ELIMIT, -10002, "limit exceeded")                    \
  XX(ETOOBIG, -10003, "body too large")                   \
  XX(ECONFIG, -10004, "configuration error")              \
  XX(ELUA, -10005, "lua error")                           \
  XX(EFINISHED, -10006, "request already finished")       \
  XX(EHEADER, -10007, "invalid header name or value")     \
  XX(ESTATE, -10008, "operation not valid in this state") \
  XX(ETIMEDOUT, -10009, "timed out")                      \
  XX(ECLOSED, -10010, "connection closed")                \
  XX(ENOTFOUND, -10011, "not found")                      \
  XX(EEXISTS, -10012, "exists")                           \
  XX(ENOTNUM, -10013, "not a number")                     \
  XX(ENOSPACE, -10014, "no memory")                       \
  XX(ETLS, -10015, "TLS handshake or record failed")

typedef enum {
#define XX(name, code, msg) GW_##name = code,
  GW_ERRNO_MAP(XX)
#undef XX
} gw_errno_t;

/* The message for code `err` (gateway or libuv); never NULL, static storage. */
const char *gw_strerror(int err);
/* The symbolic name for `err`, e.g. "EPARSE" or "ECONNREFUSED"; static storage. */
const char *gw_err_name(int err);

#endif
