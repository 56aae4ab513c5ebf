/*
 * errors.c: messages and names for the codes of errors.h, delegating libuv's own
 * codes to uv_strerror/uv_err_name.
 */
#include "errors.h"

#include <uv.h>

const char *gw_strerror(int err) {
  switch (err) {
#define XX(name, code, msg) \
  case code: return msg;
    GW_ERRNO_MAP(XX)
#undef XX
  }
  return uv_strerror(err);
}

const char *gw_err_name(int err) {
  switch (err) {
#define XX(name, code, msg) \
  case code: return #name;
    GW_ERRNO_MAP(XX)
#undef XX
  }
  return uv_err_name(err);
}
