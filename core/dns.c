/* c-ares on libev (dns.h).
 *
 * c-ares tells us which sockets it wants watched through its socket-state
 * callback; each gets an ev_io (a small list: c-ares uses one socket per
 * name server, more only for TCP fallback). Its next timeout comes from
 * ares_timeout after every call into it and drives one ev_timer, whose
 * callback lets c-ares process timeouts (ares_process_fd with no fd).
 *
 * Tickets: c-ares cannot cancel one query, so each query carries a heap
 * ticket; cancelling clears the ticket's callback and the ticket is freed
 * when c-ares answers. Kept names hold their in-flight ticket; a name
 * freed while resolving detaches it the same way. */
#include "dns.h"
#include "log.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef struct dns_sock {
    ev_io io;
    mg_dns_t *d;
    int fd;
    struct dns_sock *next;
} dns_sock_t;

struct mg_dns_query {
    mg_dns_t *d;
    mg_dns_fn fn;            /* NULL once cancelled */
    void *data;
    unsigned starting : 1;   /* inside mg_dns_query: an answer now must wait */
};

typedef struct deferred {
    ev_timer t;
    mg_dns_query_t *outer;   /* the caller's ticket */
    mg_dns_addrs_t a;
    char err[96];
    int failed;
    struct deferred *next;
} deferred_t;

static void outer_answer(void *data, const mg_dns_addrs_t *a, const char *err);

struct mg_dns_name {
    mg_dns_t *d;
    char *host;
    int refs;
    mg_dns_addrs_t addrs;    /* the last good answer */
    unsigned rr;
    unsigned gen;            /* answers that changed addrs */
    double resolved_at;      /* ev_now of the last good answer; 0: none yet */
    double idle_since;       /* refs fell to 0 then: forgotten after LINGER valid periods */
    unsigned tried : 1;      /* one answer (good or not) came back */
    mg_dns_query_t *q;       /* in flight */
    char err[96];            /* the last failure */
    struct mg_dns_name *next;
};

struct mg_dns {
    struct ev_loop *ev;
    ares_channel ch;
    pid_t pid;               /* the process the channel belongs to */
    dns_sock_t *socks;
    ev_timer tmo;            /* c-ares's own timeouts */
    ev_timer refresh;        /* re-resolves kept names every `valid` s */
    double valid;
    char *servers;           /* configured name servers, or NULL */
    int servers_dirty;       /* not applied yet (queries were in flight) */
    mg_dns_name_t *names;
    struct deferred *deferred; /* answers parked until the next loop iteration */
    int inflight;            /* tickets c-ares holds */
    unsigned closing : 1;    /* destroying the channel: callbacks only free */
    unsigned loop_alive : 1;
    unsigned refresh_on : 1;
};

static void arm_timeout(mg_dns_t *d)
{
    if (!d->loop_alive || d->closing)
        return;
    struct timeval tv, *t = ares_timeout(d->ch, NULL, &tv);
    ev_timer_stop(d->ev, &d->tmo);
    if (t == NULL)
        return;
    ev_timer_set(&d->tmo, (double)t->tv_sec + (double)t->tv_usec / 1e6 + 1e-4, 0.);
    ev_timer_start(d->ev, &d->tmo);
}

static void sock_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    dns_sock_t *s = w->data;
    mg_dns_t *d = s->d;
    int fd = s->fd;
    /* may close the socket: the state callback then frees s */
    ares_process_fd(d->ch, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_timeout(d);
}

static void tmo_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_dns_t *d = w->data;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timeout(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    mg_dns_t *d = data;
    dns_sock_t **pp = &d->socks, *s;
    while ((s = *pp) != NULL && s->fd != fd)
        pp = &s->next;
    if (!readable && !writable) {
        if (s) {
            if (d->loop_alive)
                ev_io_stop(d->ev, &s->io);
            *pp = s->next;
            free(s);
        }
        return;
    }
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL) {
            mg_log_error("dns: out of memory watching a socket");
            return; /* the query times out */
        }
        s->d = d;
        s->fd = fd;
        s->next = d->socks;
        d->socks = s;
        ev_io_init(&s->io, sock_cb, fd, 0);
        s->io.data = s;
    }
    if (!d->loop_alive)
        return;
    ev_io_stop(d->ev, &s->io);
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(d->ev, &s->io);
}

static int chan_open(mg_dns_t *d, char *err, size_t errlen)
{
    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = d;
    o.timeout = 2000; /* ms per try; c-ares's default 5 s is long for a gateway */
    o.tries = 2;
    int rc = ares_init_options(&d->ch, &o,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "dns: %s", ares_strerror(rc));
        return -1;
    }
    d->pid = getpid();
    d->servers_dirty = d->servers != NULL;
    return 0;
}

