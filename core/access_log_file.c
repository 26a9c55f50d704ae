/* The access log's file (its lines are formatted by accesslog.c): opened at
 * start, reopened on every reload and on SIGUSR1 (so it can be rotated and
 * moved), flushed once per loop iteration, closed at exit. */
#include "worker.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int mg_worker_open_access_log(mg_loop_t *loop)
{
    const char *where = loop->gen->cfg->access_log;
    if (where == NULL)
        return 0;
    if (strcmp(where, "stdout") == 0) {
        loop->access_log = stdout;
    } else if (strcmp(where, "stderr") == 0) {
        loop->access_log = stderr;
    } else {
        loop->access_log = fopen(where, "a");
        if (loop->access_log == NULL) {
            mg_log_error("access_log %s: %s", where, strerror(errno));
            return -1;
        }
        loop->access_log_owned = 1;
    }
    setvbuf(loop->access_log, NULL, _IOFBF, 64 * 1024);
    return 0;
}

void mg_worker_close_access_log(mg_loop_t *loop)
{
    if (loop->access_log) {
        fflush(loop->access_log);
        if (loop->access_log_owned)
            fclose(loop->access_log);
    }
    loop->access_log = NULL;
    loop->access_log_owned = 0;
}

/* A reload and SIGUSR1 reopen the access log, so it can be rotated
 * (logrotate's postrotate: kill -USR1) and can move to the path the new
 * config names. What was buffered goes to the old file first, and the new
 * file is opened before the old one is closed: if it cannot be, lines keep
 * going to the old one. */
void mg_worker_reopen_access_log(mg_loop_t *loop)
{
    FILE *old = loop->access_log;
    int old_owned = loop->access_log_owned;
    if (old)
        fflush(old);
    const char *where = loop->gen->cfg->access_log;
    if (old && !old_owned && where &&
        ((old == stdout && strcmp(where, "stdout") == 0) ||
         (old == stderr && strcmp(where, "stderr") == 0)))
        return; /* nothing to reopen (and stdio's buffer stays as it is) */
    loop->access_log = NULL;
    loop->access_log_owned = 0;
    if (mg_worker_open_access_log(loop) != 0 && old) {
        loop->access_log = old; /* mg_worker_open_access_log logged why */
        loop->access_log_owned = old_owned;
        return;
    }
    if (old && old_owned && old != loop->access_log)
        fclose(old);
}
