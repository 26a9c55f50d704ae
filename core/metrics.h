/* Metrics shared by all workers: one shared-memory region (mmap'd by the
 * master before it forks) with a slot per worker. Each worker writes only
 * its own slot; /metrics sums the slots. A respawned worker keeps its
 * slot's counters, so totals never go backwards. Leaf module: libc and buf.h only. */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define MG_MET_MAX_WORKERS 64
#define MG_MET_KEYS 512          /* distinct (route, status) pairs per worker */
#define MG_MET_ROUTE_LEN 48
#define MG_MET_BUCKETS 12

typedef struct mg_met_key {
    uint32_t used;               /* set last, with release order */
    uint16_t status;
    char route[MG_MET_ROUTE_LEN];
    uint64_t count;
} mg_met_key_t;

/* One route's latency histogram (the route as in mg_met_key_t). */
#define MG_MET_ROUTES 128
typedef struct mg_met_route {
    uint32_t used;               /* set last, with release order */
    char route[MG_MET_ROUTE_LEN];
    uint64_t hist[MG_MET_BUCKETS + 1];   /* latency buckets, last is +Inf */
    double sum;
    uint64_t count;
} mg_met_route_t;

/* What goes wrong with an upstream, counted per upstream name. */
enum {
    MG_MET_UP_CONNECT,           /* a connect failed (refused, unreachable, timed out) */
    MG_MET_UP_TIMEOUT,           /* a connect or read timed out */
    MG_MET_UP_RESET,             /* the connection was reset or closed early */
    MG_MET_UP_INVALID,           /* the answer was not HTTP (or too large) */
    MG_MET_UP_RETRY,             /* a request went again to another server */
    MG_MET_UP_N
};
#define MG_MET_UPS 128
typedef struct mg_met_up {
    uint32_t used;               /* set last, with release order */
    char name[MG_MET_ROUTE_LEN];
    uint64_t n[MG_MET_UP_N];
} mg_met_up_t;

typedef struct mg_met_worker {
    int pid;
    uint64_t requests;
    uint64_t restarts;
    int64_t conns, active, up_idle;      /* gauges, refreshed each loop iteration */
    int64_t lua_mem;
    int64_t lua_busy;                    /* request coroutines alive (log phases too) */
    int64_t tunnels;                     /* open tunnels (WebSocket and other upgrades) */
    uint32_t generation;
    uint32_t overflow;                   /* (route, status) pairs that found no slot */
    uint32_t route_overflow;             /* requests of routes that found no histogram */
    mg_met_key_t keys[MG_MET_KEYS];
    mg_met_route_t routes[MG_MET_ROUTES];
    mg_met_up_t ups[MG_MET_UPS];
} mg_met_worker_t;

/* One upstream server's active-health state (health.c), found by its
 * upstream's name and its address as configured, so it outlives reloads
 * and worker restarts. The prober (worker 0) writes it; every worker's
 * balancer reads `down`. */
#define MG_MET_HEALTH_SLOTS 1024
#define MG_MET_HEALTH_NAME 64
typedef struct mg_met_health {
    uint32_t used;                       /* 0 free, 1 being claimed, 2 ready (atomic) */
    uint32_t down;                       /* the prober marked it down (atomic) */
    uint32_t fails, oks;                 /* consecutive failed / good checks */
    uint64_t checks;                     /* checks done */
    double last_check;                   /* wall time of the last result; 0: none yet */
    double changed;                      /* wall time of the last up/down change; 0: never */
    char upstream[MG_MET_HEALTH_NAME];
    char server[80];
    char last_error[64];                 /* why the last check failed; "" after a good one */
} mg_met_health_t;

typedef struct mg_met_shm {
    int nworkers;
    double started;
    uint32_t generation;                 /* the config generation in force */
    uint64_t reloads_ok, reloads_failed;
    int last_reload_ok;                  /* -1 none yet */
    double last_reload_at;
    char last_reload_error[512];
    mg_met_worker_t w[MG_MET_MAX_WORKERS];
    mg_met_health_t health[MG_MET_HEALTH_SLOTS];
} mg_met_shm_t;

extern const double mg_met_bounds[MG_MET_BUCKETS];

/* Maps a region for nworkers (shared with children forked later). */
mg_met_shm_t *mg_met_create(int nworkers);
void mg_met_destroy(mg_met_shm_t *m);
/* Counts one finished request in a worker's slot. */
void mg_met_request(mg_met_worker_t *w, const char *route, int status, double seconds);
/* Counts one MG_MET_UP_* event of upstream `name` in a worker's slot;
 * MG_MET_UP_N counts nothing but gives the upstream its series (at 0). */
void mg_met_upstream(mg_met_worker_t *w, const char *name, int what);
/* Records a reload result (ok, or the error text). */
void mg_met_reload(mg_met_shm_t *m, int ok, const char *err, double now);

/* Appends the Prometheus text exposition to out (buf.h: check out->failed). */
void mg_met_render(const mg_met_shm_t *m, const char *version, mg_buf_t *out);

#endif
