/*
 * lua_vm.h: VM generations, tasks (coroutines run by C) and waiters.
 *
 * A gw_vm_t is one lua_State with the configuration loaded into it: its
 * routes, middleware and gw.config settings. Requests and timers take a
 * reference (gw_vm_ref) for as long as they run on it, so a reload can make a
 * new generation while the old one finishes its work; the state is closed
 * when the last reference goes.
 *
 * A gw_task_t is one root coroutine resumed by C: the handler of a request,
 * or one firing of a timer. This file holds the only call to lua_resume.
 * The yield protocol: an FFI function that must wait registers a gw_waiter_t
 * on the task and returns its id; the Lua wrapper yields; when the wait ends,
 * C pushes (id, results...) and resumes the root coroutine, whose Lua
 * scheduler (lua/gateway/runtime.lua) hands the results to the coroutine
 * that waited. The root yields WAIT (1) while anything waits and DONE (0)
 * when its work is over; a DONE coroutine goes back to a pool for reuse.
 */
#ifndef GW_LUA_VM_H
#define GW_LUA_VM_H

#include <lua.h>
#include <stdint.h>

#include "config.h"

typedef struct gw_task_s gw_task_t;
typedef struct gw_waiter_s gw_waiter_t;

typedef enum { GW_VM_CHECK = 0, GW_VM_MASTER, GW_VM_WORKER } gw_vm_mode_t;

#define GW_VM_METHOD_REFS 64 /* above every llhttp method number */

/* Refcounted; made by gw_vm_load, closed when its last reference goes.
 * Every live generation of the process is on one list (gw_vm_live_*). */
typedef struct gw_vm_s {
  lua_State *L;          /* the main state; NULL once closed */
  int refs;              /* the worker's "current" plus every task and timer */
  unsigned generation;   /* 1 for the first load, +1 per reload */
  uint8_t retired;       /* a newer generation replaced it: no new timers */
  int request_entry_ref; /* registry ref: runtime.request_entry */
  int timer_entry_ref;   /* registry ref: runtime.timer_entry */
  /* Registry refs of the method names requests came with, by llhttp method
   * number (0: not made yet): pushing a kept string costs an array read,
   * pushing a C string its hash and an intern lookup, on every request. */
  int method_ref[GW_VM_METHOD_REFS];
  struct gw_co_pool_s { /* coroutines parked after DONE, for reuse */
    lua_State *co[64];  /* a stack */
    int ref[64];        /* their registry refs, which keep them alive */
    int n;
  } request_pool, timer_pool;
  int start_ref;               /* registry ref: runtime.start */
  gw_config_t config;          /* what gw.config said, merged over the defaults */
  char *path;                  /* the configuration file */
  struct gw_vm_s *prev, *next; /* the list of live generations */
} gw_vm_t;

/* The Lua files a load read: the configuration first, then each file it
 * loaded with require (from the configuration's folder), loadfile or
 * dofile, as the paths Lua used. Owned by the caller (gw_vm_files_free). */
typedef struct gw_vm_files_s {
  char **paths; /* n gw_xmalloc'd strings */
  size_t n;
} gw_vm_files_t;
void gw_vm_files_free(gw_vm_files_t *f);

/* Loads `path` into a fresh state. On failure returns NULL and writes the
 * error (with file:line) into err. Nothing runs yet in a worker: the
 * configuration's timers start with gw_vm_start, once the caller has
 * decided to use this generation. If `files` is not NULL it receives the
 * files the load read, also when it failed (a broken module is watched so
 * that fixing it reloads). The configuration may run `budget` seconds of
 * CPU (timeouts.script; <= 0: its default): past that the load fails with
 * "configuration load exceeded timeouts.script". */
gw_vm_t *gw_vm_load(const char *path, gw_vm_mode_t mode, unsigned generation, double budget,
                    gw_vm_files_t *files, char *err, size_t errlen);
/* Starts the timers the configuration declared (a worker, once). Returns 0,
 * or GW_ELUA with the error in err. */
