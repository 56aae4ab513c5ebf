/*
 * log.c: error and access logs (see log.h).
 *
 * Lines are formatted into a stack buffer and written with one write(2), so
 * that lines from several workers appending to one file never interleave.
 * Writes are blocking: log files are local and small writes to them do not
 * stall the loop in practice; a full disk drops lines rather than memory.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"

static struct {
  int error_fd;         /* -1 until opened: then stderr is used */
  char *error_path;     /* NULL for stderr */
  int access_fd;        /* -1 when off */
  char *access_path;    /* NULL for stdout or off */
  gw_log_level_t level; /* lines below this level are dropped */
  char role[32];        /* "master", "worker 2" */
} logs = {-1, NULL, -1, NULL, GW_LOG_INFO, "gateway"};

static const char *level_names[] = {"debug", "info", "warn", "error"};

static int open_append(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  return fd < 0 ? -errno : fd;
}

static void replace_path(char **slot, const char *path) {
  free(*slot);
  *slot = path ? strdup(path) : NULL;
}

int gw_log_open_error(const char *path) {
  if (!path || strcmp(path, "stderr") == 0) {
    if (logs.error_fd > 2) close(logs.error_fd);
    logs.error_fd = -1;
    replace_path(&logs.error_path, NULL);
    return 0;
  }
  int fd = open_append(path);
  if (fd < 0) return fd;
  if (logs.error_fd > 2) close(logs.error_fd);
  logs.error_fd = fd;
  replace_path(&logs.error_path, path);
  return 0;
}

/* The folder of `path` into `dir` ("." for a bare name); 0 or -ENAMETOOLONG. */
static int folder_of(const char *path, char *dir, size_t cap) {
  const char *slash = strrchr(path, '/');
  int n = !slash          ? snprintf(dir, cap, ".")
          : slash == path ? snprintf(dir, cap, "/")
                          : snprintf(dir, cap, "%.*s", (int)(slash - path), path);
  return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Whether a file could be made in the folder of `path` (0 or -errno). */
static int folder_writable(const char *path) {
  char dir[4096];
  int rc = folder_of(path, dir, sizeof dir);
  if (rc) return rc;
  /* A missing folder says ENOENT, as open(O_CREAT) would. */
  return faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) == 0 ? 0 : -errno;
}

/* Where open(O_CREAT) would make the missing file `path`: the path itself,
 * or, for a symbolic link to a missing file, where the links lead (a
 * relative target is taken from the link's folder). Into `out`; 0, or
 * -errno (ELOOP past 40 links, as the kernel). */
static int creation_path(const char *path, char *out, size_t cap) {
  if (snprintf(out, cap, "%s", path) >= (int)cap) return -ENAMETOOLONG;
  for (int links = 0;; links++) {
    struct stat st;
    if (lstat(out, &st) != 0) return errno == ENOENT ? 0 : -errno;
    if (!S_ISLNK(st.st_mode)) return -EEXIST; /* came into being meanwhile */
    if (links == 40) return -ELOOP;
    char target[4096], dir[4096];
    ssize_t n = readlink(out, target, sizeof target - 1);
    if (n < 0) return -errno;
    target[n] = 0;
    int rc = target[0] == '/' ? 0 : folder_of(out, dir, sizeof dir);
    if (rc) return rc;
    int len = target[0] == '/' ? snprintf(out, cap, "%s", target) : snprintf(out, cap, "%s/%s", dir, target);
    if (len < 0 || (size_t)len >= cap) return -ENAMETOOLONG;
  }
}

/* 0 if `path` could be opened for appending, or -errno; nothing is created
 * (a check, -t, must leave no file behind). An existing file is opened the
 * way the log will be (O_CREAT included: the kernel's protected_regular
 * rule applies only then); a missing one needs a folder it could be made
 * in, the folder a dangling symbolic link points into. */
static int could_append(const char *path) {
  if (!*path) return -ENOENT;
  struct stat st;
  char where[4096];
  int rc = stat(path, &st) == 0 ? -EEXIST
           : errno != ENOENT    ? -errno
                                : creation_path(path, where, sizeof where);
  if (rc == -EEXIST) {
    int fd = open_append(path);
    if (fd < 0) return fd;
    close(fd);
    return 0;
  }
  return rc < 0 ? rc : folder_writable(where);
}

static int check_one(const char *what, const char *path, const char *special, char *err, size_t errlen) {
  if (!path || strcmp(path, special) == 0) return 0;
  int rc = could_append(path);
  if (rc < 0) {
    snprintf(err, errlen, "cannot open %s %s: %s", what, path, strerror(-rc));
    return GW_ECONFIG;
  }
  return 0;
}

int gw_log_check_paths(const char *error_log, const char *access_log, char *err, size_t errlen) {
  if (check_one("error log", error_log, "stderr", err, errlen) != 0) return GW_ECONFIG;
  return check_one("access log", access_log, "stdout", err, errlen);
}

