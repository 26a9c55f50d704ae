/* Outgoing HTTP/1.1 exchanges on pooled upstream connections (hclient.h).
 *
 * The exchange itself (writing, parsing, the stale-connection replay) is
 * h1client.c's; this module adds origins, name lookups, the whole
 * exchange's deadline and the response size cap. Whoever ends the exchange
 * (response complete, failure, timeout, cancel) ends the h1client
 * attachment first and calls `done` last: done may resume Lua, which may
 * free hc (deferred) or start other exchanges.
 *
 * The resolver: the loop's c-ares channel (dns.h), the same one upstream
 * and Redis host names use. A lookup is a small heap object the origin
 * points at while it is in flight; its answer arrives as a callback on the
 * loop. Shutting down cancels lookups still in flight. */
#include "hclient.h"
#include "dns.h"
#include "h1client.h"
#include "log.h"
#include "loop.h"
#include "tls_client.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char mg_hc_err_timeout[] = "timeout";
const char mg_hc_err_refused[] = "connection refused";
const char mg_hc_err_invalid[] = "invalid response";
const char mg_hc_err_too_large[] = "response too large";
const char mg_hc_err_closed[] = "connection closed";
const char mg_hc_err_reset[] = "connection reset";
const char mg_hc_err_resolve[] = "could not resolve host";
const char mg_hc_err_nomem[] = "out of memory";

#define DNS_TTL 30.0          /* seconds a resolved address is used for new connections */
#define MAX_ORIGINS 256       /* above this, unused origins are dropped */

typedef struct mg_hc_origin mg_hc_origin_t;
typedef struct mg_hc_lookup mg_hc_lookup_t;

struct mg_hc_lookup {
    mg_dns_query_t *q;          /* in flight; the resolver calls lookup_cb once */
    mg_hc_ctx_t *ctx;
    mg_hc_origin_t *origin;
};

/* One origin host:port with its pool. The pool's config is synthesized
 * here and its single server address is this origin's `addr`, rewritten in
 * place when the name is resolved again (only new connections use it). */
struct mg_hc_origin {
    mg_hc_origin_t *next;
    char *host;                 /* lower-case */
    size_t host_len;
    int port;
    int tls, tls_verify;        /* part of the key, like host and port */
    int numeric;                /* address known without a lookup */
    double resolved_at;         /* ev_now of the last good lookup; 0 never */
    mg_hc_lookup_t *lookup;     /* in flight, or NULL */
    mg_hc_t *waiters;           /* exchanges waiting for the address */
    mg_addr_t addr;
    mg_cfg_upstream_t cfg;
    mg_up_t up;
};

struct mg_hc_ctx {
    mg_loop_t *loop;
    mg_hc_origin_t *origins;
    int norigins;
    mg_hc_t *live;              /* running exchanges */
    mg_tlsc_t *tls[2];          /* https contexts, [tls_verify]; made on first use */
    ev_cleanup cleanup;
    unsigned shut : 1;
};

struct mg_hc {
    mg_h1c_t x;                 /* the exchange on a pooled connection */
    mg_hc_ctx_t *ctx;           /* only used while running */
    mg_loop_t *loop;
    mg_hc_origin_t *origin;
    mg_hc_done_fn done;
    void *ud;
    mg_buf_t req;               /* the whole request, kept for a replay */
    mg_h1_head_t head;          /* the final response head */
    mg_buf_t body;
    ev_timer timer;             /* the whole exchange's deadline */
    mg_hc_t *next, *prev;       /* ctx->live */
    mg_hc_t *wnext, *wprev;     /* origin->waiters */
    mg_hc_lookup_t *lookup;     /* the lookup waited for */
    size_t max_body;
    char errbuf[256];           /* a TLS failure's text (done's err points here) */
    unsigned head_req : 1;
    unsigned running : 1;       /* started and not ended */
    unsigned freed : 1;
};

static void finish(mg_hc_t *hc, const char *err);

/* The shared https context for one verification mode, made on first use
 * (with verification that reads the system CA store once per worker). */
static mg_tlsc_t *tls_context(mg_hc_ctx_t *ctx, int verify, char *err, size_t errlen)
{
    if (ctx->tls[verify] == NULL) {
        char why[400];
        ctx->tls[verify] = mg_tlsc_new(verify, NULL, why, sizeof why);
        if (ctx->tls[verify] == NULL) {
            mg_log_error("http client: %s", why);
            snprintf(err, errlen, "tls setup failed: %.200s", why);
        }
    }
    return ctx->tls[verify];
}

