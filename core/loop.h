/* mg_loop_t: all the state of one worker process (no globals). Callbacks
 * reach it through ev_userdata(loop). Also the config generations'
 * references and the deferred-free queue. This is the bottom of the module
 * map: every module may include it, and it calls none of them; the worker
 * (worker.h) creates, runs and drains the loop. */
#ifndef MG_LOOP_H
#define MG_LOOP_H

/* Finished request coroutines kept for reuse: enough for c=1000 in flight,
 * so a busy worker does not create and collect a thread per request. */
#define MG_THREAD_CACHE 1024

#include <ev.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

#define MG_MAX_LISTENERS 64
#define MG_MAX_WATCH 64

typedef struct mg_up mg_up_t;
typedef struct mg_conn mg_conn_t;
typedef struct mg_listener mg_listener_t;
struct mg_req;
struct ssl_ctx_st;

/* One loaded config and the runtime state tied to it (upstream pools, TLS
 * listeners' contexts). Requests hold a reference to the generation they
 * started on; TLS sessions hold their own reference to their context. */
typedef struct mg_gen {
    int refs;
    unsigned id;
    mg_cfg_t *cfg;
    mg_up_t *ups;            /* one per cfg->upstreams[i] */
    struct ssl_ctx_st **tls; /* one per cfg->listen[i]: NULL for plain TCP (owned refs) */
    int ntls;                /* TLS listeners in cfg */
    struct mg_dns_name **names; /* Redis host names kept resolved for it (refs), nnames */
    int nnames;
    struct mg_loop *loop;
    /* Frees the generation (its pools and TLS contexts): set by whoever
     * built it (gen.c), run when the last reference goes. */
    void (*release)(struct mg_gen *g);
} mg_gen_t;

/* A watched file and what it looked like last time. */
typedef struct mg_watch {
    char *path;
    struct {
        unsigned long long ino, size;
        long long sec, nsec;
    } sig;
} mg_watch_t;

typedef struct mg_defer {
    void (*fn)(void *);
    void *p;
    struct mg_defer *next;
} mg_defer_t;

typedef struct mg_stats {
    uint64_t requests;       /* finished requests */
    uint64_t accepted;
    int conns;               /* open client connections */
    int active;              /* requests in flight */
    int lua_busy;            /* request coroutines alive (log phases included) */
    int tunnels;             /* open tunnels (upgraded connections) */
} mg_stats_t;

