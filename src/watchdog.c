/*
 * watchdog.c: the CPU budget of scripts (see watchdog.h).
 *
 * The check runs in a signal handler, on the worker's own thread: a POSIX
 * timer sends SIGRTMIN to that thread every 100 ms. A thread would do the
 * same job, but a second thread makes the whole worker pay for being
 * multi-threaded on every request: the kernel takes and drops a reference
 * on the file at every system call on a socket (a lone thread's file table
 * skips that), and glibc's malloc and stdio take their locks. On the
 * keep-alive TLS benchmark that was 1.5% of the worker's user-space
 * instructions (callgrind); the kernel's part is below the noise of a
 * CPU-time measurement. libuv's thread pool (host names resolved, crypto
 * jobs) still makes a worker multi-threaded once it is used.
 *
 * State shared with the handler: `entered` (ms of the current run's start,
 * 0 outside Lua) and `state` (the lua_State to hook). The handler
 * interrupts the same thread, so plain stores are atomic enough; signal
 * fences keep the compiler from moving them across each other.
 */
#include "watchdog.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define TICK_MS 100
#define IDLE_TICKS 10 /* ticks without a Lua run after which the timer stops */

static volatile uint64_t entered;      /* ms (CLOCK_MONOTONIC_COARSE) the current Lua run began, 0: none */
static lua_State *volatile state;      /* the state to hook during the current run */
static volatile uint64_t budget_ms;    /* timeouts.script */
static volatile unsigned runs;         /* Lua runs begun, for the handler to see activity */
static volatile int armed;             /* the timer ticks; cleared by the handler, set by enter */
static unsigned runs_seen, idle_ticks; /* the handler's own */
static timer_t timer;
static int started;

/* Starts (TICK_MS) or stops (0) the ticks; 0 or -errno. timer_settime is
 * async-signal-safe: the handler stops them. */
static int set_ticks(long ms) {
  struct itimerspec every = {{0, ms * 1000000L}, {0, ms * 1000000L}};
  return timer_settime(timer, 0, &every, NULL) == 0 ? 0 : -errno;
}

/* The coarse clock (a few ms of resolution) is plenty for a budget of
 * seconds checked every 100 ms, and it is read without the TSC: the worker
 * reads it at every resume, that is at least once per request. It is a
 * vDSO call, safe in a signal handler. */
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs inside the overrunning script, set there by on_tick. The hook stays
 * set (every line raises again) so that a pcall in the script cannot
 * swallow the error and loop on; gw_watchdog_leave removes it. */
static void on_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  uint64_t since = entered;
  if (!since || now_ms() - since <= budget_ms) {
    /* Set for a run that has ended since: this one is within its budget. */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  luaL_error(L, "script ran longer than timeouts.script (%.1f s) without yielding",
             (double)budget_ms / 1000.0);
}

/* `ms` as seconds rounded to a tenth, "%llu.%llu" (see on_tick). */
#define TENTHS(ms) (unsigned long long)(((ms) + 50) / 1000), (unsigned long long)(((ms) + 50) % 1000 / 100)

/* The timer's signal handler. It interrupts the worker's own thread, so the
 * run it sees (entered, state) is the one still going. It only reads the
 * state above, calls lua_sethook (made to be called from a signal handler:
 * that is how the luajit command line stops a script on Ctrl-C) or ends
 * the worker. */
static void on_tick(int sig) {
  (void)sig;
  int saved_errno = errno;
  uint64_t since = entered;
  if (!since) {
    /* An idle worker is not woken ten times a second for nothing: after a
     * second without a Lua run the ticks stop, and the next run starts
     * them again (gw_watchdog_enter). */
    if (runs != runs_seen) {
      runs_seen = runs;
      idle_ticks = 0;
    } else if (++idle_ticks >= IDLE_TICKS && set_ticks(0) == 0) {
      idle_ticks = 0;
      armed = 0;
    }
  } else {
    idle_ticks = 0;
    uint64_t over = now_ms() - since, budget = budget_ms;
    if (over > 2 * budget) {
      /* The hook did not stop it: a JIT-compiled loop, or a long call into
       * C. Only a new worker helps. gw_log takes no lock the interrupted
       * code could hold (log.c formats the date itself, on the stack, and
       * writes with one write(2)); the figures are integers, so that the
       * formatting stays on snprintf's simplest paths. */
      gw_log_error(
          "a script ran %llu.%llu s without yielding (timeouts.script %llu.%llu s) and could not be "
          "stopped; ending this worker",
          TENTHS(over), TENTHS(budget));
      _exit(3);
    }
    /* Set again at each tick if it went away: a tick that lands while
     * LuaJIT rewrites its dispatch table (lj_dispatch_update, at each trace
     * start and stop) can see its hook overwritten when the rewrite resumes. */
    if (over > budget && state && lua_gethook(state) != on_hook)
      lua_sethook(state, on_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  }
  errno = saved_errno;
}

/* A real-time signal nothing else in the gateway uses; SA_RESTART so that a
 * tick landing in a system call other than epoll_wait (which libuv retries)
 * does not fail it with EINTR. */
static int start_timer(void) {
  int signo = SIGRTMIN;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_tick;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(signo, &sa, NULL) != 0) return -errno;
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_THREAD_ID; /* to the thread that runs Lua, not a libuv pool thread */
  ev.sigev_signo = signo;
  ev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
  if (timer_create(CLOCK_MONOTONIC, &ev, &timer) != 0) return -errno;
  int rc = set_ticks(TICK_MS);
  if (rc != 0) {
    timer_delete(timer);
    return rc;
  }
  armed = 1;
  return 0;
}

int gw_watchdog_start(double budget) {
  gw_watchdog_set_budget(budget);
  if (started) return 0;
  int rc = start_timer();
  if (rc == 0) started = 1;
  return rc;
}

void gw_watchdog_set_budget(double budget) { budget_ms = budget > 0 ? gw_seconds_to_ms(budget) : 5000; }

void gw_watchdog_enter(lua_State *L) {
  if (!started) return;
  state = L;
  runs = runs + 1;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  entered = now_ms(); /* a tick before this sees no run */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  /* After `entered`: from here on no tick stops the timer, and one that
   * stopped it before has cleared `armed`. One system call after each idle
   * second, none while requests keep coming. */
  if (!armed && set_ticks(TICK_MS) == 0) armed = 1;
}

void gw_watchdog_leave(void) {
  if (!started) return;
  entered = 0;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  /* A hook set by a tick just before the run ended must not fire in the
   * next one. */
  lua_State *L = state;
  if (L && lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
}