/* --- lookups ------------------------------------------------------------- */

static mg_hc_t *first_waiter_of(mg_hc_origin_t *o, mg_hc_lookup_t *l)
{
    for (mg_hc_t *hc = o->waiters; hc; hc = hc->wnext)
        if (hc->lookup == l)
            return hc;
    return NULL;
}

static void waiter_unlink(mg_hc_t *hc)
{
    mg_hc_origin_t *o = hc->origin;
    if (hc->lookup == NULL)
        return;
    if (hc->wprev)
        hc->wprev->wnext = hc->wnext;
    else
        o->waiters = hc->wnext;
    if (hc->wnext)
        hc->wnext->wprev = hc->wprev;
    hc->wnext = hc->wprev = NULL;
    hc->lookup = NULL;
}

static const char *attach(mg_hc_t *hc);

/* A lookup finished: take its first address and start the exchanges that
 * waited for it. Each `done` may run Lua, which may start or cancel
 * exchanges on this origin: pick the next waiter afresh each time. */
static void lookup_cb(void *data, const mg_dns_addrs_t *a, const char *why)
{
    mg_hc_lookup_t *l = data;
    mg_hc_origin_t *o = l->origin;
    o->lookup = NULL;
    const char *err = NULL;
    if (why == NULL && a->n > 0) {
        memcpy(&o->addr.sa, &a->a[0], a->len[0]);
        o->addr.len = a->len[0];
        if (o->addr.sa.ss_family == AF_INET)
            ((struct sockaddr_in *)&o->addr.sa)->sin_port = htons((uint16_t)o->port);
        else
            ((struct sockaddr_in6 *)&o->addr.sa)->sin6_port = htons((uint16_t)o->port);
        o->resolved_at = ev_now(l->ctx->loop->ev);
    } else {
        err = mg_hc_err_resolve;
        mg_log_info("http client: cannot resolve %s: %s", o->host, why ? why : "no address");
    }
    mg_hc_t *hc;
    while ((hc = first_waiter_of(o, l)) != NULL) {
        waiter_unlink(hc);
        const char *e = err ? err : attach(hc);
        if (e)
            finish(hc, e);
    }
    free(l);
}

static const char *lookup_start(mg_hc_ctx_t *ctx, mg_hc_origin_t *o)
{
    if (ctx->loop->dns == NULL)
        return mg_hc_err_resolve;
    mg_hc_lookup_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return mg_hc_err_nomem;
    l->ctx = ctx;
    l->origin = o;
    const char *why = NULL;
    l->q = mg_dns_query(ctx->loop->dns, o->host, lookup_cb, l, &why);
    if (l->q == NULL) {
        free(l);
        mg_log_info("http client: cannot resolve %s: %s", o->host, why);
        return strcmp(why, "out of memory") == 0 ? mg_hc_err_nomem : mg_hc_err_resolve;
    }
    o->lookup = l;
    return NULL;
}

/* Cancels the origin's lookup in flight: its answer goes nowhere. */
static void lookup_cancel(mg_hc_origin_t *o)
{
    if (o->lookup == NULL)
        return;
    mg_dns_cancel(o->lookup->q);
    free(o->lookup);
    o->lookup = NULL;
}

/* --- origins -------------------------------------------------------------- */

/* Fills o->addr when the host needs no lookup. */
static void origin_numeric(mg_hc_origin_t *o)
{
    mg_addr_t *a = &o->addr;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->sa;
    const char *h = o->host;
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)o->port);
        a->len = sizeof *s4;
        o->numeric = 1;
    } else if (inet_pton(AF_INET6, h, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)o->port);
        a->len = sizeof *s6;
        o->numeric = 1;
    }
}

static int origin_unused(const mg_hc_origin_t *o)
{
    return o->up.servers[0].active == 0 && o->up.servers[0].nidle == 0 && o->lookup == NULL &&
           o->waiters == NULL;
}

static void origin_free(mg_hc_origin_t *o)
{
    lookup_cancel(o);
    mg_up_close(&o->up);
    free(o->host);
    free(o);
}

/* Drops origins nobody uses, so a plugin calling many hosts does not grow
 * the list for ever. */