/* Destroys the channel: in-flight tickets are answered with
 * ARES_EDESTRUCTION and only freed (closing). Kept names forget their
 * query. */
static void chan_close(mg_dns_t *d)
{
    if (d->ch == NULL)
        return;
    d->closing = 1;
    ares_destroy(d->ch); /* runs the callbacks; closes the sockets (state cb) */
    d->ch = NULL;
    d->closing = 0;
    for (mg_dns_name_t *n = d->names; n; n = n->next)
        n->q = NULL;
    while (d->socks) { /* c-ares told us about every close; just in case */
        dns_sock_t *s = d->socks;
        d->socks = s->next;
        if (d->loop_alive)
            ev_io_stop(d->ev, &s->io);
        free(s);
    }
    if (d->loop_alive)
        ev_timer_stop(d->ev, &d->tmo);
}

static void apply_servers(mg_dns_t *d)
{
    if (!d->servers_dirty || d->inflight > 0)
        return;
    int rc = ares_set_servers_ports_csv(d->ch, d->servers ? d->servers : "");
    if (rc != ARES_SUCCESS && d->servers)
        mg_log_warn("dns: resolver %s: %s", d->servers, ares_strerror(rc));
    d->servers_dirty = 0;
}

/* After a fork the parent's channel (and its sockets) must not be shared:
 * the child makes its own. 0, or -1 (logged). */
static int own_channel(mg_dns_t *d)
{
    if (d->ch != NULL && d->pid == getpid())
        return 0;
    chan_close(d);
    char err[128];
    if (chan_open(d, err, sizeof err) != 0) {
        mg_log_error("%s", err);
        return -1;
    }
    if (d->servers) {
        d->servers_dirty = 1;
        apply_servers(d);
    }
    return 0;
}

mg_dns_t *mg_dns_new(struct ev_loop *ev, char *err, size_t errlen)
{
    mg_dns_t *d = calloc(1, sizeof *d);
    if (d == NULL) {
        snprintf(err, errlen, "dns: out of memory");
        return NULL;
    }
    d->ev = ev;
    d->loop_alive = 1;
    d->valid = MG_DNS_VALID_DEFAULT;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "dns: %s", ares_strerror(rc));
        free(d);
        return NULL;
    }
    ev_init(&d->tmo, tmo_cb);
    d->tmo.data = d;
    if (chan_open(d, err, errlen) != 0) {
        ares_library_cleanup();
        free(d);
        return NULL;
    }
    return d;
}

static void name_free(mg_dns_name_t *n)
{
    if (n->q)
        n->q->fn = NULL; /* the ticket frees itself when c-ares answers */
    free(n->host);
    free(n);
}

void mg_dns_free(mg_dns_t *d, int loop_alive)
{
    if (d == NULL)
        return;
    d->loop_alive = loop_alive ? 1 : 0;
    if (d->refresh_on && d->loop_alive) {
        ev_ref(d->ev);
        ev_timer_stop(d->ev, &d->refresh);
    }
    chan_close(d);
    while (d->deferred) {
        deferred_t *df = d->deferred;
        d->deferred = df->next;
        if (d->loop_alive)
            ev_timer_stop(d->ev, &df->t);
        free(df->outer);
        free(df);
    }
    while (d->names) {
        mg_dns_name_t *n = d->names;
        d->names = n->next;
        name_free(n);
    }
    free(d->servers);
    free(d);
    ares_library_cleanup();
}

static void refresh_cb(struct ev_loop *ev, ev_timer *w, int revents);

int mg_dns_configure(mg_dns_t *d, const char *servers, double valid)
{
    if (valid > 0 && valid != d->valid) {
        d->valid = valid;
        if (d->refresh_on && d->loop_alive) {
            d->refresh.repeat = valid;
            ev_timer_again(d->ev, &d->refresh);
        }
    }
    if ((servers == NULL) != (d->servers == NULL) ||
        (servers && strcmp(servers, d->servers) != 0)) {
        char *copy = servers ? strdup(servers) : NULL;
        if (servers && copy == NULL)
            return -1;
        free(d->servers);
        d->servers = copy;
        d->servers_dirty = 1;
        if (own_channel(d) != 0)
            return -1;
        apply_servers(d);
    }
    return 0;
}

