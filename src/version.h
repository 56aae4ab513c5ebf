/* version.h: the gateway's version and the ABI version the lua/ library checks. */
#ifndef GW_VERSION_H
#define GW_VERSION_H

#define GW_VERSION "0.1.0"
/* Bumped whenever a gw_ffi_* signature changes; lua/gateway/base.lua must match. */
#define GW_FFI_ABI 13

#endif
