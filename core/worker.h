/* The worker process around the loop: creating it with its Lua state,
 * loading and reloading config generations, the listening sockets, running
 * it (signals, busy polling, the access log, dev-mode watch) and the
 * graceful stop. Used by main, master and admin; nothing below calls it
 * (they reach the worker through the callbacks it plugs into mg_loop_t).
 * The implementation is split by job: worker.c, gen.c, listen.c, watch.c,
 * drain.c, access_log_file.c, busy_poll.c. */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include <stddef.h>

#include "loop.h"

/* Creates the loop with its Lua state. NULL on failure (logged). */
mg_loop_t *mg_loop_new(const char *config_file);
/* Loads the config file as a new generation and makes it current.
 * 0, or -1 with "file:line: why" in err. */
int mg_loop_load(mg_loop_t *loop, char *err, size_t errlen);
/* Loads the config file again as a new generation (SIGHUP, POST /reload,
 * watch). On failure the old generation keeps serving. In single-process
 * mode it also binds/closes listeners the new config adds/removes. Records
 * the result in the metrics region. 0, or -1 with the reason in err. */
int mg_loop_reload(mg_loop_t *loop, char *err, size_t errlen);
/* Asks for a reload the way this process should: in a worker of a
 * multi-worker gateway, by signalling the master after checking the
 * config; otherwise in-process. 0, or -1 with the reason in err. */
int mg_loop_request_reload(mg_loop_t *loop, char *err, size_t errlen);
/* Adopts an already-bound listening fd (multi-worker mode). */
int mg_loop_adopt_listener(mg_loop_t *loop, int fd, const mg_addr_t *addr, int admin);
/* Binds listeners (unless adopted), runs until stopped; returns the exit code. */
int mg_loop_run(mg_loop_t *loop);
void mg_loop_free(mg_loop_t *loop);
/* Starts a graceful stop: stop accepting, close idle conns, drain. */
void mg_loop_stop(mg_loop_t *loop);

/* --- between the worker's job files ------------------------------------- */

/* listen.c: makes the open listeners match the current config (binds new
 * addresses, closes dropped ones, keeps the rest). 0, or -1 with err. */
int mg_worker_sync_listeners(mg_loop_t *loop, char *err, size_t errlen);
/* watch.c: (re)starts or stops watching the config and plugin files. */
void mg_worker_setup_watch(mg_loop_t *loop);
void mg_worker_clear_watch(mg_loop_t *loop);
/* access_log_file.c: opens the configured access log file (0, or -1
 * logged), reopens it after a reload or on SIGUSR1 (keeping the old file if
 * the new one cannot be opened), closes it at exit. The lines themselves
 * are accesslog.c's. */
int mg_worker_open_access_log(mg_loop_t *loop);
void mg_worker_reopen_access_log(mg_loop_t *loop);
void mg_worker_close_access_log(mg_loop_t *loop);
/* busy_poll.c: sets up the spin watcher; applies the current config's
 * busy_poll setting. */
void mg_worker_busy_poll_init(mg_loop_t *loop);
void mg_worker_busy_poll_apply(mg_loop_t *loop);

#endif
