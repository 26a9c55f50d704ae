#include "loop.h"
#include "conn.h"
#include "cfgnames.h"
#include "dns.h"
#include "log.h"
#include "lrt.h"
#include "metrics.h"
#include "notify.h"
#include "req.h"
#include "server.h"
#include "tls.h"
#include "upstream.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
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
    if (loop->stopping)
        mg_loop_check_drained(loop);
    if (loop->met) { /* publish gauges once per iteration */
        mg_met_worker_t *w = loop->met;
        w->conns = loop->stats.conns;
        w->active = loop->stats.active;
        w->lua_mem = (int64_t)loop->lua_mem;
        w->lua_busy = loop->stats.lua_busy;
        w->tunnels = loop->stats.tunnels;
        w->up_connect_errors = loop->stats.up_connect_errors + loop->met_base[0];
        w->up_timeouts = loop->stats.up_timeouts + loop->met_base[1];
        w->up_retries = loop->stats.up_retries + loop->met_base[2];
        int64_t idle = 0;
        if (loop->gen && loop->gen->ups)
            for (int i = 0; i < loop->gen->cfg->nupstreams; i++)
                idle += loop->gen->ups[i].nidle;
        w->up_idle = idle;
    }
}

const char *mg_loop_date(mg_loop_t *loop)
{
    double now = loop->ev ? ev_now(loop->ev) : ev_time();
    long long sec = (long long)now;
    if (sec != loop->date_sec) { /* once a second, not per response */
        static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(loop->http_date, sizeof loop->http_date,
                 "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        loop->date_sec = sec;
    }
    return loop->http_date;
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
    if (g->tls) {
        for (int i = 0; i < g->cfg->nlisten; i++)
            mg_tls_ctx_free(g->tls[i]);
        free(g->tls);
    }
    for (int i = 0; i < g->nnames; i++)
        mg_dns_name_unref(g->names[i]);
    free(g->names);
    mg_cfg_free(g->cfg);
    free(g);
}

struct ssl_ctx_st *mg_gen_tls(const mg_gen_t *g, const char *addr)
{
    if (g->ntls == 0)
        return NULL;
    for (int i = 0; i < g->cfg->nlisten; i++)
        if (g->tls[i] && strcmp(g->cfg->listen[i].addr.text, addr) == 0)
            return g->tls[i];
    return NULL;
}

/* Builds the generation's TLS contexts: reads the certificates and keys
 * now, so a reload picks up renewed files and a bad one fails the load
 * (with the config line naming it) while the old generation serves on.
 * 0, or -1 with "file:line: why" in err. */
static int build_tls(mg_gen_t *g, char *err, size_t errlen)
{
    const mg_cfg_t *cfg = g->cfg;
    g->tls = calloc((size_t)cfg->nlisten + 1, sizeof *g->tls);
    if (g->tls == NULL) {
        snprintf(err, errlen, "%s:0: out of memory", cfg->file);
        return -1;
    }
    for (int i = 0; i < cfg->nlisten; i++) {
        const mg_cfg_listen_t *l = &cfg->listen[i];
        if (l->tls_cert == NULL)
            continue;
        char why[512];
        int key_at_fault = 0;
        g->tls[i] = mg_tls_ctx_new(l->tls_cert, l->tls_key, &key_at_fault, why, sizeof why);
        if (g->tls[i] == NULL) {
            snprintf(err, errlen, "%s:%d: listen[%d].tls: %s", cfg->file,
                     key_at_fault ? l->tls_key_line : l->tls_cert_line, i + 1, why);
            return -1;
        }
        g->ntls++;
    }
    return 0;
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
static void reopen_access_log(mg_loop_t *loop);

static void on_usr1(struct ev_loop *ev, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_log_reopen();
    reopen_access_log(loop);
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

/* --- listeners ------------------------------------------------------------ */

static mg_listener_t *find_listener(mg_loop_t *loop, const char *text, int admin)
{
    for (int i = 0; i < loop->nlisteners; i++)
        if (loop->listeners[i] && loop->listeners[i]->admin == admin &&
            strcmp(loop->listeners[i]->addr.text, text) == 0)
            return loop->listeners[i];
    return NULL;
}

int mg_loop_adopt_listener(mg_loop_t *loop, int fd, const mg_addr_t *addr, int admin)
{
    if (loop->nlisteners == MG_MAX_LISTENERS)
        return -1;
    mg_listener_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -1;
    mg_srv_start(loop, l, fd, addr, admin);
    loop->listeners[loop->nlisteners++] = l;
    return 0;
}

static int bind_one(mg_loop_t *loop, const mg_addr_t *addr, int admin, char *err, size_t errlen)
{
    mg_listener_t *l = find_listener(loop, addr->text, admin);
    if (l) {
        l->keep = 1;
        return 0;
    }
    /* a worker of a multi-worker gateway binds what a reload added itself,
     * next to its siblings */
    int fd = mg_srv_bind(addr, loop->inherited, err, errlen);
    if (fd < 0)
        return -1;
    if (mg_loop_adopt_listener(loop, fd, addr, admin) != 0) {
        close(fd);
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    loop->listeners[loop->nlisteners - 1]->keep = 1;
    mg_log_info("listening on %s%s", addr->text,
                admin ? " (admin)" : mg_gen_tls(loop->gen, addr->text) ? " (TLS)" : "");
    return 0;
}

/* Makes the open listeners match the current config: binds new addresses,
 * closes ones the config no longer names. Existing sockets are kept, so no
 * connection is refused across a reload. */
static int sync_listeners(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_cfg_t *cfg = loop->gen->cfg;
    for (int i = 0; i < loop->nlisteners; i++)
        loop->listeners[i]->keep = 0;
    for (int i = 0; i < cfg->nlisten; i++) {
        if (bind_one(loop, &cfg->listen[i].addr, 0, err, errlen) != 0)
            return -1;
    }
    if (cfg->has_admin && loop->worker_index == 0 &&
        bind_one(loop, &cfg->admin, 1, err, errlen) != 0)
        return -1;
    int k = 0;
    for (int i = 0; i < loop->nlisteners; i++) {
        mg_listener_t *l = loop->listeners[i];
        if (l->keep) {
            loop->listeners[k++] = l;
        } else {
            mg_log_info("no longer listening on %s", l->addr.text);
            mg_srv_close(l);
            free(l);
        }
    }
    loop->nlisteners = k;
    return 0;
}

/* --- reload --------------------------------------------------------------- */

static void setup_watch(mg_loop_t *loop);
static void add_plugin_watches(mg_loop_t *loop);
static int open_access_log(mg_loop_t *loop);

/* A reload and SIGUSR1 reopen the access log, so it can be rotated
 * (logrotate's postrotate: kill -USR1) and can move to the path the new
 * config names. The new file is opened before the old one is closed: if
 * it cannot be, lines keep going to the old one. */
static void reopen_access_log(mg_loop_t *loop)
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
    if (open_access_log(loop) != 0 && old) {
        loop->access_log = old; /* open_access_log logged why */
        loop->access_log_owned = old_owned;
        return;
    }
    if (old && old_owned && old != loop->access_log)
        fclose(old);
}

static int reload_gen(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_gen_t *old = loop->gen;
    mg_gen_ref(old);
    int rc = mg_loop_load(loop, err, errlen);
    if (rc == 0 && loop->ev && loop->nlisteners > 0 && sync_listeners(loop, err, errlen) != 0) {
        /* the new listeners cannot be had: back to the old generation */
        mg_gen_t *bad = loop->gen;
        loop->gen = old;
        mg_gen_ref(old);
        mg_gen_unref(bad);
        char ignored[256];
        sync_listeners(loop, ignored, sizeof ignored);
        rc = -1;
    }
    mg_gen_unref(old);
    double now = ev_time();
    if (rc != 0) {
        mg_log_error("reload failed, keeping generation %u: %s", loop->gen->id, err);
        if (loop->met_shm && !loop->inherited)
            mg_met_reload(loop->met_shm, 0, err, now);
        return -1;
    }
    if (loop->met_shm) {
        if (loop->inherited) {
            loop->gen->id = loop->met_shm->generation; /* the master's count */
        } else {
            loop->met_shm->generation = loop->gen->id;
            mg_met_reload(loop->met_shm, 1, NULL, now);
        }
    }
    if (loop->met)
        loop->met->generation = loop->gen->id;
    /* checked by the config walk; a failure here keeps the old error log */
    if (mg_log_configure(loop->gen->cfg->error_log, loop->gen->cfg->error_log_level, err,
                         errlen) != 0)
        mg_log_error("%s", err);
    reopen_access_log(loop);
    setup_watch(loop);
    mg_log_info("reloaded: generation %u", loop->gen->id);
    return 0;
}

int mg_loop_reload(mg_loop_t *loop, char *err, size_t errlen)
{
    /* the single process tells systemd (Type=notify) a reload is running;
     * a worker's reload is the master's to report */
    if (!loop->master_pid)
        mg_notify_reloading();
    int rc = reload_gen(loop, err, errlen);
    if (!loop->master_pid)
        mg_notify_ready();
    return rc;
}

int mg_loop_request_reload(mg_loop_t *loop, char *err, size_t errlen)
{
    if (!loop->master_pid)
        return mg_loop_reload(loop, err, errlen);
    /* The master checks the config and signals every worker; the verdict
     * shows in the metrics region (see admin.c). */
    if (kill(loop->master_pid, SIGHUP) != 0) {
        snprintf(err, errlen, "cannot signal the master: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* --- dev mode: watch = true ------------------------------------------------ */

static void watch_fire(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    char err[1024];
    mg_log_info("watch: a config or plugin file changed; reloading");
    mg_loop_request_reload(loop, err, sizeof err);
}

/* A file's identity for change detection: libev's ev_stat compares whole
 * seconds, which misses a quick same-size save, so we poll ourselves. */
static void stat_sig(const char *path, mg_watch_t *w)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        memset(&w->sig, 0, sizeof w->sig);
        return;
    }
    w->sig.ino = st.st_ino;
    w->sig.size = st.st_size;
    w->sig.sec = st.st_mtim.tv_sec;
    w->sig.nsec = st.st_mtim.tv_nsec;
}

static void watch_poll(struct ev_loop *ev, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    int changed = 0;
    for (int i = 0; i < loop->nwatch; i++) {
        mg_watch_t now = loop->watch[i];
        stat_sig(loop->watch[i].path, &now);
        if (memcmp(&now.sig, &loop->watch[i].sig, sizeof now.sig) != 0) {
            loop->watch[i].sig = now.sig;
            changed = 1;
        }
    }
    if (changed) {
        /* editors write in several steps: reload once things settle */
        ev_timer_stop(ev, &loop->watch_debounce);
        ev_timer_set(&loop->watch_debounce, 0.2, 0.);
        ev_timer_start(ev, &loop->watch_debounce);
    }
}

static void add_watch(mg_loop_t *loop, const char *path)
{
    if (loop->nwatch == MG_MAX_WATCH)
        return;
    for (int i = 0; i < loop->nwatch; i++)
        if (strcmp(loop->watch[i].path, path) == 0)
            return;
    char *copy = strdup(path);
    if (copy == NULL)
        return;
    mg_watch_t *w = &loop->watch[loop->nwatch++];
    w->path = copy;
    stat_sig(copy, w);
}

static void clear_watch(mg_loop_t *loop)
{
    for (int i = 0; i < loop->nwatch; i++)
        free(loop->watch[i].path);
    loop->nwatch = 0;
    if (loop->ev)
        ev_timer_stop(loop->ev, &loop->watch_timer);
}

/* Watches the config file and every plugin file the generation loaded.
 * Only one process watches (worker 0, or the single process). */
static void setup_watch(mg_loop_t *loop)
{
    if (loop->ev == NULL || loop->worker_index != 0 || loop->script)
        return;
    /* keep the files' last known state across the reload, so an edit
     * made while reloading is still seen */
    mg_watch_t keep[MG_MAX_WATCH];
    int nkeep = loop->nwatch;
    for (int i = 0; i < nkeep; i++) {
        keep[i] = loop->watch[i];
        keep[i].path = strdup(loop->watch[i].path);
    }
    clear_watch(loop);
    if (loop->gen->cfg->watch) {
        ev_init(&loop->watch_debounce, watch_fire);
        add_watch(loop, loop->config_file);
        for (int i = 0; i < loop->gen->cfg->nfiles; i++)
            add_watch(loop, loop->gen->cfg->files[i]);
        add_plugin_watches(loop);
        for (int i = 0; i < loop->nwatch; i++)
            for (int k = 0; k < nkeep; k++)
                if (keep[k].path && strcmp(keep[k].path, loop->watch[i].path) == 0)
                    loop->watch[i].sig = keep[k].sig;
        ev_timer_init(&loop->watch_timer, watch_poll, 0.25, 0.25);
        ev_timer_start(loop->ev, &loop->watch_timer);
    }
    for (int i = 0; i < nkeep; i++)
        free(keep[i].path);
}

static void add_plugin_watches(mg_loop_t *loop)
{
    lua_State *L = loop->L;
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_runtime");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "loaded_files");
        if (lua_istable(L, -1)) {
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_isstring(L, -1))
                    add_watch(loop, lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void drain_timeout_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_log_warn("drain_timeout reached with %d requests in flight and %d tunnels; exiting",
                loop->stats.active, loop->stats.tunnels);
    if (loop->close_tunnels)
        loop->close_tunnels(loop);
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
        /* log phases still running keep the worker up (within drain_timeout) */
        if (loop->conns == NULL && loop->stats.lua_busy == 0 && loop->stats.tunnels == 0)
            ev_break(loop->ev, EVBREAK_ALL);
    }
}

void mg_loop_stop(mg_loop_t *loop)
{
    if (loop->stopping)
        return;
    loop->stopping = 1;
    if (!loop->master_pid)
        mg_notify("STOPPING=1");
    for (int i = 0; i < loop->nlisteners; i++)
        mg_srv_close(loop->listeners[i]);
    clear_watch(loop);
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

/* Busy polling. On a virtual machine, a CPU that goes idle in epoll_wait is
 * halted, and waking it for the next packet costs tens of microseconds: at
 * low concurrency that is most of a proxied request's latency. So after an
 * iteration that had events, the loop keeps polling without sleeping for
 * `busy_poll` seconds (an idle watcher at the lowest priority: libev then
 * polls with a zero timeout), and sleeps only once that long passed with
 * nothing to do. Under load there is always something to do, so this costs
 * nothing there; an idle worker spins at most busy_poll after its last
 * event. It only spins while few requests are in flight
 * (MG_BUSY_POLL_MAX_ACTIVE): with more, events arrive often enough, and
 * polling without sleeping would only make each poll return fewer of them. */
#define MG_BUSY_POLL_MAX_ACTIVE 4

static void spin_cb(struct ev_loop *ev, ev_idle *w, int revents)
{
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    if (ev_now(ev) - loop->last_active >= loop->gen->cfg->busy_poll ||
        loop->stats.active > MG_BUSY_POLL_MAX_ACTIVE)
        ev_idle_stop(ev, w);
}

static void invoke_cb(struct ev_loop *ev)
{
    mg_loop_t *loop = mg_loop_of(ev);
    /* Only after a poll (loop->prepare is pending in the pre-poll phase):
     * events other than the spin itself mean activity. */
    if (!ev_is_pending(&loop->prepare) &&
        ev_pending_count(ev) > (ev_is_pending(&loop->spin) ? 1u : 0u)) {
        loop->last_active = ev_now(ev);
        if (!ev_is_active(&loop->spin) && loop->stats.active <= MG_BUSY_POLL_MAX_ACTIVE)
            ev_idle_start(ev, &loop->spin);
    }
    ev_invoke_pending(ev);
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
    char derr[128];
    loop->dns = mg_dns_new(loop->ev, derr, sizeof derr);
    if (loop->dns == NULL) {
        mg_log_error("%s", derr);
        goto fail;
    }
    ev_prepare_init(&loop->prepare, prepare_cb);
    ev_prepare_start(loop->ev, &loop->prepare);
    ev_idle_init(&loop->spin, spin_cb);
    ev_set_priority(&loop->spin, EV_MINPRI);
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
    if (loop->dns) {
        mg_dns_configure(loop->dns, cfg->resolver, cfg->resolver_valid);
        g->nnames = mg_cfgnames_hold_redis(loop->L, loop->dns, &g->names);
    }
    g->ups = calloc((size_t)cfg->nupstreams + 1, sizeof *g->ups);
    if (g->ups == NULL)
        goto fail;
    for (int i = 0; i < cfg->nupstreams; i++)
        if (mg_up_init(&g->ups[i], loop, &cfg->upstreams[i]) != MG_OK) {
            /* mg_up_init logged why (e.g. an unusable tls_ca) */
            snprintf(err, errlen, "%s: upstream %s could not be set up (see the log above)",
                     loop->config_file, cfg->upstreams[i].name);
            goto fail_msg;
        }
    if (build_tls(g, err, errlen) != 0) {
        mg_gen_unref(g);
        return -1;
    }
    if (loop->gen)
        mg_gen_unref(loop->gen);
    loop->gen = g;
    /* the busy-poll bookkeeping runs only when it is on (spin_cb stops a
     * spin left over from a config that had it) */
    ev_set_invoke_pending_cb(loop->ev, cfg->busy_poll > 0 ? invoke_cb : ev_invoke_pending);
    return 0;
fail:
    snprintf(err, errlen, "%s:0: out of memory", loop->config_file);
fail_msg:
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
    if (open_access_log(loop) != 0)
        return 1;
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
        if (sync_listeners(loop, err, sizeof err) != 0) {
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
        loop->met_base[0] = loop->met->up_connect_errors;
        loop->met_base[1] = loop->met->up_timeouts;
        loop->met_base[2] = loop->met->up_retries;
    }
    setup_watch(loop);
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
        clear_watch(loop);
        if (loop->close_tunnels)
            loop->close_tunnels(loop);
        while (loop->conns)
            mg_conn_close(loop->conns);
        prepare_cb(loop->ev, &loop->prepare, 0);
        mg_gen_unref(loop->gen);
        loop->gen = NULL;
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
    if (loop->access_log) {
        fflush(loop->access_log);
        if (loop->access_log_owned)
            fclose(loop->access_log);
    }
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
