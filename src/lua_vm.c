/*
 * lua_vm.c: loading a configuration into a VM generation, and running tasks.
 *
 * The embedded lua/ modules are registered in package.preload, so
 * `require "gateway"` always finds the built-in module; the configuration's
 * folder goes first on package.path so a user's `require "mylib"` finds
 * mylib.lua beside the configuration. The configuration itself is run by
 * lua/gateway/runtime.lua (load_config), which returns the merged gw.config
 * table that gw_config_from_lua turns into a gw_config_t.
 *
 * gw_task_resume below is the only caller of lua_resume in the program.
 */
#include "lua_vm.h"

#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "errors.h"
#include "ffi.h"
#include "log.h"
#include "mem.h"
#include "watchdog.h"

/* What a task's root coroutine yields first to C: DONE (the request or
 * timer firing is over) or WAIT (a waiter is registered). Each is the
 * address of a static, handed to Lua as a lightuserdata by the module
 * "gateway.yield_marks": no value a script yields by itself
 * (coroutine.yield() with nothing, 0, 1, a string) can pass for one, so a
 * stray yield is an error, never a finished request whose suspended
 * coroutine the next request would resume. */
static const char yield_done_mark, yield_wait_mark;

static int open_yield_marks(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushlightuserdata(L, (void *)&yield_done_mark);
  lua_setfield(L, -2, "DONE");
  lua_pushlightuserdata(L, (void *)&yield_wait_mark);
  lua_setfield(L, -2, "WAIT");
  return 1;
}

struct gw_lua_module_s {
  const char *name, *chunk, *code;
  size_t len;
};
extern const struct gw_lua_module_s gw__lua_modules[];
int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

static gw_vm_t *current_vm;
static gw_vm_t *live_vms;
static gw_task_t *free_tasks;
static uint32_t task_serial = 1;

gw_vm_t *gw_vm_current(void) { return current_vm; }

/* package.preload loader for an embedded module: upvalue 1 is its index. */
static int load_embedded(lua_State *L) {
  const struct gw_lua_module_s *m = &gw__lua_modules[lua_tointeger(L, lua_upvalueindex(1))];
  if (luaL_loadbuffer(L, m->code, m->len, m->chunk) != 0) return lua_error(L);
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

static void register_modules(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (int i = 0; gw__lua_modules[i].name; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, gw__lua_modules[i].name);
  }
  lua_pushcfunction(L, open_yield_marks);
  lua_setfield(L, -2, "gateway.yield_marks");
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pushcfunction(L, luaopen_cjson_safe);
  lua_setfield(L, -2, "cjson.safe");
  lua_pop(L, 2);
}

