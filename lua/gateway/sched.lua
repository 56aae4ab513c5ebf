-- gateway.sched: light threads on the C core's one yield protocol.
--
-- C resumes one root coroutine per request or timer firing (a "task"). Any
-- wait (gw.sleep, a body read, later an upstream call) is an FFI call that
-- returns AGAIN and a waiter id; the waiting coroutine then yields. If it is
-- the root, it yields WAIT straight to C, and C resumes it with
-- (id, results...). If it is a thread made by gw.spawn, it yields to
-- whichever Lua code resumed it, having noted in ctx.waiting which thread
-- waits for that id; the root, whenever it gets an id that is not its own,
-- hands the results to that thread (deliver). So only the root ever talks
-- to C, and threads run inside the root's resumes.
--
-- Invariants:
--  * `current` is the ctx of the task whose Lua code is running: set at
--    entry and after every yield to C returns.
--  * A thread that yields is always registered, either in ctx.waiting (a C
--    wait) or in another thread's joiners (a join), so nothing is lost.
--  * When the root finishes, threads still waiting are abandoned: C cancels
--    their waits and the garbage collector takes the coroutines.
local base = require "gateway.base"

local C = base.C
local AGAIN = base.AGAIN
local yield, resume, running, create, status =
  coroutine.yield, coroutine.resume, coroutine.running, coroutine.create, coroutine.status
local error, select, pairs, type, setmetatable, unpack = error, select, pairs, type, setmetatable, unpack
local traceback = debug.traceback

-- The first value the root yields to C: markers C made (lua_vm.c), which
-- nothing a script yields by itself can equal.
local marks = require "gateway.yield_marks"
local WAIT, DONE = marks.WAIT, marks.DONE

local _M = { WAIT = WAIT, DONE = DONE }

local current = nil           -- the ctx of the running task, made on first need
local cur_req = nil           -- the running task's request (nil in timers), until its ctx is made
local cur_task, cur_serial = nil, nil -- the running task, until its ctx is made
-- coroutine -> thread. Weak on both sides: a thread holds its coroutine
-- (th.co) and the coroutine's stack holds the thread, and LuaJIT's weak
-- keys are not ephemerons, so with weak keys alone no entry would ever be
-- collected (every gw.spawn leaked its coroutine). A live thread is held
-- strongly by whoever waits for it (ctx.waiting, joiners, gw.all).
local thread_of = setmetatable({}, { __mode = "kv" })

local function new_ctx(task_addr, task_serial, root)
  return {
    task = base.ffi.cast(base.task_ptr, task_addr),
    ts = task_serial,
    req = cur_req, -- made before the task's first wait, so still its own
    root = root or running(),
    waiting = nil,  -- waiter id -> thread, made on first use
  }
end
_M.new_ctx = new_ctx

-- Called by the entries at the start of each task, in its root coroutine.
-- Most requests never wait, so the ctx table is made only when asked for.
function _M.begin(task_addr, task_serial)
  current, cur_task, cur_serial = nil, task_addr, task_serial
end

function _M.finish() current, cur_task, cur_req = nil, nil, nil end