static void origins_trim(mg_hc_ctx_t *ctx)
{
    for (mg_hc_origin_t **pp = &ctx->origins; *pp;) {
        mg_hc_origin_t *o = *pp;
        if (origin_unused(o)) {
            *pp = o->next;
            ctx->norigins--;
            origin_free(o);
        } else {
            pp = &o->next;
        }
    }
}

/* The origin for (tls, verify, host, port), made if needed. With tls, t is
 * the context its connections use. NULL on OOM. */
static mg_hc_origin_t *origin_get(mg_hc_ctx_t *ctx, const char *host, size_t hn, int port,
                                  mg_tlsc_t *t)
{
    int tls = t != NULL, verify = t ? mg_tlsc_verifies(t) : 0;
    for (mg_hc_origin_t *o = ctx->origins; o; o = o->next)
        if (o->port == port && o->tls == tls && o->tls_verify == verify &&
            o->host_len == hn && strncasecmp(o->host, host, hn) == 0)
            return o;
    if (ctx->norigins >= MAX_ORIGINS)
        origins_trim(ctx);
    mg_hc_origin_t *o = calloc(1, sizeof *o);
    if (o == NULL)
        return NULL;
    o->host = malloc(hn + 1);
    if (o->host == NULL)
        goto fail;
    for (size_t i = 0; i < hn; i++)
        o->host[i] = (char)tolower((unsigned char)host[i]);
    o->host[hn] = 0;
    o->host_len = hn;
    o->port = port;
    o->tls = tls;
    o->tls_verify = verify;
    snprintf(o->addr.text, sizeof o->addr.text, "%s:%d", o->host, port);
    origin_numeric(o);
    o->cfg.name = o->addr.text;
    o->cfg.servers = &o->addr;
    o->cfg.nservers = 1;
    o->cfg.balance = MG_BAL_ROUND_ROBIN;
    o->cfg.keepalive = MG_HC_KEEPALIVE;
    o->cfg.idle_timeout = MG_HC_IDLE_TIMEOUT;
    if (mg_up_init(&o->up, ctx->loop, &o->cfg) != MG_OK)
        goto fail;
    if (t && mg_up_use_tls(&o->up, t, o->host) != MG_OK) {
        mg_up_close(&o->up);
        goto fail;
    }
    o->next = ctx->origins;
    ctx->origins = o;
    ctx->norigins++;
    return o;
fail:
    free(o->host);
    free(o);
    return NULL;
}

/* --- the context ---------------------------------------------------------- */

static void live_unlink(mg_hc_t *hc)
{
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        hc->ctx->live = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    hc->next = hc->prev = NULL;
}

/* Runs the frees queued since `mark` (mg_loop_defer pushes at the head),
 * which are the ones this module's shutdown queued by closing connections:
 * the shutdown happens while the loop is being torn down, when its prepare
 * watcher may never run again. Nothing is running on those objects. */
static void run_deferred_since(mg_loop_t *loop, mg_defer_t *mark)
{
    while (loop->deferred && loop->deferred != mark) {
        mg_defer_t *d = loop->deferred;
        loop->deferred = d->next;
        d->fn(d->p);
        free(d);
    }
}

/* Everything that needs the loop: cancel exchanges, close connections,
 * stop watchers, detach the resolver. Runs from the ctx's __gc (Lua closed
 * before the loop) or from the ev_cleanup watcher (loop destroyed first),
 * whichever comes first. */
static void ctx_shutdown(mg_hc_ctx_t *ctx)
{
    if (ctx->shut)
        return;
    ctx->shut = 1;
    mg_defer_t *mark = ctx->loop->deferred;
    while (ctx->live)
        mg_hc_cancel(ctx->live);
    while (ctx->origins) {
        mg_hc_origin_t *o = ctx->origins;
        ctx->origins = o->next;
        origin_free(o);
    }
    ctx->norigins = 0;
    for (int i = 0; i < 2; i++) {
        mg_tlsc_free(ctx->tls[i]); /* after the origins: they borrow these */
        ctx->tls[i] = NULL;
    }
    ev_cleanup_stop(ctx->loop->ev, &ctx->cleanup);
    run_deferred_since(ctx->loop, mark);
}

/* The libev loop is being destroyed while the Lua state (and so the ctx)
 * still exists: shut down while watchers can still be stopped. */
