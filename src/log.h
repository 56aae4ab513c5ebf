/*
 * log.h: the error log and the access log of one process.
 *
 * The error log is a path or stderr; the access log a path, stdout, or off.
 * Both are opened with O_APPEND so that every worker can write to the same
 * file and each line lands whole. gw_log_reopen() reopens both (SIGUSR1), so
 * that logrotate can move the files away.
 */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stddef.h>

typedef enum { GW_LOG_DEBUG = 0, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR } gw_log_level_t;

/* `path` NULL or "stderr" means stderr. Returns 0 or a negative errno. */
int gw_log_open_error(const char *path);
/* `path` NULL means off, "stdout" means standard output. Returns 0 or -errno. */
int gw_log_open_access(const char *path);
/* Whether the log paths of a configuration can be opened (an existing file
 * for writing; a missing one, in its folder; nothing is created). Returns
 * 0, or GW_ECONFIG with a message naming the file in err. For -t and a
 * reload, which refuse such paths instead of failing at start or logging
 * nowhere. */
int gw_log_check_paths(const char *error_log, const char *access_log, char *err, size_t errlen);
int gw_log_reopen(void);
void gw_log_set_level(gw_log_level_t level);
/* Prefix written before each error-log line, e.g. "worker 3"; copied. */
void gw_log_set_role(const char *role);

void gw_log(gw_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes `len` bytes of message text at `level`. Control bytes are escaped;
 * line feeds are kept, each followed by a tab (tracebacks). */
void gw_log_text(gw_log_level_t level, const char *msg, size_t len);
/* The same as one line: line feeds too are escaped (gw.log from Lua). */
void gw_log_line(gw_log_level_t level, const char *msg, size_t len);
int gw_access_log_enabled(void);
/* Writes one ready-made line (ending in '\n') to the access log. */
void gw_access_log_write(const char *line, size_t len);

#define gw_log_error(...) gw_log(GW_LOG_ERROR, __VA_ARGS__)
#define gw_log_warn(...) gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_log_info(...) gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_log_debug(...) gw_log(GW_LOG_DEBUG, __VA_ARGS__)

#endif
