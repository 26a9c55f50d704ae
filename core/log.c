#include "log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Set once at startup, read-only afterwards (not mutable process state). */
static int mg_log_level = MG_LOG_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void mg_log_init(void)
{
    const char *v = getenv("MOONGATE_LOG_LEVEL");
    if (v == NULL)
        return;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(v, level_names[i]) == 0)
            mg_log_level = i;
}

int mg_log_enabled(int level)
{
    return level <= mg_log_level;
}

void mg_log_time(double t, char out[32])
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    int ms = (int)((t - (double)s) * 1000.0);
    if (ms < 0)
        ms = 0;
    if (ms > 999)
        ms = 999;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    memcpy(out, tmp, 31);
    out[31] = '\0';
}

void mg_log(int level, const char *fmt, ...)
{
    if (level > mg_log_level)
        return;
    char line[4096];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char ts[32];
    mg_log_time((double)tv.tv_sec + tv.tv_usec / 1e6, ts);
    int n = snprintf(line, sizeof line, "%s [%s] %d: ", ts, level_names[level], (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write(2) per line keeps lines from several workers whole. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
