/* The access log file: opened at start, reopened on every reload (so it
 * can be rotated and moved), flushed once per loop iteration. */
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

/* A reload reopens the access log, so it can be rotated (logrotate's
 * postrotate: kill -HUP) and can move to the path the new config names. */
void mg_worker_reopen_access_log(mg_loop_t *loop)
{
    mg_worker_close_access_log(loop);
    mg_worker_open_access_log(loop);
}
