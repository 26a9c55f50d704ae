/* Error log (stderr, with levels) and the access log writer. */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stdio.h>

enum { MG_LOG_ERROR = 0, MG_LOG_WARN, MG_LOG_INFO, MG_LOG_DEBUG };

/* The level is set once at startup (from MOONGATE_LOG_LEVEL) and read-only after. */
void mg_log_init(void);
int mg_log_enabled(int level);
void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define mg_log_error(...) mg_log(MG_LOG_ERROR, __VA_ARGS__)
#define mg_log_warn(...) mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_log_info(...) mg_log(MG_LOG_INFO, __VA_ARGS__)
#define mg_log_debug(...) do { if (mg_log_enabled(MG_LOG_DEBUG)) mg_log(MG_LOG_DEBUG, __VA_ARGS__); } while (0)

/* Formats t (wall clock seconds) as RFC 3339 UTC with milliseconds into out[32]. */
void mg_log_time(double t, char out[32]);

#endif