/* Puts the configuration's folder first on package.path. */
static void set_package_path(lua_State *L, const char *config_path) {
  const char *slash = strrchr(config_path, '/');
  char dir[4096];
  if (slash) {
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - config_path), config_path);
  } else {
    snprintf(dir, sizeof dir, ".");
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

/* Reads config[key] as a number, or `fallback` when absent. */
static double num_field(lua_State *L, int idx, const char *key, double fallback) {
  lua_getfield(L, idx, key);
  double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : fallback;
  lua_pop(L, 1);
  return v;
}

static char *str_field(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  char *s = lua_type(L, -1) == LUA_TSTRING ? gw_xstrndup(lua_tostring(L, -1), lua_objlen(L, -1)) : NULL;
  lua_pop(L, 1);
  return s;
}

/* The Lua side validated and merged the table; this only copies it. */
static int config_from_lua(lua_State *L, int idx, gw_config_t *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  c->workers = (int)num_field(L, idx, "workers", 0);
  if (c->workers <= 0) c->workers = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (c->workers <= 0) c->workers = 1;
  c->admin = str_field(L, idx, "admin");
  c->access_log = str_field(L, idx, "access_log");
  c->error_log = str_field(L, idx, "error_log");
  lua_getfield(L, idx, "limits");
  c->limits.header_bytes = (size_t)num_field(L, -1, "header_bytes", 16384);
  c->limits.headers = (size_t)num_field(L, -1, "headers", 100);
  c->limits.body_bytes = (size_t)num_field(L, -1, "body_bytes", 8 * 1024 * 1024);
  lua_pop(L, 1);
  lua_getfield(L, idx, "timeouts");
  c->timeouts.header = num_field(L, -1, "header", 10);
  c->timeouts.body = num_field(L, -1, "body", 30);
  c->timeouts.idle = num_field(L, -1, "idle", 60);
  c->timeouts.drain = num_field(L, -1, "drain", 30);
  c->timeouts.script = num_field(L, -1, "script", GW_SCRIPT_BUDGET_DEFAULT);
  lua_pop(L, 1);
  lua_getfield(L, idx, "tls");
  c->ticket_rotate = lua_istable(L, -1) ? num_field(L, -1, "ticket_rotate", 3600) : 3600;
  c->session_tickets = 1;
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "session_tickets");
    c->session_tickets = !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "listen");
  size_t n = lua_objlen(L, -1);
  c->listen = gw_xcalloc(n ? n : 1, sizeof *c->listen);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    /* A TLS listener is { addr =, certs = { { cert =, key = }, ... },
     * client_ca =, verify_client = "on" | "optional" } with paths already
     * resolved and checked by gw.config; a plain one a string. */
    int is_tls = lua_istable(L, -1);
    if (is_tls) lua_getfield(L, -1, "addr");
    const char *addr = lua_tostring(L, -1);
    gw_listen_t *l = &c->listen[c->nlisten];
    if (!addr || gw_listen_parse(addr, l) != 0) {
      snprintf(err, errlen, "%s: bad listen address '%s'", "gw.config", addr ? addr : "?");
      lua_pop(L, is_tls ? 3 : 2);
      return GW_ECONFIG;
    }
    c->nlisten++;
    if (is_tls) {
      lua_pop(L, 1);
      lua_getfield(L, -1, "certs");
      size_t nc = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
      l->certs = gw_xcalloc(nc ? nc : 1, sizeof *l->certs);
      for (size_t k = 0; k < nc; k++) {
        lua_rawgeti(L, -1, (int)k + 1);
        l->certs[k].cert = str_field(L, -1, "cert");
        l->certs[k].key = str_field(L, -1, "key");
        lua_pop(L, 1);
        if (l->certs[k].cert && l->certs[k].key) l->ncerts++;
      }
      lua_pop(L, 1);
      l->client_ca = str_field(L, -1, "client_ca");
      char *verify = str_field(L, -1, "verify_client");
      if (l->client_ca && verify)
        l->verify_client = strcmp(verify, "optional") == 0 ? GW_TLS_VERIFY_OPTIONAL : GW_TLS_VERIFY_ON;
      free(verify);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "dicts");
  n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
  c->dicts = gw_xcalloc(n ? n : 1, sizeof *c->dicts);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    c->dicts[i].name = str_field(L, -1, "name");
    c->dicts[i].size = (size_t)num_field(L, -1, "size", 0);
    c->ndicts++;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