typedef struct mg_loop {
    struct ev_loop *ev;
    lua_State *L;
    mg_gen_t *gen;           /* current generation */
    unsigned next_gen_id;
    const char *config_file;
    mg_listener_t *listeners[MG_MAX_LISTENERS]; /* heap-allocated: watchers never move */
    int nlisteners;
    /* processes and metrics */
    int worker_index;        /* 0 in single-process mode */
    int master_pid;          /* 0 in single-process mode */
    int inherited;           /* listeners come from the master (multi-worker mode) */
    struct mg_met_shm *met_shm;
    struct mg_met_worker *met;  /* this worker's slot */
    struct mg_health *health;   /* active upstream health checks (health.c); NULL: none yet */
    mg_watch_t watch[MG_MAX_WATCH];   /* dev mode: config and plugin files */
    int nwatch;
    ev_timer watch_timer;    /* polls them */
    ev_timer watch_debounce;
    int met_owned;
    mg_conn_t *conns;        /* every open client connection */
    struct mg_h2c *h2conns;  /* every open HTTP/2 client connection (h2conn.c) */
    struct mg_dns *dns;      /* the resolver (dns.h): upstream/Redis host names, gw.http */
    struct mg_tun *tunnels;  /* every open tunnel (tunnel.c) */
    void (*close_tunnels)(struct mg_loop *loop); /* set by tunnel.c once one opened */
    FILE *access_log;        /* NULL when off */
    int access_log_owned;
    char *scratch;           /* shared read buffer for upstream and client reads */
    size_t scratch_cap;
    mg_defer_t *deferred;
    ev_prepare prepare;
    ev_idle spin;            /* busy polling: keeps the loop from sleeping */
    double last_active;      /* ev_now of the last iteration with events */
    ev_signal sigterm, sigint, sighup, sigquit, sigusr1;
    char http_date[48];      /* "Date: <IMF-fixdate>\r\n" for date_sec (see mg_loop_date) */
    long long date_sec;
    ev_timer drain_timer;
    int stopping;
    /* While stopping: a request or connection ended, see whether the
     * worker is drained (set by drain.c when the stop starts). */
    void (*drain_check)(struct mg_loop *loop);
    int exit_code;
    double started;
    mg_stats_t stats;
    /* Answers a request that came in on the admin listener (registered by
     * main: the admin API sits above the request layer). */
    void (*admin_handler)(struct mg_req *r);
    /* Proxies a request to its upstream (registered by worker.c: the proxy
     * sits above the request layer, which reaches it only through this and
     * the exchange's ops on the request). */
    void (*proxy_handler)(struct mg_req *r);
    /* Lua runtime */
    struct mg_req *cur_req;  /* the request whose coroutine runs now */
    size_t lua_mem;          /* bytes allocated by the Lua state */
    size_t lua_mem_limit;
    int lua_limit_on;        /* the limit applies only while plugins run */
    int lua_oom;             /* an allocation failed in this resume */
    int lua_gc_pending;      /* a coroutine failed out of memory: full GC once it is dropped */
    int run_ref;             /* runtime.run */
    int run_log_ref;         /* runtime.run_log: the log phase after a Lua error */
    int threads[MG_THREAD_CACHE]; /* finished coroutines kept for reuse (registry refs) */
    int nthreads;
    struct mg_req *script;   /* --script mode's pseudo request */
    struct mg_req *free_reqs;/* finished requests kept for reuse */
    int nfree_reqs;
} mg_loop_t;

static inline mg_loop_t *mg_loop_of(struct ev_loop *ev) { return (mg_loop_t *)ev_userdata(ev); }

/* A one-shot timer that follows a deadline lazily (libev's "be smart about
 * timeouts"), for client (conn.c) and upstream (upstream.c) connections,
 * whose timeouts change several times per request: restarting a timer is
 * two heap operations among every connection's timers. *armed_at is when
 * w is due (<= the deadline). mg_timer_follow arms w for `at` only when
 * it is not armed or due later; mg_timer_early, first in w's callback,
 * re-arms it for the rest and returns 1 when it fired before `deadline`. */
static inline void mg_timer_follow(struct ev_loop *ev, ev_timer *w, double *armed_at, double at)
{
    if (ev_is_active(w) && *armed_at <= at)
        return;
    ev_timer_stop(ev, w);
    ev_timer_set(w, at - ev_now(ev), 0.);
    ev_timer_start(ev, w);
    *armed_at = at;
}

static inline int mg_timer_early(struct ev_loop *ev, ev_timer *w, double *armed_at,
                                 double deadline)
{
    double now = ev_now(ev);
    if (deadline <= now + 1e-3)
        return 0;
    ev_timer_set(w, deadline - now, 0.);
    ev_timer_start(ev, w);
    *armed_at = deadline;
    return 1;
}

/* The TLS context for new connections on the listener `addr` (its text as
 * configured) in generation g, or NULL for a plain listener. Borrowed. */
struct ssl_ctx_st *mg_gen_tls(const mg_gen_t *g, const char *addr);
void mg_gen_ref(mg_gen_t *g);
void mg_gen_unref(mg_gen_t *g);

/* "Date: <IMF-fixdate>\r\n" for the loop's current second, formatted once
 * a second. Borrowed until the next call. */
const char *mg_loop_date(mg_loop_t *loop);
/* Runs fn(p) at the next loop iteration, outside any callback stack. */
void mg_loop_defer(mg_loop_t *loop, void (*fn)(void *), void *p);
/* Runs the frees queued so far (the worker's ev_prepare, and teardown). */
void mg_loop_run_deferred(mg_loop_t *loop);
/* Called when a request or connection finished, to end a drain early. */
void mg_loop_check_drained(mg_loop_t *loop);

#endif
