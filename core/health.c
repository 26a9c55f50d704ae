/* Active upstream health checks: the shared state's slots, binding a
 * generation's servers to them, and the prober (worker 0 only).
 *
 * A check uses the upstream.c transport on a pool of its own (one per
 * checked upstream, so plain or TLS exactly as requests go, host names
 * through the resolver's latest answer) and always a fresh connection: a
 * refused connect must count, and a check never takes a request's idle
 * keep-alive connection. Everything is nonblocking; one timer per upstream
 * fires every `interval`, and a check still running then (timeout longer
 * than interval) is not started twice. */
#include "health.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "upstream.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hc_up hc_up_t;

/* One server's check. */
typedef struct hc_probe {
    hc_up_t *hu;
    int s;                     /* server index in the pool */
    mg_met_health_t *slot;     /* its shared state */
    mg_upconn_t *u;            /* the check in flight, else NULL */
    char st[16];               /* the response's first bytes: "HTTP/1.1 200" */
    size_t nst;
} hc_probe_t;

/* One checked upstream. */
struct hc_up {
    const mg_cfg_upstream_t *cfg;
    mg_up_t pool;              /* the checks' own connections */
    int pool_ok;
    ev_timer tick;
    hc_probe_t *probes;        /* one per server */
    int nprobes;
    mg_loop_t *loop;
};

typedef struct mg_health {
    mg_gen_t *bound;           /* generation whose servers are bound (a reference, so the
                                * pointer compare in mg_health_sync cannot be fooled by a
                                * new generation at a freed one's address); NULL: none */
    int probing;               /* the prober runs, for `bound` */
    hc_up_t *ups;
    int nups;
} mg_health_t;

/* --- shared slots ---------------------------------------------------------- */