static void cleanup_cb(struct ev_loop *ev, ev_cleanup *w, int revents)
{
    (void)ev;
    (void)revents;
    ctx_shutdown(w->data);
}

mg_hc_ctx_t *mg_hc_ctx_new(mg_loop_t *loop)
{
    mg_hc_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return NULL;
    ctx->loop = loop;
    ev_cleanup_init(&ctx->cleanup, cleanup_cb);
    ctx->cleanup.data = ctx;
    ev_cleanup_start(loop->ev, &ctx->cleanup);
    return ctx;
}

void mg_hc_ctx_free(mg_hc_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    ctx_shutdown(ctx);
    free(ctx);
}

/* --- the exchange: h1client callbacks -------------------------------------- */

static mg_h1_head_t *x_head_store(void *ud)
{
    mg_hc_t *hc = ud;
    return &hc->head;
}

static int x_on_head(void *ud, mg_h1_head_t *h)
{
    mg_hc_t *hc = ud;
    if (h->status < 100 || h->status == 101) {
        mg_h1c_reason(&hc->x, MG_H1C_INVALID, "switching protocols"); /* we never ask to */
        return -1;
    }
    if (hc->head_req)
        return 1;
    if ((h->flags & MG_H1_HAS_CL) && h->content_length > hc->max_body) {
        mg_h1c_reason(&hc->x, MG_H1C_TOO_LARGE, "response too large");
        return -1;
    }
    return 0;
}