static int ref_field(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static const char *mode_names[] = {"check", "master", "worker"};

void gw_vm_files_free(gw_vm_files_t *f) {
  for (size_t i = 0; i < f->n; i++) free(f->paths[i]);
  free(f->paths);
  f->paths = NULL;
  f->n = 0;
}

/* Copies runtime.files (the table at `runtime`) into `out`. */
static void collect_files(lua_State *L, int runtime, gw_vm_files_t *out) {
  lua_getfield(L, runtime, "files");
  size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
  out->paths = gw_xcalloc(n ? n : 1, sizeof *out->paths);
  out->n = 0;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    size_t len;
    const char *p = lua_tolstring(L, -1, &len);
    if (p) out->paths[out->n++] = gw_xstrndup(p, len);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ---- the CPU budget of a configuration load ----
 *
 * A configuration that loops while loading would hang its worker for good
 * (and, at a reload, the generation still serving with it). Tasks have the
 * watchdog (watchdog.h), but a load runs outside any task, and its answer
 * to a loop the hook cannot reach (JIT-compiled code) is to end the worker,
 * which at a reload would kill the good generation too; the master and
 * --check load before any worker (and must not start a thread before they
 * fork). So a load keeps its own clock, in the loading thread: a count hook
 * checks the deadline, with the JIT off so that the hook reaches every loop
 * (a configuration runs once: interpreting it costs nothing that counts).
 * The hook stays set, so a pcall in the configuration cannot swallow the
 * error and go on. jit.on() and jit.off() in the configuration are held
 * until the load ends (runtime.lua). Not covered: a load stuck inside a C
 * function (a blocking read). */
static struct {
  int active;        /* a load is running (gw_ffi_load_budget applies) */
  uint64_t started;  /* uv_hrtime() when it began */
  uint64_t deadline; /* uv_hrtime() past which the load fails */
  double budget_s;   /* for the message */
  int overran;       /* the hook fired: the load failed for its budget */
  char where[256];   /* "FILE:LINE: " the load was running when it first fired */
} load_clock;

static void on_load_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (uv_hrtime() < load_clock.deadline) return;
  if (!load_clock.overran) {
    /* The error raised here may be caught and replaced (by a pcall in
     * the configuration, by a traceback handler the hook interrupts too),
     * so gw_vm_load writes the load's error from load_clock instead. */
    luaL_where(L, 0);
    snprintf(load_clock.where, sizeof load_clock.where, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    load_clock.overran = 1;
    /* From now on at every instruction, so that the error reaches the
     * frames outside a pcall too, not only the loop that ran most. */
    lua_sethook(L, on_load_hook, LUA_MASKCOUNT, 1);
  }
  luaL_error(L, "configuration load exceeded timeouts.script (%.1f s)", load_clock.budget_s);
}

/* gw.config's timeouts.script, set while a configuration loads, is that
 * load's budget from then on, counted from the load's start: the file's
 * own value, not the running configuration's (or at start-up the default),
 * which is only the budget until the file says otherwise. */
GW_FFI_EXPORT void gw_ffi_load_budget(double seconds) {
  if (!load_clock.active || !(seconds > 0)) return;
  load_clock.budget_s = seconds;
  load_clock.deadline = load_clock.started + gw_seconds_to_ms(seconds) * 1000000u;
}

/* Calls the function on top of L with its 2 arguments (load_config) under
 * the budget; returns lua_pcall's result. The engine comes back on after,
 * unless the configuration asked for it off (runtime.lua notes jit.on()
 * and jit.off() during the load, at index `runtime`). */
static int load_budgeted(lua_State *L, double budget, int runtime) {
  if (!(budget > 0)) budget = GW_SCRIPT_BUDGET_DEFAULT;
  load_clock.overran = 0;
  load_clock.started = uv_hrtime();
  load_clock.active = 1;
  gw_ffi_load_budget(budget);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_sethook(L, on_load_hook, LUA_MASKCOUNT, 10000);
  int rc = lua_pcall(L, 2, 1, 0);
  lua_sethook(L, NULL, 0, 0);
  load_clock.active = 0;
  lua_getfield(L, runtime, "jit_engine");
  int keep_off = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!keep_off) luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
  return rc;
}

gw_vm_t *gw_vm_load(const char *path, gw_vm_mode_t mode, unsigned generation, double budget,
                    gw_vm_files_t *files, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "cannot create a Lua state (out of memory)");
    return NULL;
  }
  gw_vm_t *vm = gw_xcalloc(1, sizeof *vm);
  vm->L = L;
  vm->refs = 1;
  vm->generation = generation;
  vm->path = gw_xstrndup(path, strlen(path));
  luaL_openlibs(L);
  register_modules(L);
  set_package_path(L, path);

  gw_vm_t *saved = current_vm;
  current_vm = vm;
  lua_getglobal(L, "require");
  lua_pushstring(L, "gateway.runtime");
  int rc = lua_pcall(L, 1, 1, 0);
  if (rc == 0) {
    int runtime = lua_gettop(L);
    lua_getfield(L, runtime, "load_config");
    lua_pushstring(L, path);
    lua_pushstring(L, mode_names[mode]);
    rc = load_budgeted(L, budget, runtime);
    if (load_clock.overran) rc = -1;
    if (load_clock.overran)
      snprintf(err, errlen, "%sconfiguration load exceeded timeouts.script (%.1f s)", load_clock.where,
               load_clock.budget_s);
    else if (rc == 0) rc = config_from_lua(L, lua_gettop(L), &vm->config, err, errlen) ? -1 : 0;
    else snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "unknown error");
    if (files) collect_files(L, runtime, files);
    if (rc == 0) {
      lua_pop(L, 1);
      vm->request_entry_ref = ref_field(L, runtime, "request_entry");
      vm->timer_entry_ref = ref_field(L, runtime, "timer_entry");
      vm->start_ref = ref_field(L, runtime, "start");
    }
  } else {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    if (files) {
      files->paths = gw_xcalloc(1, sizeof *files->paths);
      files->paths[0] = gw_xstrndup(path, strlen(path));
      files->n = 1;
    }
  }
  current_vm = saved;
  if (rc != 0) {
    lua_close(L);
    vm->L = NULL;
    gw_config_free(&vm->config);
    free(vm->path);
    free(vm);
    return NULL;
  }
  lua_settop(L, 0);
  vm->next = live_vms;
  if (live_vms) live_vms->prev = vm;
  live_vms = vm;
  return vm;
}