static uint32_t slot_hash(const char *up, const char *server)
{
    uint32_t h = 2166136261u;
    for (const char *p = up; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ 0xff) * 16777619u;
    for (const char *p = server; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

static int slot_is(const mg_met_health_t *sl, const char *up, const char *server)
{
    return strncmp(sl->upstream, up, sizeof sl->upstream - 1) == 0 &&
           strncmp(sl->server, server, sizeof sl->server - 1) == 0;
}

/* The slot of (upstream, server), claimed (state: up) if none has it yet.
 * Workers may claim at the same time: a slot goes 0 -> 1 (being filled)
 * -> 2 (ready) and everyone probes from the same hash, so one key gets one
 * slot. NULL when every slot is taken. */
static mg_met_health_t *slot_get(mg_met_shm_t *m, const char *up, const char *server)
{
    uint32_t h = slot_hash(up, server);
    for (int k = 0; k < MG_MET_HEALTH_SLOTS; k++) {
        mg_met_health_t *sl = &m->health[(h + (uint32_t)k) % MG_MET_HEALTH_SLOTS];
        uint32_t used = __atomic_load_n(&sl->used, __ATOMIC_ACQUIRE);
        if (used == 0) {
            uint32_t zero = 0;
            if (__atomic_compare_exchange_n(&sl->used, &zero, 1, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                snprintf(sl->upstream, sizeof sl->upstream, "%s", up);
                snprintf(sl->server, sizeof sl->server, "%s", server);
                __atomic_store_n(&sl->down, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&sl->used, 2, __ATOMIC_RELEASE);
                return sl;
            }
            used = __atomic_load_n(&sl->used, __ATOMIC_ACQUIRE);
        }
        /* another worker is filling it in: a few stores, wait for them
         * (bounded: a worker killed right there must not hang us) */
        for (int spin = 0; used == 1 && spin < 1000000; spin++)
            used = __atomic_load_n(&sl->used, __ATOMIC_ACQUIRE);
        if (used == 2 && slot_is(sl, up, server))
            return sl;
    }
    return NULL;
}

static mg_met_health_t *slot_of(const mg_up_server_t *sv)
{
    return (mg_met_health_t *)(void *)((char *)(uintptr_t)sv->hdown -
                                       offsetof(mg_met_health_t, down));
}

/* Points the balancer of the current generation's checked servers at
 * their shared state. */
static void bind_gen(mg_loop_t *loop)
{
    mg_gen_t *g = loop->gen;
    for (int i = 0; i < g->cfg->nupstreams; i++) {
        const mg_cfg_upstream_t *cfg = &g->cfg->upstreams[i];
        mg_up_t *up = &g->ups[i];
        if (!cfg->health.on || up->servers == NULL)
            continue;
        for (int s = 0; s < up->nservers; s++) {
            mg_met_health_t *sl = slot_get(loop->met_shm, cfg->name, cfg->servers[s].text);
            if (sl == NULL) {
                mg_log_error("upstream %s: no room for the health state of %s; it is not "
                             "checked", cfg->name, cfg->servers[s].text);
                continue;
            }
            up->servers[s].hdown = &sl->down;
            up->health = 1;
        }
    }
}

/* --- the checks -------------------------------------------------------------- */

static void probe_read(mg_upconn_t *u);
static void probe_write(mg_upconn_t *u);
static void probe_timer(mg_upconn_t *u);
static const mg_upconn_ops_t probe_ops = { probe_read, probe_write, probe_timer };

/* A check ended: its connection goes, and the result counts towards rise
 * or fall. `why` NULL: it passed. */
static void probe_done(hc_probe_t *p, const char *why)
{
    if (p->u) {
        p->u->owner = NULL;
        mg_up_conn_close(p->u);
        p->u = NULL;
    }
    mg_met_health_t *sl = p->slot;
    const mg_cfg_upstream_t *cfg = p->hu->cfg;
    double now = ev_time();
    sl->checks++;
    sl->last_check = now;
    int down = (int)__atomic_load_n(&sl->down, __ATOMIC_RELAXED);
    if (why == NULL) {
        sl->last_error[0] = '\0';
        sl->fails = 0;
        sl->oks++;
        if (down && sl->oks >= (uint32_t)cfg->health.rise) {
            __atomic_store_n(&sl->down, 0, __ATOMIC_RELAXED);
            sl->changed = now;
            mg_log_info("upstream %s: server %s is up (%u good checks)", cfg->name, sl->server,
                        sl->oks);
        }
        return;
    }
    snprintf(sl->last_error, sizeof sl->last_error, "%s", why);
    sl->oks = 0;
    sl->fails++;
    if (!down && sl->fails >= (uint32_t)cfg->health.fall) {
        __atomic_store_n(&sl->down, 1, __ATOMIC_RELAXED);
        sl->changed = now;
        mg_log_warn("upstream %s: server %s is down (%u failed checks, last: %s)", cfg->name,
                    sl->server, sl->fails, why);
    } else {
        mg_log_debug("upstream %s: health check of %s failed: %s", cfg->name, sl->server, why);
    }
}

/* Writes what is left of the check's request. */
static void probe_send(hc_probe_t *p)
{
    mg_upconn_t *u = p->u;
    while (u->wbuf.len > 0) {
        ssize_t n = mg_up_send(u, mg_buf_data(&u->wbuf), u->wbuf.len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                mg_up_want_write(u, 1);
                return;
            }
            probe_done(p, errno ? strerror(errno) : "send failed");
            return;
        }
        mg_buf_consume(&u->wbuf, (size_t)n);
    }
    mg_up_want_write(u, 0);
}

/* Connected (and TLS done): a tcp check has passed; an http one sends its
 * GET and waits for the status line. */
static void probe_connected(hc_probe_t *p)
{
    const mg_cfg_upstream_t *cfg = p->hu->cfg;
    if (cfg->health.tcp) {
        probe_done(p, NULL);
        return;
    }
    mg_upconn_t *u = p->u;
    const char *host = cfg->health.host ? cfg->health.host
                       : cfg->tls_server_name ? cfg->tls_server_name
                                              : u->server->addr->text;
    if (mg_buf_printf(&u->wbuf,
                      "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moongate-health/%s\r\n"
                      "Connection: close\r\n\r\n",
                      cfg->health.path, host, MG_VERSION) != 0) {
        probe_done(p, "out of memory");
        return;
    }
    mg_up_pause_read(u, 0);
    probe_send(p);
}

static void probe_write(mg_upconn_t *u)
{
    hc_probe_t *p = u->owner;
    if (u->connecting) {
        char err[256];
        int se;
        int rc = mg_up_connect_step(u, err, sizeof err, &se);
        if (rc == MG_EAGAIN)
            return;
        if (rc != MG_OK) {
            probe_done(p, err);
            return;
        }
        probe_connected(p);
        return;
    }
    probe_send(p);
}

static void probe_read(mg_upconn_t *u)
{
    hc_probe_t *p = u->owner;
    ssize_t n = mg_up_recv(u, p->st + p->nst, sizeof p->st - 1 - p->nst);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        probe_done(p, errno ? strerror(errno) : "read failed");
        return;
    }
    if (n == 0) {
        probe_done(p, "closed before a status line");
        return;
    }
    p->nst += (size_t)n;
    p->st[p->nst] = '\0';
    if (strncmp(p->st, "HTTP/", p->nst < 5 ? p->nst : 5) != 0) {
        probe_done(p, "not an HTTP response");
        return;
    }
    if (p->nst < 12)
        return; /* "HTTP/1.1 200" not complete yet */
    const char *c = p->st + 9;
    if (p->st[8] != ' ' || c[0] < '1' || c[0] > '5' || c[1] < '0' || c[1] > '9' ||
        c[2] < '0' || c[2] > '9') {
        probe_done(p, "not an HTTP response");
        return;
    }
    int status = (c[0] - '0') * 100 + (c[1] - '0') * 10 + (c[2] - '0');
    const mg_cfg_health_t *hc = &p->hu->cfg->health;
    if (status < hc->status_lo || status > hc->status_hi) {
        char why[48];
        snprintf(why, sizeof why, "status %d", status);
        probe_done(p, why);
        return;
    }
    probe_done(p, NULL);
}

static void probe_timer(mg_upconn_t *u)
{
    hc_probe_t *p = u->owner;
    probe_done(p, u->connecting ? "connect timed out" : "timed out");
}

static void probe_start(hc_probe_t *p)
{
    hc_up_t *hu = p->hu;
    const char *err = NULL;
    p->nst = 0;
    mg_upconn_t *u = mg_up_get(&hu->pool, p->s, p, &probe_ops, &err);
    if (u == NULL && err && strcmp(err, "host name not resolved yet") == 0)
        return; /* a name added by a reload, its first answer still out: no verdict */
    if (u == NULL) {
        probe_done(p, err ? err : "connect failed");
        return;
    }
    p->u = u;
    mg_up_arm_timer(u, hu->cfg->health.timeout);
    if (!u->connecting)
        probe_connected(p);
}

static void tick_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    hc_up_t *hu = w->data;
    for (int i = 0; i < hu->nprobes; i++)
        if (hu->probes[i].slot && hu->probes[i].u == NULL)
            probe_start(&hu->probes[i]);
}