/* c-ares's answer to one ticket. */
static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    mg_dns_query_t *q = arg;
    mg_dns_t *d = q->d;
    d->inflight--;
    if (q->fn == NULL || d->closing) {
        if (q->fn == outer_answer)
            free(q->data); /* a one-off query's own ticket: nobody will be told */
        ares_freeaddrinfo(res);
        free(q);
        return;
    }
    mg_dns_addrs_t a;
    a.n = 0;
    const char *err = NULL;
    if (status == ARES_SUCCESS && res) {
        for (struct ares_addrinfo_node *nd = res->nodes; nd && a.n < MG_DNS_MAX_ADDRS;
             nd = nd->ai_next) {
            if ((nd->ai_family != AF_INET && nd->ai_family != AF_INET6) ||
                nd->ai_addrlen > sizeof a.a[0])
                continue;
            int dup = 0; /* c-ares lists an address once per socket type */
            for (int i = 0; i < a.n; i++)
                dup |= a.len[i] == (socklen_t)nd->ai_addrlen &&
                       memcmp(&a.a[i], nd->ai_addr, nd->ai_addrlen) == 0;
            if (dup)
                continue;
            memset(&a.a[a.n], 0, sizeof a.a[0]);
            memcpy(&a.a[a.n], nd->ai_addr, nd->ai_addrlen);
            a.len[a.n++] = (socklen_t)nd->ai_addrlen;
        }
        if (a.n == 0)
            err = "no addresses";
    } else {
        err = ares_strerror(status);
    }
    ares_freeaddrinfo(res);
    mg_dns_fn fn = q->fn;
    void *data = q->data;
    free(q);
    fn(data, &a, err);
    apply_servers(d);
}

/* Sends the query. The callback may run inside ares_getaddrinfo (an
 * /etc/hosts hit, or a bad name): the ticket is handed back first. */
static mg_dns_query_t *start(mg_dns_t *d, const char *host, mg_dns_fn fn, void *data)
{
    if (own_channel(d) != 0)
        return NULL;
    mg_dns_query_t *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->d = d;
    q->fn = fn;
    q->data = data;
    struct ares_addrinfo_hints h;
    memset(&h, 0, sizeof h);
    h.ai_family = AF_UNSPEC;
    h.ai_socktype = SOCK_STREAM;
    d->inflight++;
    ares_getaddrinfo(d->ch, host, NULL, &h, on_answer, q);
    arm_timeout(d);
    return q;
}

/* --- one-off queries: answered from the loop, never inside the call ------- */

static void deliver_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    deferred_t *df = w->data;
    mg_dns_t *d = df->outer->d;
    for (deferred_t **pp = &d->deferred; *pp; pp = &(*pp)->next)
        if (*pp == df) {
            *pp = df->next;
            break;
        }
    mg_dns_query_t *q = df->outer;
    if (q->fn)
        q->fn(q->data, &df->a, df->failed ? df->err : NULL);
    free(q);
    free(df);
}

/* The inner answer. Normally the caller is told at once; an answer that
 * came inside mg_dns_query itself (c-ares answers /etc/hosts names and bad
 * names synchronously) is parked on a zero timer, so the caller's
 * callback never runs before mg_dns_query returned. */
static void outer_answer(void *data, const mg_dns_addrs_t *a, const char *err)
{
    mg_dns_query_t *q = data;
    mg_dns_t *d = q->d;
    if (!q->starting) {
        if (q->fn)
            q->fn(q->data, a, err);
        free(q);
        return;
    }
    deferred_t *df = calloc(1, sizeof *df);
    if (df == NULL) {
        if (q->fn)
            q->fn(q->data, a, "out of memory");
        free(q);
        return;
    }
    df->outer = q;
    df->a = *a;
    if (err) {
        df->failed = 1;
        snprintf(df->err, sizeof df->err, "%s", err);
    }
    ev_timer_init(&df->t, deliver_cb, 0., 0.);
    df->t.data = df;
    ev_timer_start(d->ev, &df->t);
    df->next = d->deferred;
    d->deferred = df;
}

mg_dns_query_t *mg_dns_query(mg_dns_t *d, const char *host, mg_dns_fn fn, void *data,
                             const char **err)
{
    mg_dns_query_t *q = calloc(1, sizeof *q);
    if (q == NULL) {
        *err = "out of memory";
        return NULL;
    }
    q->d = d;
    q->fn = fn;
    q->data = data;
    q->starting = 1;
    if (start(d, host, outer_answer, q) == NULL) {
        free(q);
        *err = "resolver unavailable";
        return NULL;
    }
    q->starting = 0; /* answered already: parked, and q is still alive until delivered */
    return q;
}

void mg_dns_cancel(mg_dns_query_t *q)
{
    if (q)
        q->fn = NULL;
}

/* --- kept names ------------------------------------------------------------- */

