/* The worker process: creates the loop with its Lua state, runs it (signals,
 * the per-iteration housekeeping) and frees it. The other jobs of a worker
 * have their own files: gen.c (config generations, reload), listen.c
 * (listening sockets), watch.c (dev-mode reloads), drain.c (graceful stop),
 * access_log_file.c, busy_poll.c. */
#include "worker.h"
#include "conn.h"
#include "h2conn.h"
#include "dns.h"
#include "health.h"
#include "log.h"
#include "lrt.h"
#include "metrics.h"
#include "notify.h"
#include "proxy.h"
#include "req.h"
#include "server.h"
#include "upstream.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCRATCH_BYTES (64 * 1024)

static void prepare_cb(struct ev_loop *ev, ev_prepare *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_loop_run_deferred(loop); /* free what callbacks retired */
    if (loop->access_log)
        fflush(loop->access_log);
    if (loop->stopping)
        mg_loop_check_drained(loop);
    mg_health_sync(loop);
    if (loop->met) { /* publish gauges once per iteration */
        mg_met_worker_t *w = loop->met;
        w->conns = loop->stats.conns;
        w->active = loop->stats.active;
        w->lua_mem = (int64_t)loop->lua_mem;
        w->lua_busy = loop->stats.lua_busy;
        w->tunnels = loop->stats.tunnels;
        int64_t idle = 0;
        if (loop->gen && loop->gen->ups)
            for (int i = 0; i < loop->gen->cfg->nupstreams; i++)
                idle += loop->gen->ups[i].nidle;
        w->up_idle = idle;
    }
}

static void on_stop_signal(struct ev_loop *ev, ev_signal *w, int revents)
{
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    if (loop->stopping && w->signum == SIGINT) {
        mg_log_info("second SIGINT: stopping now");
        loop->exit_code = 0;
        ev_break(ev, EVBREAK_ALL);
        return;
    }
    mg_log_info("signal %d: stopping gracefully", w->signum);
    mg_loop_stop(loop);
}

/* SIGUSR1 (logrotate's postrotate): reopen the access and error logs by
 * their paths. What was buffered goes to the old file first, so a line is
 * in the old file or the new one, never lost. */
static void on_usr1(struct ev_loop *ev, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_log_reopen();
    mg_worker_reopen_access_log(loop);
    mg_log_info("signal USR1: reopened the log files");
}

static void on_hup(struct ev_loop *ev, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    char err[1024];
    mg_loop_reload(loop, err, sizeof err);
}

mg_loop_t *mg_loop_new(const char *config_file)
{
    mg_loop_t *loop = calloc(1, sizeof *loop);
    if (loop == NULL)
        return NULL;
    loop->config_file = config_file;
    loop->proxy_handler = mg_proxy_run;
    loop->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOENV);
    if (loop->ev == NULL)
        goto fail;
    ev_set_userdata(loop->ev, loop);
    loop->L = mg_lrt_new(loop);
    if (loop->L == NULL)
        goto fail;
    loop->scratch_cap = SCRATCH_BYTES;
    loop->scratch = malloc(loop->scratch_cap);
    if (loop->scratch == NULL)
        goto fail;
    char derr[128];
    loop->dns = mg_dns_new(loop->ev, derr, sizeof derr);
    if (loop->dns == NULL) {
        mg_log_error("%s", derr);
        goto fail;
    }
    ev_prepare_init(&loop->prepare, prepare_cb);
    ev_prepare_start(loop->ev, &loop->prepare);
    mg_worker_busy_poll_init(loop);
    loop->started = ev_time();
    return loop;
fail:
    mg_loop_free(loop);
    return NULL;
}