int gw_vm_start(gw_vm_t *vm, char *err, size_t errlen);
/* Marks `vm` as replaced: it keeps serving what it has begun, but starts no
 * new timers. Its repeating timers are stopped by their owner (ffi_time.h). */
void gw_vm_retire(gw_vm_t *vm);
void gw_vm_ref(gw_vm_t *vm);
void gw_vm_unref(gw_vm_t *vm);
/* Live generations in this process (the current one plus retired ones still
 * finishing work), and the bytes their Lua heaps use. */
unsigned gw_vm_live_count(void);
size_t gw_vm_live_memory(void);
/* The VM whose Lua code is running now (set around every call into Lua). */
gw_vm_t *gw_vm_current(void);

/* How a task reports to whoever started it. */
typedef struct gw_task_owner_s {
  void (*enter)(void *owner);              /* before each resume: take a ref */
  void (*leave)(void *owner);              /* after each resume */
  void (*done)(void *owner, gw_task_t *t); /* the root finished or died */
  /* The values the root yielded with DONE (stack slots 2..top of co), read
   * before `done`; may be NULL. Request tasks answer through it when they
   * can (see runtime.lua request_entry). */
  void (*result)(void *owner, lua_State *co);
} gw_task_owner_t;

/* Owned by whoever started it; lives from gw_task_start until `done` has
 * been called and gw_task_free; memory comes from a never-freed list so
 * that a stale (pointer, serial) handle from Lua is detected. */
struct gw_task_s {
  uint32_t serial;      /* changes on free; Lua handles compare it */
  gw_vm_t *vm;          /* referenced while the task lives */
  lua_State *co;        /* the root coroutine */
  int co_ref;           /* registry ref anchoring co */
  int entry_ref;        /* the entry function co runs: where it is parked after DONE */
  gw_waiter_t *waiters; /* live waits, cancelled if the task ends */
  uint32_t next_waiter_id;
  const gw_task_owner_t *owner_ops;
  void *owner;      /* the gw_req_t, or the timer */
  uint8_t running;  /* inside lua_resume now */
  uint8_t finished; /* the root yielded DONE or died */
  uint8_t failed;   /* the root died with an error */
  struct gw_task_s *next_free;
};

/* A pending wait of a task. Embedded in whatever waits (a timer, a request's
 * body state); `cancel` must stop it and release that container. */
struct gw_waiter_s {
  gw_task_t *task; /* the task that waits */
  uint32_t id;     /* >0, handed to Lua */
  void (*cancel)(gw_waiter_t *w);
  gw_waiter_t *prev, *next; /* task->waiters list */
};

/* Starts `vm`'s request entry in a new task with the given handles.
 * `method_id` is the method's llhttp number, `method` its name.
 * Returns the task (possibly already finished: `done` was called). */
gw_task_t *gw_task_start_request(gw_vm_t *vm, const gw_task_owner_t *ops, void *owner, void *req,
                                 uint32_t req_serial, int method_id, const char *method, const char *path,
                                 size_t path_len);
/* Starts `vm`'s timer entry for timer id `timer_id`. */
gw_task_t *gw_task_start_timer(gw_vm_t *vm, const gw_task_owner_t *ops, void *owner, int timer_id);
/* Ends a task early (its request died): cancels its waits and drops the
 * coroutine without calling `done`. */
void gw_task_abort(gw_task_t *t);
/* Releases a finished task. */
void gw_task_free(gw_task_t *t);
static inline int gw_task_check(const gw_task_t *t, uint32_t serial) {
  return t != NULL && t->serial == serial && !t->finished;
}

/* Registers `w` on `t` and gives it an id. */
void gw_waiter_add(gw_task_t *t, gw_waiter_t *w);
/* Pushes results for a wait that ended and resumes the task: removes `w`
 * from its task, then calls push(co, arg) which pushes the results and
 * returns how many. */
typedef int (*gw_push_cb)(lua_State *co, void *arg);
void gw_waiter_wake(gw_waiter_t *w, gw_push_cb push, void *arg);

#endif
