/*
 * runner.h: the C unit tests' one framework (a header, no library).
 *
 * A test program #includes the .c files it tests (to reach their statics),
 * then this header, defines its tests with TEST(name) and lists them once:
 *
 *   TEST(arena_alignment) { CHECK_EQ(x, 16); }
 *   TEST_LIST(T(arena_alignment), T(...))
 *
 * TEST_LIST expands to main(). Every test runs in a child process of its
 * own (fork), so a crash, an abort or a hang (RT_TIMEOUT seconds, SIGALRM)
 * fails that test only. Each test prints "ok   NAME" or "FAIL NAME" with the
 * failed checks as file:line; the last line is "N passed, N failed" and the
 * exit status is 1 when something failed or nothing ran (spec/run.py).
 *
 * CHECK and CHECK_EQ record a failure and go on; REQUIRE and REQUIRE_EQ end
 * the test at once (use them where going on would only crash). CHECK_DIES
 * runs a statement in a child of its own and expects it to die by a signal.
 *
 * A program with data-driven cases (fixtures) uses TEST_LIST_WITH(fn, ...):
 * fn() runs in the parent after the listed tests and calls
 * rt_run(name, body, arg) once per case, each forked like a listed test.
 *
 * Arguments are substrings: only tests whose name contains one run.
 * RT_NOFORK=1 runs every test in-process (for a debugger).
 */
#ifndef SPEC_RUNNER_H
#define SPEC_RUNNER_H

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef RT_TIMEOUT
#define RT_TIMEOUT 30 /* seconds per test */
#endif

typedef struct {
  const char *name;
  void (*fn)(void);
} rt_test_t;

static int rt_passed_, rt_failed_;   /* tests, in the parent */
static int rt_checks_failed_;        /* failed checks of the running test (child) */
static int rt_argc_;
static char **rt_argv_;

#define TEST(name) static void test_##name(void)
#define T(name) {#name, test_##name}

