#include "loop.h"
#include "conn.h"
#include "log.h"
#include "lrt.h"
#include "server.h"
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>

#define SCRATCH_BYTES (64 * 1024)

static void prepare_cb(struct ev_loop *ev, ev_prepare *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    /* Free what callbacks retired. A free function may defer more. */
    while (loop->deferred) {
        mg_defer_t *d = loop->deferred;
        loop->deferred = NULL;
        while (d) {
            mg_defer_t *next = d->next;
            d->fn(d->p);
            free(d);
            d = next;
        }
    }
    if (loop->access_log)
        fflush(loop->access_log);
}

void mg_loop_defer(mg_loop_t *loop, void (*fn)(void *), void *p)
{
    mg_defer_t *d = malloc(sizeof *d);
    if (d == NULL) {
        /* cannot defer: leak rather than free under a running callback */
        mg_log_error("out of memory deferring a free");
        return;
    }
    d->fn = fn;
    d->p = p;
    d->next = loop->deferred;
    loop->deferred = d;
}

void mg_gen_ref(mg_gen_t *g)
{
    g->refs++;
}

void mg_gen_unref(mg_gen_t *g)
{
    if (g == NULL || --g->refs > 0)
        return;
    if (g->ups) {
        for (int i = 0; i < g->cfg->nupstreams; i++)
            mg_up_close(&g->ups[i]);
        free(g->ups);
    }
    mg_cfg_free(g->cfg);
    free(g);
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

static void on_hup(struct ev_loop *ev, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    char err[1024];
    if (mg_loop_load(loop, err, sizeof err) != 0)
        mg_log_error("reload failed, keeping generation %u: %s", loop->gen->id, err);
    else
        mg_log_info("reloaded: generation %u", loop->gen->id);
}

static void drain_timeout_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_log_warn("drain_timeout reached with %d requests in flight; exiting", loop->stats.active);
    ev_break(ev, EVBREAK_ALL);
}

void mg_loop_check_drained(mg_loop_t *loop)
{
    if (loop->stopping && loop->stats.active == 0) {
        /* close connections that finished their last request */
        mg_conn_t *c = loop->conns;
        while (c) {
            mg_conn_t *next = c->next;
            mg_conn_close_idle(c);
            c = next;
        }
        if (loop->conns == NULL || loop->stats.active == 0) {
            if (loop->conns == NULL)
                ev_break(loop->ev, EVBREAK_ALL);
        }
    }
}

void mg_loop_stop(mg_loop_t *loop)
{
    if (loop->stopping)
        return;
    loop->stopping = 1;
    for (int i = 0; i < loop->nlisteners; i++)
        mg_srv_close(&loop->listeners[i]);
    mg_conn_t *c = loop->conns;
    while (c) {
        mg_conn_t *next = c->next;
        mg_conn_close_idle(c);
        c = next;
    }
    ev_timer_init(&loop->drain_timer, drain_timeout_cb, loop->gen->cfg->limits.drain_timeout, 0.);
    ev_timer_start(loop->ev, &loop->drain_timer);
    mg_loop_check_drained(loop);
}

mg_loop_t *mg_loop_new(const char *config_file)
{
    mg_loop_t *loop = calloc(1, sizeof *loop);
    if (loop == NULL)
        return NULL;
    loop->config_file = config_file;
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
    ev_prepare_init(&loop->prepare, prepare_cb);
    ev_prepare_start(loop->ev, &loop->prepare);
    loop->started = ev_time();
    return loop;
fail:
    mg_loop_free(loop);
    return NULL;
}

int mg_loop_load(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_cfg_t *cfg = mg_cfg_load(loop->L, loop->config_file, err, errlen);
    if (cfg == NULL)
        return -1;
    mg_gen_t *g = calloc(1, sizeof *g);
    if (g == NULL)
        goto fail;
    g->cfg = cfg;
    g->loop = loop;
    g->refs = 1;
    g->id = ++loop->next_gen_id;
    g->ups = calloc((size_t)cfg->nupstreams + 1, sizeof *g->ups);
    if (g->ups == NULL)
        goto fail;
    for (int i = 0; i < cfg->nupstreams; i++)
        if (mg_up_init(&g->ups[i], loop, &cfg->upstreams[i]) != MG_OK)
            goto fail;
    if (loop->gen)
        mg_gen_unref(loop->gen);
    loop->gen = g;
    return 0;
fail:
    snprintf(err, errlen, "%s:0: out of memory", loop->config_file);
    if (g) {
        g->refs = 1;
        mg_gen_unref(g);
    } else {
        mg_cfg_free(cfg);
    }
    return -1;
}

static int open_access_log(mg_loop_t *loop)
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

int mg_loop_run(mg_loop_t *loop)
{
    mg_cfg_t *cfg = loop->gen->cfg;
    if (open_access_log(loop) != 0)
        return 1;
    loop->listeners = calloc((size_t)cfg->nlisten, sizeof *loop->listeners);
    if (loop->listeners == NULL)
        return 1;
    for (int i = 0; i < cfg->nlisten; i++) {
        char err[256];
        if (cfg->listen[i].tls_cert) {
            mg_log_error("%s: listen[%d] %s: TLS listeners are not supported yet", cfg->file,
                         i + 1, cfg->listen[i].addr.text);
            return 1;
        }
        int fd = mg_srv_bind(&cfg->listen[i].addr, err, sizeof err);
        if (fd < 0) {
            mg_log_error("%s", err);
            return 1;
        }
        mg_srv_start(loop, &loop->listeners[loop->nlisteners++], fd, &cfg->listen[i].addr);
        mg_log_info("listening on %s", cfg->listen[i].addr.text);
    }
    ev_signal_init(&loop->sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&loop->sigint, on_stop_signal, SIGINT);
    ev_signal_init(&loop->sighup, on_hup, SIGHUP);
    ev_signal_start(loop->ev, &loop->sigterm);
    ev_signal_start(loop->ev, &loop->sigint);
    ev_signal_start(loop->ev, &loop->sighup);
    mg_log_info("moongate %s started (pid %d, generation %u)", MG_VERSION, (int)getpid(),
                loop->gen->id);
    ev_run(loop->ev, 0);
    mg_log_info("stopped");
    return loop->exit_code;
}

void mg_loop_free(mg_loop_t *loop)
{
    if (loop == NULL)
        return;
    if (loop->ev) {
        for (int i = 0; i < loop->nlisteners; i++)
            mg_srv_close(&loop->listeners[i]);
        while (loop->conns)
            mg_conn_close(loop->conns);
        prepare_cb(loop->ev, &loop->prepare, 0);
        mg_gen_unref(loop->gen);
        loop->gen = NULL;
        prepare_cb(loop->ev, &loop->prepare, 0);
        ev_signal_stop(loop->ev, &loop->sigterm);
        ev_signal_stop(loop->ev, &loop->sigint);
        ev_signal_stop(loop->ev, &loop->sighup);
        ev_loop_destroy(loop->ev);
    }
    if (loop->access_log) {
        fflush(loop->access_log);
        if (loop->access_log_owned)
            fclose(loop->access_log);
    }
    mg_lrt_close(loop->L);
    free(loop->script);
    free(loop->listeners);
    free(loop->scratch);
    free(loop);
}