int gw_vm_start(gw_vm_t *vm, char *err, size_t errlen) {
  lua_State *L = vm->L;
  gw_vm_t *saved = current_vm;
  current_vm = vm;
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->start_ref);
  int rc = lua_pcall(L, 0, 0, 0);
  current_vm = saved;
  if (rc != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "unknown error");
    lua_settop(L, 0);
    return GW_ELUA;
  }
  return 0;
}

void gw_vm_retire(gw_vm_t *vm) { vm->retired = 1; }

unsigned gw_vm_live_count(void) {
  unsigned n = 0;
  for (gw_vm_t *vm = live_vms; vm; vm = vm->next) n++;
  return n;
}

size_t gw_vm_live_memory(void) {
  size_t bytes = 0;
  for (gw_vm_t *vm = live_vms; vm; vm = vm->next)
    bytes += (size_t)lua_gc(vm->L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(vm->L, LUA_GCCOUNTB, 0);
  return bytes;
}

void gw_vm_ref(gw_vm_t *vm) { vm->refs++; }

void gw_vm_unref(gw_vm_t *vm) {
  if (--vm->refs > 0) return;
  if (vm->prev) vm->prev->next = vm->next;
  else if (live_vms == vm) live_vms = vm->next;
  if (vm->next) vm->next->prev = vm->prev;
  if (vm->L) lua_close(vm->L);
  gw_config_free(&vm->config);
  free(vm->path);
  free(vm);
}

/* ---- tasks ---- */

static struct gw_co_pool_s *pool_of(gw_vm_t *vm, int entry_ref) {
  return entry_ref == vm->request_entry_ref ? &vm->request_pool : &vm->timer_pool;
}

/* Takes an idle coroutine (parked after DONE) or makes one running `entry`. */
static lua_State *checkout_coroutine(gw_vm_t *vm, int entry_ref, int *ref) {
  struct gw_co_pool_s *pool = pool_of(vm, entry_ref);
  if (pool->n > 0) {
    pool->n--;
    *ref = pool->ref[pool->n];
    return pool->co[pool->n];
  }
  lua_State *L = vm->L;
  lua_State *co = lua_newthread(L);
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, LUA_REGISTRYINDEX, entry_ref);
  lua_xmove(L, co, 1);
  return co;
}

