/*
 * ffi_time.h: what the rest of the core needs from the Lua timers of
 * ffi_time.c (gw.timer.after/every); the FFI functions themselves are
 * declared in lua/gateway/base.lua.
 */
#ifndef GW_FFI_TIME_H
#define GW_FFI_TIME_H

#include "lua_vm.h"

/* Wall-clock time in seconds (gw.now() in Lua); C uses it for timestamps. */
double gw_ffi_now(void);

/* Stops and releases every repeating timer of `vm`, a generation a reload
 * replaced (call gw_vm_retire first). Each held a reference on `vm`, so the
 * generation can be freed once its requests and one-shot timers are done.
 * The handles close asynchronously; the references go in their close
 * callbacks. */
void gw_ltimers_retire(gw_vm_t *vm);
/* Stops every timer of `vm`, one-shots included: for a generation that a
 * reload rejected after its timers were started (gw_vm_start), which never
 * served and so has nothing in flight that a one-shot timer belongs to
 * (call gw_vm_retire first). */
void gw_ltimers_cancel(gw_vm_t *vm);

#endif
