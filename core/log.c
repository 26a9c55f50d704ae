#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Process-wide by nature (see log.h): the level, the destination and the
 * path to reopen. Changed only at startup, on reload and on SIGUSR1, from
 * the loop's own callbacks, never concurrently. */
static int mg_log_level = MG_LOG_INFO;
static int mg_log_env_level = -1;  /* MOONGATE_LOG_LEVEL, when set */
static int mg_log_fd = STDERR_FILENO;
static char *mg_log_path;          /* the file's path; NULL for stderr/stdout */

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int mg_log_level_parse(const char *name)
{
    for (int i = 0; name && i < 4; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

int mg_log_init(char *err, size_t errlen)
{
    const char *v = getenv("MOONGATE_LOG_LEVEL");
    if (v == NULL || v[0] == '\0')
        return 0;
    int l = mg_log_level_parse(v);
    if (l < 0) {
        snprintf(err, errlen, "MOONGATE_LOG_LEVEL: '%s' is not a level (debug, info, warn, error)",
                 v);
        return -1;
    }
    mg_log_env_level = mg_log_level = l;
    return 0;
}

static int open_log(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        snprintf(err, errlen, "error_log: cannot open %s: %s", path, strerror(errno));
    return fd;
}

int mg_log_configure(const char *path, int level, char *err, size_t errlen)
{
    int fd;
    char *copy = NULL;
    if (path == NULL || strcmp(path, "stderr") == 0) {
        fd = STDERR_FILENO;
    } else if (strcmp(path, "stdout") == 0) {
        fd = STDOUT_FILENO;
    } else {
        copy = strdup(path);
        if (copy == NULL) {
            snprintf(err, errlen, "error_log: out of memory");
            return -1;
        }
        fd = open_log(path, err, errlen);
        if (fd < 0) {
            free(copy);
            return -1;
        }
    }
    if (mg_log_path)
        close(mg_log_fd);
    free(mg_log_path);
    mg_log_path = copy;
    mg_log_fd = fd;
    mg_log_level = mg_log_env_level >= 0 ? mg_log_env_level : level >= 0 ? level : MG_LOG_INFO;
    return 0;
}

int mg_log_reopen(void)
{
    if (mg_log_path == NULL)
        return 0;
    char err[512];
    int fd = open_log(mg_log_path, err, sizeof err);
    if (fd < 0) {
        mg_log_error("%s (still writing to the old file)", err);
        return -1;
    }
    /* dup2 swaps the file under the same descriptor in one step: a line is
     * written whole to the old file or to the new one */
    if (dup2(fd, mg_log_fd) < 0) {
        close(mg_log_fd);
        mg_log_fd = fd;
        return 0;
    }
    close(fd);
    return 0;
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
    ssize_t w = write(mg_log_fd, line, len);
    (void)w;
}