/* --- the prober's life ------------------------------------------------------- */

static void prober_stop(mg_health_t *h, mg_loop_t *loop)
{
    for (int i = 0; i < h->nups; i++) {
        hc_up_t *hu = &h->ups[i];
        ev_timer_stop(loop->ev, &hu->tick);
        for (int k = 0; k < hu->nprobes; k++)
            if (hu->probes[k].u) {
                hu->probes[k].u->owner = NULL;
                mg_up_conn_close(hu->probes[k].u);
                hu->probes[k].u = NULL;
            }
        free(hu->probes);
        if (hu->pool_ok)
            mg_up_close(&hu->pool);
    }
    free(h->ups);
    h->ups = NULL;
    h->nups = 0;
    h->probing = 0;
}

/* Was slot checked by the prober being replaced? */
static int was_checked(const hc_up_t *ups, int nups, const mg_met_health_t *sl)
{
    for (int i = 0; i < nups; i++)
        for (int k = 0; k < ups[i].nprobes; k++)
            if (ups[i].probes[k].slot == sl)
                return 1;
    return 0;
}

/* Starts checking the current generation's upstreams; the previous
 * prober's checks end (its generation must still be alive). A server it
 * checked keeps its state; one it did not (new to the config, or its
 * checks were off) starts up. */
static void prober_start(mg_health_t *h, mg_loop_t *loop)
{
    mg_gen_t *g = loop->gen;
    hc_up_t *old = h->ups;
    int nold = h->nups, had = h->probing;
    h->ups = NULL;
    h->nups = 0;
    int n = 0;
    for (int i = 0; i < g->cfg->nupstreams; i++)
        n += g->cfg->upstreams[i].health.on;
    hc_up_t *ups = calloc((size_t)n + 1, sizeof *ups);
    if (ups == NULL) {
        mg_log_error("health checks: out of memory");
        h->ups = old;
        h->nups = nold;
        prober_stop(h, loop);
        return;
    }
    int k = 0;
    for (int i = 0; i < g->cfg->nupstreams; i++) {
        const mg_cfg_upstream_t *cfg = &g->cfg->upstreams[i];
        if (!cfg->health.on)
            continue;
        hc_up_t *hu = &ups[k++];
        hu->cfg = cfg;
        hu->loop = loop;
        ev_timer_init(&hu->tick, tick_cb, 0., cfg->health.interval);
        hu->tick.data = hu;
        hu->probes = calloc((size_t)cfg->nservers + 1, sizeof *hu->probes);
        if (hu->probes == NULL || mg_up_init(&hu->pool, loop, cfg) != MG_OK) {
            mg_log_error("upstream %s: health checks could not be set up", cfg->name);
            continue;
        }
        hu->pool_ok = 1;
        hu->nprobes = cfg->nservers;
        for (int s = 0; s < cfg->nservers; s++) {
            hc_probe_t *p = &hu->probes[s];
            p->hu = hu;
            p->s = s;
            const mg_up_server_t *sv = &g->ups[i].servers[s];
            if (sv->hdown == NULL)
                continue; /* no slot: not checked */
            p->slot = slot_of(sv);
            if (had && !was_checked(old, nold, p->slot)) {
                p->slot->fails = p->slot->oks = 0;
                p->slot->last_error[0] = '\0';
                __atomic_store_n(&p->slot->down, 0, __ATOMIC_RELAXED);
            }
        }
        ev_timer_start(loop->ev, &hu->tick);
    }
    /* the old checks end (their generation may go with them) */
    h->ups = old;
    h->nups = nold;
    prober_stop(h, loop);
    h->ups = ups;
    h->nups = n;
    h->probing = 1;
}

