/*
 * ffi.h: the flat C ABI that lua/ calls through LuaJIT's FFI.
 *
 * Conventions (lua/gateway/base.lua declares the same prototypes):
 * - functions are named gw_ffi_<area>_<verb> and take plain C types only;
 * - a request is named by (gw_req_t *, serial) and a task by
 *   (gw_task_t *, serial); a stale pair gives GW_FFI_BAD_CONTEXT, which Lua
 *   turns into the error "request already finished";
 * - pointers handed back are borrowed until the next call into the core:
 *   Lua copies them at once with ffi.string;
 * - a call that must wait returns GW_FFI_AGAIN and a waiter id; the Lua
 *   wrapper yields and is resumed with that id and the results.
 */
#ifndef GW_FFI_H
#define GW_FFI_H

#define GW_FFI_OK 0
#define GW_FFI_ERROR (-1)
#define GW_FFI_AGAIN (-2)
#define GW_FFI_DECLINED (-5)
#define GW_FFI_BAD_CONTEXT (-101)

#define GW_FFI_EXPORT __attribute__((visibility("default"), used))

#endif
