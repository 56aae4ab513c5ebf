/*
 * watchdog.h: the CPU budget of scripts.
 *
 * A handler that never yields (an endless loop, a runaway computation)
 * would stall its whole worker. The worker marks when it enters Lua
 * (gw_watchdog_enter) and leaves it (gw_watchdog_leave); a timer signal
 * (SIGRTMIN, every 100 ms, handled on the worker's thread, stopped after a
 * second without a Lua run) checks. Past timeouts.script seconds in one run
 * it asks the running Lua to stop through a hook (lua_sethook is the one Lua
 * API call that is safe from a signal handler): the script gets the error
 * "script ran longer than timeouts.script" and its request a 500, and the
 * worker goes on. Hooks only fire in interpreted code, not inside a JIT-compiled trace,
 * so if Lua still runs after twice the budget the watchdog ends the worker
 * (its requests in flight are lost; the master starts a new one at once).
 */
#ifndef GW_WATCHDOG_H
#define GW_WATCHDOG_H

#include <lua.h>

/* Starts the timer (a worker, once); 0 or -errno. `budget` is timeouts.script in seconds. */
int gw_watchdog_start(double budget);
/* Changes the budget (reload). */
void gw_watchdog_set_budget(double budget);
/* Around every entry into Lua of the worker (task_resume): `L` is a state
 * of the VM that runs, for the hook. */
void gw_watchdog_enter(lua_State *L);
void gw_watchdog_leave(void);

#endif