static int x_on_body(void *ud, const char *p, size_t n)
{
    mg_hc_t *hc = ud;
    if (hc->body.len + n > hc->max_body) {
        mg_h1c_reason(&hc->x, MG_H1C_TOO_LARGE, "response too large");
        return -1;
    }
    if (mg_buf_append(&hc->body, p, n) != MG_OK) {
        mg_h1c_reason(&hc->x, MG_H1C_NOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* Ends the exchange. `done` runs last: nothing touches hc afterwards. */
static void finish(mg_hc_t *hc, const char *err)
{
    mg_loop_t *loop = hc->ctx->loop;
    ev_timer_stop(loop->ev, &hc->timer);
    waiter_unlink(hc);
    live_unlink(hc);
    hc->running = 0;
    hc->done(hc, hc->ud, err);
}

static void x_on_done(void *ud)
{
    finish(ud, NULL);
}

/* The texts callers compare with (hclient.h); a TLS failure keeps the
 * library's reason. */
static const char *err_text(mg_hc_t *hc, const mg_h1c_error_t *e)
{
    switch (e->code) {
    case MG_H1C_TIMEOUT:
        return mg_hc_err_timeout;
    case MG_H1C_REFUSED:
        return mg_hc_err_refused;
    case MG_H1C_INVALID:
        return mg_hc_err_invalid;
    case MG_H1C_TOO_LARGE:
        return mg_hc_err_too_large;
    case MG_H1C_CLOSED:
        return mg_hc_err_closed;
    case MG_H1C_RESET:
        return mg_hc_err_reset;
    case MG_H1C_NOMEM:
        return mg_hc_err_nomem;
    case MG_H1C_TLS:
        snprintf(hc->errbuf, sizeof hc->errbuf, "%s", e->why);
        return hc->errbuf;
    default:
        return mg_h1c_strerror(e->code);
    }
}

static void x_on_error(void *ud, const mg_h1c_error_t *e)
{
    mg_hc_t *hc = ud;
    mg_h1c_cancel(&hc->x); /* no retry elsewhere: an origin has one address */
    finish(hc, err_text(hc, e));
}

static const mg_h1c_cbs_t x_cbs = {
    .head_store = x_head_store,
    .on_head = x_on_head,
    .on_body = x_on_body,
    .on_done = x_on_done,
    .on_error = x_on_error,
};

static void deadline_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_hc_t *hc = w->data;
    mg_h1c_cancel(&hc->x); /* never returned to the pool */
    finish(hc, mg_hc_err_timeout);
}

/* Puts the exchange on a connection of its origin (idle or new). The bytes
 * go out when the socket is writable, so nothing fails synchronously
 * except creating the socket or an immediately refused connect. */
static const char *attach(mg_hc_t *hc)
{
    mg_hc_origin_t *o = hc->origin;
    const char *e = NULL;
    mg_buf_reset(&hc->body);
    int rc = mg_h1c_attach(&hc->x, &o->up, 0, &e);
    if (rc == MG_OK)
        return NULL;
    if (rc == MG_ENOMEM)
        return mg_hc_err_nomem;
    if (hc->x.code == MG_H1C_REFUSED)
        return mg_hc_err_refused;
    mg_log_info("http client: connect to %s: %s", o->addr.text, e ? e : "?");
    return mg_h1c_strerror(hc->x.code);
}

/* --- the exchange: API ------------------------------------------------------ */

mg_hc_t *mg_hc_new(mg_hc_ctx_t *ctx)
{
    mg_hc_t *hc = calloc(1, sizeof *hc);
    if (hc == NULL)
        return NULL;
    hc->ctx = ctx;
    hc->loop = ctx->loop;
    ev_init(&hc->timer, deadline_cb);
    hc->timer.data = hc;
    return hc;
}

mg_buf_t *mg_hc_request(mg_hc_t *hc)
{
    return &hc->req;
}

static int need_lookup(const mg_hc_ctx_t *ctx, const mg_hc_origin_t *o)
{
    if (o->numeric || o->up.servers[0].idle)
        return 0;
    return o->resolved_at == 0 || ev_now(ctx->loop->ev) - o->resolved_at > DNS_TTL;
}

const char *mg_hc_start(mg_hc_t *hc, const mg_hc_opts_t *o, mg_hc_done_fn done, void *ud)
{
    mg_hc_ctx_t *ctx = hc->ctx;
    if (ctx->shut)
        return mg_hc_err_closed;
    mg_tlsc_t *t = NULL;
    if (o->tls) {
        t = tls_context(ctx, o->tls_verify ? 1 : 0, hc->errbuf, sizeof hc->errbuf);
        if (t == NULL)
            return hc->errbuf;
    }
    mg_hc_origin_t *origin = origin_get(ctx, o->host, o->host_len, o->port, t);
    if (origin == NULL)
        return mg_hc_err_nomem;
    hc->origin = origin;
    hc->done = done;
    hc->ud = ud;
    hc->head_req = o->head ? 1 : 0;
    hc->max_body = o->max_body;
    /* the whole request is in hc->req; where its head ends matters only
     * when a replay is considered */
    mg_h1c_init(&hc->x, &x_cbs, hc, &hc->req, MG_H1C_FIND_HEAD, 1);
    hc->x.idempotent = o->idempotent ? 1 : 0;
    const char *err;
    if (!need_lookup(ctx, origin)) {
        err = attach(hc);
    } else if (origin->lookup) {
        err = NULL;
    } else {
        err = lookup_start(ctx, origin);
    }
    if (err)
        return err;
    if (hc->x.u == NULL) {
        hc->lookup = origin->lookup;
        hc->wnext = origin->waiters;
        if (hc->wnext)
            hc->wnext->wprev = hc;
        origin->waiters = hc;
    }
    hc->running = 1;
    hc->next = ctx->live;
    if (hc->next)
        hc->next->prev = hc;
    ctx->live = hc;
    ev_timer_set(&hc->timer, o->timeout, 0.);
    ev_timer_start(ctx->loop->ev, &hc->timer);
    return NULL;
}

void mg_hc_cancel(mg_hc_t *hc)
{
    if (hc == NULL || !hc->running)
        return;
    ev_timer_stop(hc->loop->ev, &hc->timer);
    mg_h1c_cancel(&hc->x); /* a half-read response never goes back to the pool */
    waiter_unlink(hc);
    live_unlink(hc);
    hc->running = 0;
}

static void hc_free_now(void *p)
{
    mg_hc_t *hc = p;
    mg_buf_free(&hc->x.carry);
    mg_buf_free(&hc->req);
    mg_buf_free(&hc->body);
    mg_h1_head_free(&hc->head);
    free(hc);
}

void mg_hc_free(mg_hc_t *hc)
{
    if (hc == NULL || hc->freed)
        return;
    mg_hc_cancel(hc);
    hc->freed = 1;
    mg_loop_defer(hc->loop, hc_free_now, hc);
}

const mg_h1_head_t *mg_hc_head(const mg_hc_t *hc)
{
    return &hc->head;
}

const mg_buf_t *mg_hc_body(const mg_hc_t *hc)
{
    return &hc->body;
}