static void fmt_addr(const struct sockaddr_storage *a, char *out, size_t n)
{
    const void *p = a->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)a)->sin_addr
                                            : (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr;
    if (inet_ntop(a->ss_family, p, out, (socklen_t)n) == NULL)
        snprintf(out, n, "?");
}

static void name_answer(void *data, const mg_dns_addrs_t *a, const char *err)
{
    mg_dns_name_t *n = data;
    n->q = NULL;
    n->tried = 1;
    if (err) {
        snprintf(n->err, sizeof n->err, "cannot resolve \"%s\": %s", n->host, err);
        if (n->addrs.n)
            mg_log_warn("dns: %s; keeping the last addresses", n->err);
        else
            mg_log_warn("dns: %s", n->err);
        return;
    }
    int changed = a->n != n->addrs.n;
    for (int i = 0; !changed && i < a->n; i++)
        changed = a->len[i] != n->addrs.len[i] || memcmp(&a->a[i], &n->addrs.a[i], a->len[i]);
    if (changed && mg_log_enabled(MG_LOG_INFO)) {
        char first[64];
        fmt_addr(&a->a[0], first, sizeof first);
        mg_log_info("dns: %s is %s%s", n->host, first, a->n > 1 ? " (and more)" : "");
    }
    if (changed)
        n->gen++;
    n->addrs = *a;
    n->err[0] = 0;
    n->resolved_at = ev_now(n->d->ev);
}

static void name_start(mg_dns_name_t *n)
{
    if (n->q)
        return;
    n->q = start(n->d, n->host, name_answer, n);
    if (n->q == NULL && n->err[0] == 0)
        snprintf(n->err, sizeof n->err, "cannot resolve \"%s\": resolver unavailable", n->host);
}

#define LINGER 4 /* refresh periods an unused name is kept (reloads, lazy pools) */

static void refresh_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_dns_t *d = w->data;
    apply_servers(d);
    double now = ev_now(ev);
    for (mg_dns_name_t **pp = &d->names; *pp;) {
        mg_dns_name_t *n = *pp;
        if (n->refs == 0 && now - n->idle_since > LINGER * d->valid) {
            *pp = n->next;
            name_free(n);
            continue;
        }
        name_start(n);
        pp = &n->next;
    }
}

mg_dns_name_t *mg_dns_name(mg_dns_t *d, const char *host)
{
    for (mg_dns_name_t *n = d->names; n; n = n->next)
        if (strcasecmp(n->host, host) == 0) {
            n->refs++;
            return n;
        }
    mg_dns_name_t *n = calloc(1, sizeof *n);
    if (n == NULL || (n->host = strdup(host)) == NULL) {
        free(n);
        return NULL;
    }
    n->d = d;
    n->refs = 1;
    n->next = d->names;
    d->names = n;
    if (!d->refresh_on && d->loop_alive) {
        /* kept names are refreshed while the loop runs for other reasons:
         * the timer alone does not keep it running */
        ev_timer_init(&d->refresh, refresh_cb, d->valid, d->valid);
        d->refresh.data = d;
        ev_timer_start(d->ev, &d->refresh);
        ev_unref(d->ev);
        d->refresh_on = 1;
    }
    name_start(n);
    return n;
}

void mg_dns_name_unref(mg_dns_name_t *n)
{
    if (n == NULL || --n->refs > 0)
        return;
    /* kept a while: the next generation or a lazily made pool asks again */
    n->idle_since = n->d->loop_alive ? ev_now(n->d->ev) : 0;
}

int mg_dns_name_addr(mg_dns_name_t *n, int port, struct sockaddr_storage *out, socklen_t *len,
                     const char **err)
{
    if (n->addrs.n == 0) {
        if (n->q == NULL)
            name_start(n); /* failed so far, or its query was lost with a fork's channel:
                            * try again now, answer this one with the failure */
        *err = n->err[0] ? n->err : "host name not resolved yet";
        return -1;
    }
    int i = (int)(n->rr++ % (unsigned)n->addrs.n);
    *out = n->addrs.a[i];
    *len = n->addrs.len[i];
    if (out->ss_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)port);
    return 0;
}

unsigned mg_dns_name_gen(const mg_dns_name_t *n)
{
    return n->gen;
}

const char *mg_dns_name_host(const mg_dns_name_t *n)
{
    return n->host;
}

int mg_dns_pending(const mg_dns_t *d)
{
    int k = 0;
    for (const mg_dns_name_t *n = d->names; n; n = n->next)
        k += !n->tried;
    return k;
}

void mg_dns_settle(mg_dns_t *d, double timeout)
{
    double until = ev_time() + timeout;
    while (mg_dns_pending(d) > 0 && ev_time() < until && d->inflight > 0)
        ev_run(d->ev, EVRUN_ONCE);
}