int mg_loop_run(mg_loop_t *loop)
{
    if (mg_worker_open_access_log(loop) != 0)
        return 1;
    mg_lrt_watch_start();
    /* before the listeners: once a client can connect, a signal an
     * operator sends finds its handler (a SIGHUP must not kill us) */
    ev_signal_init(&loop->sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&loop->sigint, on_stop_signal, SIGINT);
    ev_signal_init(&loop->sighup, on_hup, SIGHUP);
    ev_signal_init(&loop->sigquit, on_stop_signal, SIGQUIT);
    ev_signal_init(&loop->sigusr1, on_usr1, SIGUSR1);
    ev_signal_start(loop->ev, &loop->sigterm);
    ev_signal_start(loop->ev, &loop->sigint);
    ev_signal_start(loop->ev, &loop->sighup);
    ev_signal_start(loop->ev, &loop->sigquit);
    ev_signal_start(loop->ev, &loop->sigusr1);
    {
        char err[512];
        if (mg_worker_sync_listeners(loop, err, sizeof err) != 0) {
            mg_log_error("%s", err);
            return 1;
        }
    }
    if (loop->met_shm == NULL) { /* single process: a region of one slot */
        loop->met_shm = mg_met_create(1);
        loop->met_owned = 1;
        if (loop->met_shm) {
            loop->met_shm->started = ev_time();
            loop->met_shm->generation = loop->gen->id;
        }
    }
    if (loop->met_shm && loop->met == NULL)
        loop->met = &loop->met_shm->w[loop->worker_index];
    if (loop->met) {
        loop->met->pid = (int)getpid();
        loop->met->generation = loop->gen->id;
        for (int i = 0; i < loop->gen->cfg->nupstreams; i++) /* their series, at 0 */
            mg_met_upstream(loop->met, loop->gen->cfg->upstreams[i].name, MG_MET_UP_N);
    }
    mg_worker_setup_watch(loop);
    mg_log_info("moongate %s started (pid %d, worker %d, generation %u)", MG_VERSION,
                (int)getpid(), loop->worker_index, loop->gen->id);
    if (!loop->master_pid)
        mg_notify_ready(); /* listeners bound: systemd's Type=notify start ends */
    ev_run(loop->ev, 0);
    mg_log_info("stopped");
    return loop->exit_code;
}

void mg_loop_free(mg_loop_t *loop)
{
    if (loop == NULL)
        return;
    if (loop->ev) {
        for (int i = 0; i < loop->nlisteners; i++) {
            mg_srv_close(loop->listeners[i]);
            free(loop->listeners[i]);
        }
        loop->nlisteners = 0;
        mg_worker_clear_watch(loop);
        if (loop->close_tunnels)
            loop->close_tunnels(loop);
        while (loop->conns)
            mg_conn_close(loop->conns);
        mg_h2_close_all(loop);
        prepare_cb(loop->ev, &loop->prepare, 0);
        mg_gen_unref(loop->gen);
        loop->gen = NULL;
        mg_health_free(loop); /* after loop->gen went: the prepare below starts no prober */
        prepare_cb(loop->ev, &loop->prepare, 0);
        ev_signal_stop(loop->ev, &loop->sigterm);
        ev_signal_stop(loop->ev, &loop->sigint);
        ev_signal_stop(loop->ev, &loop->sighup);
        ev_signal_stop(loop->ev, &loop->sigquit);
        ev_signal_stop(loop->ev, &loop->sigusr1);
        /* Lua first: __gc handlers of bindings may stop their watchers */
        mg_lrt_close(loop->L);
        loop->L = NULL;
        prepare_cb(loop->ev, &loop->prepare, 0); /* frees the bindings' __gc deferred */
        mg_dns_free(loop->dns, 1);
        loop->dns = NULL;
        ev_loop_destroy(loop->ev);
    }
    mg_worker_close_access_log(loop);
    mg_lrt_close(loop->L);
    while (loop->free_reqs) {
        struct mg_req *r = loop->free_reqs;
        loop->free_reqs = r->next_free;
        mg_buf_free(&r->uhead);
        free(r);
    }
    mg_dns_free(loop->dns, 0);
    free(loop->script);
    if (loop->met_owned)
        mg_met_destroy(loop->met_shm);
    free(loop->scratch);
    free(loop);
}
