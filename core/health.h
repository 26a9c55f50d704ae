/* Active upstream health checks (PRODUCT.md "Upstream health"). One prober
 * per instance, run by worker 0 on its loop (the single process when there
 * is one worker): every `interval` it checks each server of each upstream
 * with a `health` table, with a GET (or a bare connect for type "tcp") on
 * connections of its own, never the request pools. After `fall` failures
 * in a row a server is down, after `rise` successes up again. The state
 * lives in the metrics region's health slots (metrics.h), found by upstream
 * name and server address, so every worker's balancer reads it at once,
 * and it survives reloads and a restarted worker 0. */
#ifndef MG_HEALTH_H
#define MG_HEALTH_H

#include "buf.h"

typedef struct mg_loop mg_loop_t;

/* Once per loop iteration (worker.c): binds the current generation's
 * servers to their shared state (the balancer then skips down ones), and
 * on worker 0 starts, moves to the new generation, or (while stopping)
 * ends the prober. Never blocks. */
void mg_health_sync(mg_loop_t *loop);
/* Ends the prober (closes its connections) and frees loop->health; before
 * the loop's generation and resolver go. NULL-tolerant. */
void mg_health_free(mg_loop_t *loop);

/* Admin: appends `"upstreams":{...}` (each server's state) to a JSON
 * object being built. */
void mg_health_status_json(mg_loop_t *loop, mg_buf_t *b);
/* Admin: appends the moongate_upstream_server_up gauge (Prometheus text). */
void mg_health_metrics(mg_loop_t *loop, mg_buf_t *b);

#endif