/* Parks a coroutine that yielded DONE for the next task of the same entry. */
static void park_coroutine(gw_vm_t *vm, int entry_ref, lua_State *co, int ref) {
  struct gw_co_pool_s *pool = pool_of(vm, entry_ref);
  if (pool->n < (int)(sizeof pool->co / sizeof pool->co[0])) {
    pool->co[pool->n] = co;
    pool->ref[pool->n] = ref;
    pool->n++;
    return;
  }
  luaL_unref(vm->L, LUA_REGISTRYINDEX, ref);
}

static gw_task_t *task_new(gw_vm_t *vm, const gw_task_owner_t *ops, void *owner) {
  gw_task_t *t = free_tasks;
  if (t) free_tasks = t->next_free;
  else t = gw_xmalloc(sizeof *t);
  memset(t, 0, sizeof *t);
  t->serial = ++task_serial;
  t->vm = vm;
  gw_vm_ref(vm);
  t->owner_ops = ops;
  t->owner = owner;
  return t;
}

static void cancel_waiters(gw_task_t *t) {
  while (t->waiters) {
    gw_waiter_t *w = t->waiters;
    t->waiters = w->next;
    w->task = NULL;
    w->cancel(w);
  }
}

static void log_coroutine_error(gw_task_t *t) {
  lua_State *co = t->co;
  const char *msg = lua_tostring(co, -1);
  luaL_traceback(co, co, msg ? msg : "(error object is not a string)", 0);
  gw_log_error("lua: %s", lua_tostring(co, -1));
}

/* A yield that is neither DONE nor a WAIT with a waiter registered on the
 * task: nothing in C would ever resume it rightly (every FFI call that
 * returns AGAIN registers its waiter first, and sched.lua yields WAIT only
 * while one is pending). It comes from a script calling coroutine.yield
 * itself at the top of its handler or timer (or a gw.spawn thread yielding
 * on its own, which leaves the root waiting for nothing). Taken as DONE,
 * the suspended coroutine would go back to the pool and the next request
 * would resume it inside this handler; left waiting, it would pin the
 * request and its generation forever. So the task fails as a script
 * error: returns LUA_ERRRUN with the message on top of the (suspended,
 * never resumed again) coroutine. */
static int stray_yield(gw_task_t *t) {
  lua_settop(t->co, 0);
  lua_pushliteral(t->co,
                  "the handler yielded outside the gateway's waits, so nothing would "
                  "ever resume it (coroutine.yield called by the script?)");
  return LUA_ERRRUN;
}

/* Resumes t->co with `nargs` values already pushed, and handles the outcome. */
static void task_resume(gw_task_t *t, int nargs) {
  /* `done` may free t (and a new task may reuse it), so what `leave`
   * needs is taken now. */
  const gw_task_owner_t *ops = t->owner_ops;
  void *owner = t->owner;
  gw_vm_t *saved = current_vm;
  current_vm = t->vm;
  if (ops->enter) ops->enter(owner);
  t->running = 1;
  gw_watchdog_enter(t->co);
  int rc = lua_resume(t->co, nargs);
  gw_watchdog_leave();
  t->running = 0;
  current_vm = saved;
  int wait = 0;
  if (rc == LUA_YIELD) {
    const void *mark = lua_touserdata(t->co, 1);
    wait = mark == &yield_wait_mark;
    if (wait ? !t->waiters : mark != &yield_done_mark) rc = stray_yield(t);
  }
  if (wait && rc == LUA_YIELD) {
    lua_settop(t->co, 0);
  } else {
    t->finished = 1;
    if (rc == LUA_YIELD) {
      if (ops->result) ops->result(owner, t->co);
      lua_settop(t->co, 0);
      park_coroutine(t->vm, t->entry_ref, t->co, t->co_ref);
    } else {
      if (rc != 0) {
        t->failed = 1;
        log_coroutine_error(t);
      }
      luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
    }
    t->co = NULL;
    t->co_ref = LUA_NOREF;
    cancel_waiters(t);
    ops->done(owner, t);
  }
  if (ops->leave) ops->leave(owner);
}