static void rt_fail_(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rt_fail_(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("    %s:%d: ", file, line);
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
  rt_checks_failed_++;
}

/* Ends the running test now (from a REQUIRE or a helper). */
static void rt_abandon_(void) {
  fflush(stdout);
  if (getenv("RT_NOFORK")) return; /* in-process: carry on, the count shows it */
  _exit(1);
}

#define CHECK(cond)                                            \
  do {                                                         \
    if (!(cond)) rt_fail_(__FILE__, __LINE__, "CHECK(%s) failed", #cond); \
  } while (0)

#define CHECK_MSG(cond, ...)                                   \
  do {                                                         \
    if (!(cond)) rt_fail_(__FILE__, __LINE__, __VA_ARGS__);    \
  } while (0)

/* Integer comparison; both sides are evaluated once, as long long. */
#define CHECK_EQ(a, b)                                                                     \
  do {                                                                                     \
    long long rt_a_ = (long long)(a), rt_b_ = (long long)(b);                              \
    if (rt_a_ != rt_b_)                                                                    \
      rt_fail_(__FILE__, __LINE__, "CHECK_EQ(%s, %s) failed: %lld != %lld", #a, #b, rt_a_, \
               rt_b_);                                                                     \
  } while (0)

#define CHECK_NE(a, b)                                                                     \
  do {                                                                                     \
    long long rt_a_ = (long long)(a), rt_b_ = (long long)(b);                              \
    if (rt_a_ == rt_b_)                                                                    \
      rt_fail_(__FILE__, __LINE__, "CHECK_NE(%s, %s) failed: both %lld", #a, #b, rt_a_);   \
  } while (0)

#define CHECK_PTR_EQ(a, b)                                                                 \
  do {                                                                                     \
    const void *rt_a_ = (a), *rt_b_ = (b);                                                 \
    if (rt_a_ != rt_b_)                                                                    \
      rt_fail_(__FILE__, __LINE__, "CHECK_PTR_EQ(%s, %s) failed: %p != %p", #a, #b, rt_a_, \
               rt_b_);                                                                     \
  } while (0)

/* A (pointer, length) slice against a C string. */
#define CHECK_MEM_EQ(p, n, s)                                                              \
  do {                                                                                     \
    const char *rt_p_ = (const char *)(p), *rt_s_ = (s);                                   \
    size_t rt_n_ = (size_t)(n);                                                            \
    if (rt_n_ != strlen(rt_s_) || memcmp(rt_p_, rt_s_, rt_n_) != 0)                        \
      rt_fail_(__FILE__, __LINE__, "CHECK_MEM_EQ(%s) failed: \"%.*s\" != \"%s\"", #p,      \
               (int)(rt_n_ > 200 ? 200 : rt_n_), rt_p_, rt_s_);                            \
  } while (0)

#define CHECK_STR_EQ(a, b)                                                                 \
  do {                                                                                     \
    const char *rt_a_ = (a), *rt_b_ = (b);                                                 \
    if (!rt_a_ || !rt_b_ || strcmp(rt_a_, rt_b_) != 0)                                     \
      rt_fail_(__FILE__, __LINE__, "CHECK_STR_EQ(%s, %s) failed: \"%s\" != \"%s\"", #a, #b, \
               rt_a_ ? rt_a_ : "(null)", rt_b_ ? rt_b_ : "(null)");                        \
  } while (0)

#define REQUIRE(cond)                  \
  do {                                 \
    int rt_before_ = rt_checks_failed_; \
    CHECK(cond);                       \
    if (rt_checks_failed_ != rt_before_) rt_abandon_(); \
  } while (0)

#define REQUIRE_EQ(a, b)               \
  do {                                 \
    int rt_before_ = rt_checks_failed_; \
    CHECK_EQ(a, b);                    \
    if (rt_checks_failed_ != rt_before_) rt_abandon_(); \
  } while (0)

/* Runs `stmt` in a child process and checks that it dies by `sig` (an
 * abort on a path that must abort, say). Its stderr goes to /dev/null. */
#define CHECK_DIES(stmt, sig)                                                               \
  do {                                                                                      \
    fflush(stdout);                                                                         \
    pid_t rt_pid_ = fork();                                                                 \
    if (rt_pid_ == 0) {                                                                     \
      if (!freopen("/dev/null", "w", stderr)) _exit(99);                                    \
      alarm(10);                                                                            \
      stmt;                                                                                 \
      _exit(0);                                                                             \
    }                                                                                       \
    int rt_st_ = 0;                                                                         \
    waitpid(rt_pid_, &rt_st_, 0);                                                           \
    if (!(WIFSIGNALED(rt_st_) && WTERMSIG(rt_st_) == (sig)))                                \
      rt_fail_(__FILE__, __LINE__, "CHECK_DIES(%s, %s) failed: %s %d", #stmt, #sig,         \
               WIFSIGNALED(rt_st_) ? "killed by signal" : "exited with",                    \
               WIFSIGNALED(rt_st_) ? WTERMSIG(rt_st_) : WEXITSTATUS(rt_st_));               \
  } while (0)

static int rt_selected_(const char *name) {
  if (rt_argc_ <= 1) return 1;
  for (int i = 1; i < rt_argc_; i++)
    if (strstr(name, rt_argv_[i])) return 1;
  return 0;
}

/* Runs one test in a child process and counts it. */
static void rt_run(const char *name, void (*body)(void *), void *arg) {
  if (!rt_selected_(name)) return;
  fflush(stdout);
  fflush(stderr);
  if (getenv("RT_NOFORK")) {
    rt_checks_failed_ = 0;
    body(arg);
    if (rt_checks_failed_) {
      printf("FAIL %s\n", name);
      rt_failed_++;
    } else {
      printf("ok   %s\n", name);
      rt_passed_++;
    }
    fflush(stdout);
    return;
  }
  /* The child's output goes through a pipe so that "ok"/"FAIL" comes first
   * and the details after it, indented, whatever the child printed. */
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    exit(2);
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[1]);
    signal(SIGALRM, SIG_DFL);
    alarm(RT_TIMEOUT);
    rt_checks_failed_ = 0;
    body(arg);
    fflush(stdout);
    fflush(stderr);
    _exit(rt_checks_failed_ ? 1 : 0);
  }
  close(fds[1]);
  char *text = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 > cap) {
      cap = cap ? cap * 2 : 8192;
      text = realloc(text, cap);
      if (!text) abort();
    }
    ssize_t n = read(fds[0], text + len, cap - len - 1);
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(fds[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    printf("ok   %s\n", name);
    rt_passed_++;
  } else {
    if (WIFSIGNALED(st))
      printf("FAIL %s: %s (signal %d)\n", name,
             WTERMSIG(st) == SIGALRM ? "timed out" : "crashed", WTERMSIG(st));
    else
      printf("FAIL %s\n", name);
    rt_failed_++;
  }
  if (len) {
    text[len] = '\0';
    fputs(text, stdout);
    if (text[len - 1] != '\n') putchar('\n');
  }
  free(text);
  fflush(stdout);
}

static void rt_call_(void *test) { ((const rt_test_t *)test)->fn(); }

static int rt_main_(int argc, char **argv, const rt_test_t *tests, size_t n,
                    void (*more)(void)) {
  rt_argc_ = argc;
  rt_argv_ = argv;
  for (size_t i = 0; i < n; i++) rt_run(tests[i].name, rt_call_, (void *)&tests[i]);
  if (more) more();
  printf("%d passed, %d failed\n", rt_passed_, rt_failed_);
  fflush(stdout);
  return rt_failed_ || rt_passed_ == 0 ? 1 : 0;
}

#define TEST_LIST_WITH(more, ...)                                               \
  static const rt_test_t rt_tests_[] = {__VA_ARGS__};                           \
  int main(int argc, char **argv) {                                             \
    return rt_main_(argc, argv, rt_tests_, sizeof rt_tests_ / sizeof *rt_tests_, more); \
  }

#define TEST_LIST(...) TEST_LIST_WITH(NULL, __VA_ARGS__)

#endif