void mg_health_sync(mg_loop_t *loop)
{
    if (loop->gen == NULL || loop->met_shm == NULL)
        return;
    mg_health_t *h = loop->health;
    if (h == NULL && (h = loop->health = calloc(1, sizeof *h)) == NULL)
        return; /* tried again next iteration */
    int prober = loop->worker_index == 0 && !loop->stopping;
    if (h->bound != loop->gen) {
        mg_gen_t *old = h->bound;
        h->bound = loop->gen;
        mg_gen_ref(h->bound);
        bind_gen(loop);
        if (prober)
            prober_start(h, loop);
        if (old)
            mg_gen_unref(old); /* after the old checks ended: they use its config */
    }
    if (!prober && h->probing)
        prober_stop(h, loop);
}

void mg_health_free(mg_loop_t *loop)
{
    mg_health_t *h = loop->health;
    if (h == NULL)
        return;
    prober_stop(h, loop);
    if (h->bound)
        mg_gen_unref(h->bound);
    free(h);
    loop->health = NULL;
}

/* --- admin ------------------------------------------------------------------ */

/* Is server s of upstream up up? Checked servers: the shared state (the
 * same answer from every worker); others: this worker's passive view. */
static int server_up(mg_loop_t *loop, const mg_up_t *up, int s)
{
    const mg_up_server_t *sv = &up->servers[s];
    if (sv->hdown)
        return __atomic_load_n(sv->hdown, __ATOMIC_RELAXED) == 0;
    return sv->down_until <= ev_now(loop->ev);
}

void mg_health_status_json(mg_loop_t *loop, mg_buf_t *b)
{
    mg_gen_t *g = loop->gen;
    mg_buf_puts(b, "\"upstreams\":{");
    for (int i = 0; g && i < g->cfg->nupstreams; i++) {
        const mg_up_t *up = &g->ups[i];
        if (i)
            mg_buf_puts(b, ",");
        mg_buf_json_str(b, g->cfg->upstreams[i].name);
        mg_buf_puts(b, ":{\"servers\":[");
        for (int s = 0; up->servers && s < up->nservers; s++) {
            const mg_up_server_t *sv = &up->servers[s];
            mg_buf_puts(b, s ? ",{\"server\":" : "{\"server\":");
            mg_buf_json_str(b, sv->addr->text);
            mg_buf_printf(b, ",\"state\":\"%s\",\"check\":\"%s\"",
                          server_up(loop, up, s) ? "up" : "down",
                          sv->hdown ? "active" : "passive");
            if (sv->hdown) {
                const mg_met_health_t *sl = slot_of(sv);
                mg_buf_printf(b, ",\"checks\":%llu,\"fails\":%u,\"passes\":%u,\"last_check\":",
                              (unsigned long long)sl->checks, sl->fails, sl->oks);
                if (sl->last_check > 0)
                    mg_buf_printf(b, "%.3f", sl->last_check);
                else
                    mg_buf_puts(b, "null");
                mg_buf_puts(b, ",\"last_error\":");
                if (sl->last_error[0])
                    mg_buf_json_str(b, sl->last_error);
                else
                    mg_buf_puts(b, "null");
            }
            mg_buf_puts(b, "}");
        }
        mg_buf_puts(b, "]}");
    }
    mg_buf_puts(b, "}");
}

void mg_health_metrics(mg_loop_t *loop, mg_buf_t *b)
{
    mg_gen_t *g = loop->gen;
    mg_buf_puts(b, "# HELP moongate_upstream_server_up Upstream server health: 1 up, 0 down "
                   "(active checks, else passive).\n"
                   "# TYPE moongate_upstream_server_up gauge\n");
    for (int i = 0; g && i < g->cfg->nupstreams; i++) {
        const mg_up_t *up = &g->ups[i];
        for (int s = 0; up->servers && s < up->nservers; s++) {
            mg_buf_puts(b, "moongate_upstream_server_up{upstream=\"");
            mg_buf_prom_label(b, g->cfg->upstreams[i].name);
            mg_buf_puts(b, "\",server=\"");
            mg_buf_prom_label(b, up->servers[s].addr->text);
            mg_buf_printf(b, "\"} %d\n", server_up(loop, up, s));
        }
    }
}