/* Pushes the method name onto `co`, from the registry after its first use. */
static void push_method(gw_vm_t *vm, lua_State *co, int method_id, const char *method) {
  if (method_id < 0 || method_id >= GW_VM_METHOD_REFS) {
    lua_pushstring(co, method);
    return;
  }
  if (vm->method_ref[method_id] == 0) {
    lua_pushstring(vm->L, method);
    vm->method_ref[method_id] = luaL_ref(vm->L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(co, LUA_REGISTRYINDEX, vm->method_ref[method_id]);
}

gw_task_t *gw_task_start_request(gw_vm_t *vm, const gw_task_owner_t *ops, void *owner, void *req,
                                 uint32_t req_serial, int method_id, const char *method, const char *path,
                                 size_t path_len) {
  gw_task_t *t = task_new(vm, ops, owner);
  t->entry_ref = vm->request_entry_ref;
  t->co = checkout_coroutine(vm, t->entry_ref, &t->co_ref);
  /* Handles travel as numbers: LuaJIT compiles a cast from a number to a
   * pointer, but not from a lightuserdata. Addresses fit a double exactly. */
  lua_pushnumber(t->co, (lua_Number)(uintptr_t)t);
  lua_pushnumber(t->co, t->serial);
  lua_pushnumber(t->co, (lua_Number)(uintptr_t)req);
  lua_pushnumber(t->co, req_serial);
  /* What routing needs is pushed here: cheaper than FFI calls from the
   * (interpreted) entry. */
  push_method(vm, t->co, method_id, method);
  lua_pushlstring(t->co, path, path_len);
  task_resume(t, 6);
  return t;
}

gw_task_t *gw_task_start_timer(gw_vm_t *vm, const gw_task_owner_t *ops, void *owner, int timer_id) {
  gw_task_t *t = task_new(vm, ops, owner);
  t->entry_ref = vm->timer_entry_ref;
  t->co = checkout_coroutine(vm, t->entry_ref, &t->co_ref);
  lua_pushnumber(t->co, (lua_Number)(uintptr_t)t);
  lua_pushnumber(t->co, t->serial);
  lua_pushinteger(t->co, timer_id);
  task_resume(t, 3);
  return t;
}

void gw_task_abort(gw_task_t *t) {
  if (t->finished) return;
  /* A running task cannot be torn down under its own feet; callers never
   * abort one (connections defer their close while a task runs). */
  if (t->running) return;
  t->finished = 1;
  cancel_waiters(t);
  if (t->co_ref != LUA_NOREF) luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co = NULL;
  t->co_ref = LUA_NOREF;
}

void gw_task_free(gw_task_t *t) {
  if (!t->finished) gw_task_abort(t);
  gw_vm_unref(t->vm);
  t->vm = NULL;
  t->serial = ++task_serial;
  t->next_free = free_tasks;
  free_tasks = t;
}

void gw_waiter_add(gw_task_t *t, gw_waiter_t *w) {
  w->task = t;
  w->id = ++t->next_waiter_id;
  w->prev = NULL;
  w->next = t->waiters;
  if (t->waiters) t->waiters->prev = w;
  t->waiters = w;
}

static void waiter_unlink(gw_waiter_t *w) {
  gw_task_t *t = w->task;
  if (w->prev) w->prev->next = w->next;
  else t->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->task = NULL;
}

void gw_waiter_wake(gw_waiter_t *w, gw_push_cb push, void *arg) {
  gw_task_t *t = w->task;
  if (!t || t->finished) return;
  if (t->running) {
    /* The task is inside one of its own FFI calls, whose caller should have
     * registered the wait only after its synchronous part (see
     * gw_ffi_upstream_proxy). Resuming a running coroutine fails and would
     * tear the task down under its live frame: the wake is dropped, loudly,
     * and the waiter is cancelled with the task. */
    gw_log_error("internal error: waiter %u woke its own running task; wake dropped", w->id);
    return;
  }
  uint32_t id = w->id;
  waiter_unlink(w);
  lua_pushnumber(t->co, id);
  int n = push ? push(t->co, arg) : 0;
  task_resume(t, 1 + n);
}
