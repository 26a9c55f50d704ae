/* The master process of a multi-worker gateway (workers = N > 1 or
 * "auto"): binds the listening sockets once, forks N workers that inherit
 * them (all accept from one kernel queue, so a worker that stops never
 * strands queued connections), restarts workers that die (with back-off
 * for crash loops), validates and fans out reloads, and forwards stop
 * signals. It runs no event loop: it waits for signals with sigtimedwait. */
#ifndef MG_MASTER_H
#define MG_MASTER_H

typedef struct mg_loop mg_loop_t;

/* Takes over the process; `cfg_loop` holds the loaded config (used to
 * validate reloads). Returns the exit code. */
int mg_master_run(mg_loop_t *cfg_loop, int nworkers);

#endif
