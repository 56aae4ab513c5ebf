/*
 * watchdog.c: the CPU budget of scripts (see watchdog.h).
 *
 * Shared between the worker's thread and the watchdog thread: `entered`
 * (ms of the current run's start, 0 outside Lua), `state` (the lua_State to
 * hook) and `run` (a counter, so that the watchdog never hooks a later run
 * for an earlier one's overrun). All are atomics; nothing else is shared.
 */
#include "watchdog.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

static uint64_t entered;   /* ms (CLOCK_MONOTONIC_COARSE) the current Lua run began, 0: none */
static uint64_t run;       /* number of the current run */
static lua_State *state;   /* the state to hook during the current run */
static uint64_t budget_ms; /* timeouts.script */
static int started;

/* The coarse clock (a few ms of resolution) is plenty for a budget of
 * seconds checked every 100 ms, and it is read without the TSC: the worker
 * reads it at every resume, that is at least once per request. */
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs in the worker's thread, inside the overrunning script. The hook
 * stays set (every line raises again) so that a pcall in the script cannot
 * swallow the error and loop on; gw_watchdog_leave removes it. */
static void on_hook(lua_State *L, lua_Debug *ar) {
  uint64_t since = __atomic_load_n(&entered, __ATOMIC_ACQUIRE);
  uint64_t budget = __atomic_load_n(&budget_ms, __ATOMIC_RELAXED);
  if (!since || now_ms() - since <= budget) {
    /* Set for a run that has ended since: this one is within its budget. */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  luaL_error(L, "script ran longer than timeouts.script (%.1f s) without yielding", (double)budget / 1000.0);
}

static void *watch(void *arg) {
  uint64_t hooked_run = 0;
  for (;;) {
    usleep(100 * 1000);
    uint64_t since = __atomic_load_n(&entered, __ATOMIC_ACQUIRE);
    if (!since) continue;
    uint64_t r = __atomic_load_n(&run, __ATOMIC_ACQUIRE);
    uint64_t over = now_ms() - since, budget = __atomic_load_n(&budget_ms, __ATOMIC_RELAXED);
    if (over > 2 * budget) {
      /* The hook did not stop it: a JIT-compiled loop. Only a new worker helps. */
      gw_log_error(
          "a script ran %.1f s without yielding (timeouts.script %.1f s) and could not be "
          "stopped; ending this worker",
          (double)over / 1000.0, (double)budget / 1000.0);
      _exit(3);
    }
    if (over > budget && hooked_run != r) {
      lua_State *L = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
      if (L && __atomic_load_n(&run, __ATOMIC_ACQUIRE) == r) {
        lua_sethook(L, on_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
        hooked_run = r;
      }
    }
  }
  return NULL;
}

int gw_watchdog_start(double budget) {
  gw_watchdog_set_budget(budget);
  if (started) return 0;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int rc = pthread_create(&t, &attr, watch, NULL);
  pthread_attr_destroy(&attr);
  if (rc == 0) started = 1;
  return -rc;
}

void gw_watchdog_set_budget(double budget) {
  uint64_t ms = budget > 0 ? gw_seconds_to_ms(budget) : 5000;
  __atomic_store_n(&budget_ms, ms, __ATOMIC_RELAXED);
}

void gw_watchdog_enter(lua_State *L) {
  if (!started) return;
  __atomic_store_n(&state, L, __ATOMIC_RELEASE);
  __atomic_add_fetch(&run, 1, __ATOMIC_ACQ_REL);
  __atomic_store_n(&entered, now_ms(), __ATOMIC_RELEASE);
}

void gw_watchdog_leave(void) {
  if (!started) return;
  __atomic_store_n(&entered, 0, __ATOMIC_RELEASE);
  /* A hook set just as the run ended must not fire in the next one. */
  lua_State *L = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
  if (L && lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
}