int gw_log_open_access(const char *path) {
  int fd = -1;
  if (path && strcmp(path, "stdout") == 0) {
    fd = STDOUT_FILENO;
  } else if (path) {
    fd = open_append(path);
    if (fd < 0) return fd;
  }
  if (logs.access_fd > 2) close(logs.access_fd);
  logs.access_fd = fd;
  replace_path(&logs.access_path, fd > 2 ? path : NULL);
  return 0;
}

int gw_log_reopen(void) {
  int rc = 0;
  if (logs.error_path) {
    char *p = strdup(logs.error_path);
    rc = gw_log_open_error(p);
    free(p);
  }
  if (logs.access_path) {
    char *p = strdup(logs.access_path);
    int rc2 = gw_log_open_access(p);
    free(p);
    if (rc == 0) rc = rc2;
  }
  return rc;
}

void gw_log_set_level(gw_log_level_t level) { logs.level = level; }

void gw_log_set_role(const char *role) { snprintf(logs.role, sizeof logs.role, "%s", role); }

static void write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    len -= (size_t)n;
  }
}

typedef struct {
  long year;
  int month, day, hour, minute, second;
} utc_time_t;

/* The UTC date and time of `secs` since the epoch, computed here rather
 * than with gmtime_r, which takes glibc's time zone lock: the watchdog logs
 * from a signal handler (watchdog.c) that may have interrupted a log line.
 * Days are counted in 400-year eras of 146,097 days from 0000-03-01, so
 * that the leap day is the last day of a year. */
static utc_time_t utc_time(int64_t secs) {
  utc_time_t t;
  int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    days--;
  }
  t.hour = (int)(rem / 3600);
  t.minute = (int)(rem / 60 % 60);
  t.second = (int)(rem % 60);
  days += 719468; /* 1970-01-01 is day 719,468 after 0000-03-01 */
  int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  int64_t day_of_era = days - era * 146097; /* 0..146096 */
  int64_t year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365; /* 0..399 */
  int64_t day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); /* 0..365, from March */
  int64_t month_from_march = (5 * day_of_year + 2) / 153;                     /* 0..11 */
  t.day = (int)(day_of_year - (153 * month_from_march + 2) / 5 + 1);
  t.month = (int)(month_from_march < 10 ? month_from_march + 3 : month_from_march - 9);
  t.year = (long)(year_of_era + era * 400 + (t.month <= 2));
  return t;
}

/* Integer conversions only, and no lock taken: callable from the
 * watchdog's signal handler. */
static size_t format_prefix(char *buf, size_t cap, gw_log_level_t level) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  utc_time_t t = utc_time((int64_t)ts.tv_sec);
  int n = snprintf(buf, cap, "%04ld-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %s[%d]: ", t.year, t.month, t.day,
                   t.hour, t.minute, t.second, ts.tv_nsec / 1000000, level_names[level], logs.role,
                   (int)getpid());
  return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Copies msg into dst (at most cap bytes) so that no byte of it can pass
 * for the start of another log line: control bytes become \xNN (\n, \r
 * and \t by name in one_line mode), and otherwise a line feed is followed by
 * a tab, so that a traceback's lines stay lines but each after the first is
 * indented (a message carrying client text, as errors and gw.log do, could
 * otherwise write a whole line of its choosing). Returns the bytes written. */
static size_t escape_message(char *dst, size_t cap, const char *msg, size_t len, int one_line) {
  static const char hex[] = "0123456789abcdef";
  size_t n = 0;
  for (size_t i = 0; i < len && n + 4 <= cap; i++) {
    unsigned char c = (unsigned char)msg[i];
    if (c == '\n' && !one_line) {
      dst[n++] = '\n';
      if (i + 1 < len && msg[i + 1] != '\t') dst[n++] = '\t';
    } else if (c == '\t' && !one_line) {
      dst[n++] = '\t';
    } else if (c < 0x20 || c == 0x7f) {
      dst[n++] = '\\';
      if (c == '\n' || c == '\r' || c == '\t') {
        dst[n++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
      } else {
        dst[n++] = 'x';
        dst[n++] = hex[c >> 4];
        dst[n++] = hex[c & 15];
      }
    } else {
      dst[n++] = (char)c;
    }
  }
  return n;
}

static void log_text(gw_log_level_t level, const char *msg, size_t len, int one_line) {
  if (level < logs.level) return;
  char buf[8192];
  size_t n = format_prefix(buf, sizeof buf, level);
  n += escape_message(buf + n, sizeof buf - n - 1, msg, len, one_line);
  buf[n++] = '\n';
  write_all(logs.error_fd >= 0 ? logs.error_fd : STDERR_FILENO, buf, n);
}

void gw_log_text(gw_log_level_t level, const char *msg, size_t len) { log_text(level, msg, len, 0); }

void gw_log_line(gw_log_level_t level, const char *msg, size_t len) { log_text(level, msg, len, 1); }

void gw_log(gw_log_level_t level, const char *fmt, ...) {
  if (level < logs.level) return;
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  gw_log_text(level, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

int gw_access_log_enabled(void) { return logs.access_fd >= 0; }

void gw_access_log_write(const char *line, size_t len) {
  if (logs.access_fd >= 0) write_all(logs.access_fd, line, len);
}
