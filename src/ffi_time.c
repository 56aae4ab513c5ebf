/*
 * ffi_time.c: time, sleeping and timers for Lua (gw.now, gw.sleep,
 * gw.timer.after/every).
 *
 * A sleep is a libuv timer wrapped in a waiter: it wakes the task with no
 * results. A Lua timer (gw_ltimer_t) belongs to the VM generation that
 * created it and holds a reference on it; each firing runs the Lua function
 * in a new task. Timers made while a configuration loads in the master or
 * in `gateway -t` are not started (there is no loop): runtime.lua keeps them
 * and starts them in the worker.
 *
 * On a reload, the retired generation's repeating timers are stopped
 * (gw_ltimers_retire): each holds a reference, so otherwise the old VM would
 * never be freed. Its one-shot timers still fire once, as work in flight,
 * and a retired generation cannot start new timers.
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ffi.h"
#include "ffi_time.h"
#include "log.h"
#include "lua_vm.h"
#include "mem.h"
#include "worker.h"

GW_FFI_EXPORT double gw_ffi_now(void) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Monotonic seconds, for measuring durations. */
GW_FFI_EXPORT double gw_ffi_monotonic(void) { return (double)uv_hrtime() / 1e9; }

/* ---- sleep ---- */

/* Owned by the waiting task; freed when the timer handle has closed. */
typedef struct {
  gw_waiter_t w; /* first */
  uv_timer_t timer;
} sleep_t;

static void on_sleep_closed(uv_handle_t *h) { free(h->data); }

static void on_sleep_done(uv_timer_t *t) {
  sleep_t *sl = t->data;
  uv_close((uv_handle_t *)&sl->timer, on_sleep_closed);
  gw_waiter_wake(&sl->w, NULL, NULL);
}

static void cancel_sleep(gw_waiter_t *w) {
  sleep_t *sl = (sleep_t *)w;
  uv_timer_stop(&sl->timer);
  uv_close((uv_handle_t *)&sl->timer, on_sleep_closed);
}

GW_FFI_EXPORT int gw_ffi_sleep(gw_task_t *t, uint32_t ts, double seconds, uint32_t *wait_id) {
  if (!gw_task_check(t, ts) || !gw__worker) return GW_FFI_BAD_CONTEXT;
  sleep_t *sl = gw_xcalloc(1, sizeof *sl);
  uv_timer_init(gw__worker->loop, &sl->timer);
  sl->timer.data = sl;
  sl->w.cancel = cancel_sleep;
  gw_waiter_add(t, &sl->w);
  /* Never shorter than asked: libuv counts from the loop's cached time,
   * which can be a whole iteration old and is whole milliseconds (truncated),
   * so refresh it and round up, plus the millisecond truncation can lose.
   * Past a year (math.huge too) the sleep is a year: gw_seconds_to_ms. */
  uint64_t ms = gw_seconds_to_ms(seconds);
  if (ms) ms++;
  uv_update_time(gw__worker->loop);
  uv_timer_start(&sl->timer, on_sleep_done, ms, 0);
  *wait_id = sl->w.id;
  return GW_FFI_AGAIN;
}

/* ---- Lua timers ---- */

/* Owned by itself: freed when its handle closes (after a one-shot fires, or
 * when its VM generation is retired). Listed in `ltimers` until then. */
typedef struct gw_ltimer_s {
  uv_timer_t handle;
  gw_vm_t *vm;                     /* referenced until the timer is freed */
  int id;                          /* key of the Lua function in runtime's timer table */
  int repeat;                      /* gw.timer.every */
  int closing;                     /* uv_close was called */
  struct gw_ltimer_s *prev, *next; /* the ltimers list */
} gw_ltimer_t;

static gw_ltimer_t *ltimers; /* every timer not yet freed */

static void on_ltimer_closed(uv_handle_t *h) {
  gw_ltimer_t *lt = h->data;
  if (lt->prev) lt->prev->next = lt->next;
  else ltimers = lt->next;
  if (lt->next) lt->next->prev = lt->prev;
  gw_vm_unref(lt->vm);
  free(lt);
}

static void ltimer_close(gw_ltimer_t *lt) {
  if (lt->closing) return;
  lt->closing = 1;
  uv_close((uv_handle_t *)&lt->handle, on_ltimer_closed);
}

void gw_ltimers_retire(gw_vm_t *vm) {
  for (gw_ltimer_t *lt = ltimers; lt; lt = lt->next)
    if (lt->vm == vm && lt->repeat) ltimer_close(lt);
}

void gw_ltimers_cancel(gw_vm_t *vm) {
  for (gw_ltimer_t *lt = ltimers; lt; lt = lt->next)
    if (lt->vm == vm) ltimer_close(lt);
}

static void timer_task_done(void *owner, gw_task_t *t) { gw_task_free(t); }

static const gw_task_owner_t timer_task_ops = {NULL, NULL, timer_task_done, NULL};

static void on_ltimer(uv_timer_t *h) {
  gw_ltimer_t *lt = h->data;
  gw_vm_t *vm = lt->vm;
  int id = lt->id;
  if (!lt->repeat) ltimer_close(lt);
  if (gw__worker && gw__worker->draining) return;
  gw_vm_ref(vm);
  gw_task_start_timer(vm, &timer_task_ops, NULL, id);
  gw_vm_unref(vm);
}

/* Starts timer `id` of the running VM. Returns GW_FFI_DECLINED outside a
 * worker (configuration check, master), GW_FFI_ERROR in a generation that a
 * reload retired. */
GW_FFI_EXPORT int gw_ffi_timer_start(int id, double after, double every) {
  gw_vm_t *vm = gw_vm_current();
  if (!gw__worker || !vm) return GW_FFI_DECLINED;
  if (vm->retired) return GW_FFI_ERROR;
  gw_ltimer_t *lt = gw_xcalloc(1, sizeof *lt);
  lt->next = ltimers;
  if (ltimers) ltimers->prev = lt;
  ltimers = lt;
  uv_timer_init(gw__worker->loop, &lt->handle);
  lt->handle.data = lt;
  lt->vm = vm;
  gw_vm_ref(vm);
  lt->id = id;
  lt->repeat = every > 0;
  uint64_t after_ms = gw_seconds_to_ms(after);
  uint64_t every_ms = gw_seconds_to_ms(every);
  if (lt->repeat && every_ms == 0) every_ms = 1;
  uv_timer_start(&lt->handle, on_ltimer, after_ms, every_ms);
  /* Timers never keep a draining worker alive. */
  uv_unref((uv_handle_t *)&lt->handle);
  return GW_FFI_OK;
}

GW_FFI_EXPORT int gw_ffi_worker_index(void) { return gw__worker ? gw__worker->index : -1; }
