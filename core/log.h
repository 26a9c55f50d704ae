/* The error log (stderr, stdout or a file, with levels) and log timestamps. */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stddef.h>
#include <stdio.h>

enum { MG_LOG_ERROR = 0, MG_LOG_WARN, MG_LOG_INFO, MG_LOG_DEBUG };

/* The error log is process-wide (one destination per process, like stderr
 * itself): its level and file are set at startup and on reload, and the file
 * is reopened on SIGUSR1. Nothing else changes them.
 *
 * Reads MOONGATE_LOG_LEVEL. 0, or -1 with the reason in err when the
 * variable names no level (a start error, not a silent default). */
int mg_log_init(char *err, size_t errlen);
/* The level for `name` (debug, info, warn, error; case-insensitive), or -1. */
int mg_log_level_parse(const char *name);
/* Points the error log at `path` ("stderr", "stdout", a file opened for
 * appending, or NULL for stderr) at `level` (-1: info). MOONGATE_LOG_LEVEL,
 * when set, wins over `level`. Reopens the file even if the path is
 * unchanged. 0, or -1 with the reason in err (the log stays as it was). */
int mg_log_configure(const char *path, int level, char *err, size_t errlen);
/* Reopens the error log file by its path (SIGUSR1, after logrotate moved
 * it); stderr/stdout are left alone. 0, or -1 (logged; the old file stays). */
int mg_log_reopen(void);
int mg_log_enabled(int level);
void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define mg_log_error(...) mg_log(MG_LOG_ERROR, __VA_ARGS__)
#define mg_log_warn(...) mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_log_info(...) mg_log(MG_LOG_INFO, __VA_ARGS__)
/* The level is checked before the arguments are evaluated or formatted. */
#define mg_log_debug(...) do { if (mg_log_enabled(MG_LOG_DEBUG)) mg_log(MG_LOG_DEBUG, __VA_ARGS__); } while (0)

/* Formats t (wall clock seconds) as RFC 3339 UTC with milliseconds into out[32]. */
void mg_log_time(double t, char out[32]);

#endif
