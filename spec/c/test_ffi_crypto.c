/*
 * test_ffi_crypto.c: src/ffi_crypto.c alone, with the task and waiter
 * functions of lua_vm.c replaced by recording stubs, so that the paths an
 * end-to-end test cannot reach on purpose are covered: a check whose task
 * ends while the job is queued or already running on the thread pool (the
 * job must be freed without waking anyone), and the synchronous path.
 *
 * spec-ldflags: -lcrypt
 */
#include "ffi_crypto.c"
#include "mem.c"

#include <lauxlib.h>
#include <stdio.h>

gw_worker_t *gw__worker;

static gw_waiter_t *last_waiter;
static int woke, woke_value;

void gw_waiter_add(gw_task_t *t, gw_waiter_t *w) {
  w->task = t;
  w->id = 42;
  last_waiter = w;
}

void gw_waiter_wake(gw_waiter_t *w, gw_push_cb push, void *arg) {
  lua_State *L = luaL_newstate();
  int n = push(L, arg);
  woke++;
  woke_value = n == 1 && lua_toboolean(L, -1);
  lua_close(L);
  w->task = NULL;
}

static int passed, failed;
#define CHECK(cond, what)                                     \
  do {                                                        \
    if (cond) {                                               \
      passed++;                                               \
    } else {                                                  \
      failed++;                                               \
      printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, (what)); \
    }                                                         \
  } while (0)

/* A hash of `pw` by method `prefix` ("$6$", "$2b$"...) at cost `count`. */
static const char *make_hash(const char *prefix, unsigned long count, const char *pw) {
  static char out[CRYPT_OUTPUT_SIZE];
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  struct crypt_data *d = calloc(1, sizeof *d);
  if (!crypt_gensalt_rn(prefix, count, NULL, 0, setting, sizeof setting)) abort();
  snprintf(out, sizeof out, "%s", crypt_rn(pw, setting, d, (int)sizeof *d));
  free(d);
  return out;
}

static void test_sync(void) {
  const char *h = make_hash("$6$", 1000, "secret");
  uint32_t id = 0;
  CHECK(gw_ffi_crypt_check(NULL, 0, "secret", 6, h, strlen(h), &id) == GW_FFI_OK, "sync right password");
  CHECK(gw_ffi_crypt_check(NULL, 0, "secreT", 6, h, strlen(h), &id) == GW_FFI_DECLINED, "sync wrong password");
  CHECK(gw_ffi_crypt_check(NULL, 0, "secret\0x", 8, h, strlen(h), &id) == GW_FFI_DECLINED, "NUL in password");
  CHECK(gw_ffi_crypt_check(NULL, 0, "secret", 6, "", 0, &id) == GW_FFI_DECLINED, "empty hash");
  CHECK(gw_ffi_crypt_check(NULL, 0, "secret", 6, "*0", 2, &id) == GW_FFI_DECLINED, "failure token as hash");
  CHECK(gw_ffi_crypt_checksalt(h) == CRYPT_SALT_OK, "checksalt $6$");
  CHECK(gw_ffi_crypt_checksalt("$1$abcdefgh$") == CRYPT_SALT_METHOD_LEGACY, "checksalt $1$");
}

static void test_async(gw_task_t *t) {
  const char *h = make_hash("$2b$", 5, "pw");
  uint32_t id = 0;
  woke = 0;
  CHECK(gw_ffi_crypt_check(t, t->serial, "pw", 2, h, strlen(h), &id) == GW_FFI_AGAIN, "queued");
  CHECK(id == 42, "wait id");
  uv_run(gw__worker->loop, UV_RUN_DEFAULT);
  CHECK(woke == 1 && woke_value == 1, "woken once with true");
  woke = 0;
  gw_ffi_crypt_check(t, t->serial, "px", 2, h, strlen(h), &id);
  uv_run(gw__worker->loop, UV_RUN_DEFAULT);
  CHECK(woke == 1 && woke_value == 0, "woken once with false");
  CHECK(gw_ffi_crypt_check(t, t->serial + 1, "pw", 2, h, strlen(h), &id) == GW_FFI_BAD_CONTEXT,
        "stale task");
}

/* The task ends (lua_vm.c cancel_waiters: task cleared, then cancel) while
 * jobs wait in the queue or run: nobody is woken, every job is freed. */
static void test_cancel(gw_task_t *t) {
  const char *h = make_hash("$2b$", 9, "pw"); /* tens of ms per check */
  uint32_t id;
  gw_waiter_t *ws[8];
  woke = 0;
  for (int i = 0; i < 8; i++) { /* more than the pool's threads: some queued */
    CHECK(gw_ffi_crypt_check(t, t->serial, "pw", 2, h, strlen(h), &id) == GW_FFI_AGAIN, "queued");
    ws[i] = last_waiter;
  }
  uv_sleep(10); /* let the first jobs start */
  for (int i = 0; i < 8; i++) {
    ws[i]->task = NULL;
    ws[i]->cancel(ws[i]);
  }
  uv_run(gw__worker->loop, UV_RUN_DEFAULT);
  CHECK(woke == 0, "no wake after cancel");
}

int main(void) {
  static gw_worker_t worker;
  worker.loop = uv_default_loop();
  gw__worker = &worker;
  gw_task_t task;
  memset(&task, 0, sizeof task);
  task.serial = 7;
  test_sync();
  test_async(&task);
  test_cancel(&task);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