-- The request of the running task (nil in timers), for helpers that need
-- it without being given it (an upstream's hash_key for up:get).
function _M.set_request(req) cur_req = req end
function _M.request()
  -- After a wait, `current` is this task's ctx again, while cur_req may
  -- belong to whichever request ran meanwhile.
  local ctx = current
  if ctx then return ctx.req end
  return cur_req
end

function _M.set_current(ctx) current = ctx end

-- The running task's ctx (nil outside a task).
local function get_current()
  local ctx = current
  if ctx then return ctx end
  if cur_task == nil then return nil end
  -- The first ctx use is in the root coroutine: threads exist only after it.
  ctx = new_ctx(cur_task, cur_serial)
  current = ctx
  return ctx
end
_M.current = get_current

local Thread = {}
Thread.__index = Thread

local function finish(th, err)
  th.done = true
  thread_of[th.co] = nil
  if err ~= nil then th.err = err end
  local joiners = th.joiners
  if joiners then
    th.joiners = nil
    for i = 1, #joiners do
      local j = joiners[i]
      _M.step(j)
    end
  end
end

-- Threads run on coroutines kept for reuse: making a coroutine (and later
-- collecting it) costs more than most thread bodies. A coroutine whose
-- function returned yields FINISHED and waits for its next thread; one
-- whose function raised is dead and dropped.
local FINISHED = {}
local idle, nidle = {}, 0
local IDLE_MAX = 32

local function recycle(co)
  if nidle < IDLE_MAX then
    nidle = nidle + 1
    idle[nidle] = co
  end
end

-- Runs thread `th` until it waits or ends. The arguments go to the resume.
function _M.step(th, ...)
  local co = th.co
  local ok, err = resume(co, ...)
  if ok and err == FINISHED then
    -- thread_body stored the function's values in th.results.
    recycle(co)
    finish(th, nil)
  elseif status(co) == "dead" then
    finish(th, not ok and (err == nil and "error" or err) or nil)
  end
end

local function deliver(ctx, id, ...)
  local waiting = ctx.waiting
  local th = waiting and waiting[id]
  if th then
    waiting[id] = nil
    _M.step(th, ...)
  end
end

-- Waits for C waiter `id` in the running coroutine, and returns its results.
function _M.wait(ctx, id)
  local co = running()
  if co == ctx.root then
    while true do
      local got, a, b, c, d = yield(WAIT)
      current = ctx
      if got == id then return a, b, c, d end
      deliver(ctx, got, a, b, c, d)
    end
  end
  local th = thread_of[co]
  if not th then
    error("cannot wait inside a coroutine the script made itself; use gw.spawn", 3)
  end
  local waiting = ctx.waiting
  if not waiting then
    waiting = {}
    ctx.waiting = waiting
  end
  waiting[id] = th
  return yield()
end

-- gw.sleep(seconds)
function _M.sleep(seconds)
  local ctx = get_current()
  -- `not (seconds >= 0)` refuses NaN too: it would never wake. A huge
  -- value (math.huge) sleeps a year, the longest C waits (src/config.h).
  if type(seconds) ~= "number" or not (seconds >= 0) then
    error("gw.sleep: seconds must be a number >= 0", 2)
  end
  if not ctx then error("gw.sleep: only inside a request or a timer", 2) end
  local rc = C.gw_ffi_sleep(ctx.task, ctx.ts, seconds, base.out_wait)
  if rc ~= AGAIN then error("gw.sleep: the task has ended", 2) end
  _M.wait(ctx, base.out_wait[0])
end

-- Keeps a finished thread's values: the first one apart (most threads
-- return one value, or nil and an error), the rest in a table only if any.
local function keep(th, ...)
  local n = select("#", ...)
  th.n = n
  if n > 0 then th.results = { ... } end
end

-- The body of every thread coroutine: runs one thread, then (tail call,
-- so the stack stays flat) the next one it is resumed with.
local function thread_body(th, fn, ...)
  keep(th, fn(...))
  return thread_body(yield(FINISHED))
end

-- gw.spawn(fn, ...): starts fn in a light thread of the running task; it runs
-- at once until it first waits. Returns the thread.
function _M.spawn(fn, ...)
  if type(fn) ~= "function" then error("gw.spawn: a function is required", 2) end
  local ctx = get_current()
  if not ctx then error("gw.spawn: only inside a request or a timer", 2) end
  local th = setmetatable({ ctx = ctx, done = false }, Thread)
  local co
  if nidle > 0 then
    co = idle[nidle]
    idle[nidle] = nil
    nidle = nidle - 1
  else
    co = create(thread_body)
  end
  th.co = co
  thread_of[co] = th
  _M.step(th, th, fn, ...)
  return th
end

-- th:wait(): the thread's return values, or nil and its error.
function Thread:wait()
  local ctx = self.ctx
  if not self.done then
    local co = running()
    if co == ctx.root then
      while not self.done do
        local got, a, b, c, d = yield(WAIT)
        current = ctx
        deliver(ctx, got, a, b, c, d)
      end
    else
      local me = thread_of[co]
      if not me then error("cannot wait inside a coroutine the script made itself", 2) end
      if me == self then error("a thread cannot wait for itself", 2) end
      local j = self.joiners
      if not j then
        j = {}
        self.joiners = j
      end
      j[#j + 1] = me
      yield()
    end
  end
  if self.err ~= nil then return nil, self.err end
  if self.n == 0 then return end
  return unpack(self.results, 1, self.n)
end

-- gw.all{ name = fn, ... }: runs every function concurrently; returns
-- results and errors keyed like the input. A function that raises, or
-- returns nil and a message, puts that message under its key in errors.
function _M.all(fns)
  if type(fns) ~= "table" then error("gw.all: a table of functions is required", 2) end
  for k, fn in pairs(fns) do
    if type(fn) ~= "function" then error("gw.all: '" .. tostring(k) .. "' is not a function", 2) end
  end
  local threads = {}
  for k, fn in pairs(fns) do threads[k] = _M.spawn(fn) end
  local results, errors = {}, {}
  for k, th in pairs(threads) do
    local v, e = th:wait()
    if th.err ~= nil then
      errors[k] = th.err
    else
      results[k] = v
      if v == nil and e ~= nil then errors[k] = e end
    end
  end
  return results, errors
end

_M.traceback = traceback
return _M
