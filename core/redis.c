/* Redis pools on hiredis async + our libev adapter, redis_ev.c (see redis.h).
 *
 * Lifetimes. A connection (mg_rds_conn_t) lives as long as its hiredis
 * context, plus until the last of its reply callbacks has run: when a
 * connect fails, hiredis calls on_connect(ERR) *before* it fires the pending
 * callbacks with NULL, so the connection is freed by whichever comes last.
 * When an established connection goes away, hiredis fires the callbacks
 * first and on_disconnect last, which frees it. A ticket belongs to its
 * waiter while attached and to the callbacks once detached.
 *
 * hiredis 0.14 (Debian 12) frees each reply right after its callback and
 * has no REDIS_OPT_NOAUTOFREEREPLIES, so the callback *steals* the reply: it
 * moves the top-level struct into a heap copy and leaves hiredis an empty
 * NIL shell to free. The result is the same as with the option: the waiter
 * owns the reply and frees it with freeReplyObject. */
#include "redis.h"
#include "dns.h"
#include "log.h"
#include "redis_ev.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define BACKOFF_MIN 0.05  /* first retry delay after a failed connect (s) */
#define BACKOFF_MAX 1.0

enum { CONN_CONNECTING, CONN_READY, CONN_RETIRED };

typedef struct mg_rds_conn {
    mg_rds_pool_t *pool;
    redisAsyncContext *ac;   /* NULL once hiredis freed (or is freeing) it */
    int state;               /* CONN_* */
    int pending;             /* callbacks not yet run (setup commands included) */
    int setup;               /* AUTH/SELECT replies still expected */
    ev_timer timer;          /* connect timeout, then the retired-kill delay */
    char err[128];           /* why the connection failed, for its waiters */
    struct mg_rds_conn *next;
} mg_rds_conn_t;

struct mg_rds_pool {
    struct ev_loop *ev;
    char host[256];          /* as configured (a name, an address, or the socket path) */
    int port;
    char unix_path[108];     /* "" for TCP */
    mg_dns_name_t *dns;      /* host is a name: its kept resolution (a ref) */
    char *password;
    int db, size;
    double timeout, connect_timeout;
    mg_rds_conn_t *conns;    /* open or opening connections, retired included */
    int nlive, nretired;
    double retry_at;         /* no new connect before this (ev_now) */
    double backoff;
    char err[128];           /* the last connect error, returned while backing off */
    unsigned closing : 1;    /* being freed: callbacks only release memory */
    unsigned loop_alive : 1;
};

struct mg_rds_ticket {
    mg_rds_pool_t *pool;
    mg_rds_conn_t *conn;     /* while replies are outstanding */
    mg_rds_done_fn fn;       /* NULL once detached */
    void *data;
    int n;                   /* commands */
    int next;                /* slot of the next reply */
    int remaining;           /* callbacks outstanding */
    char err[128];           /* first connection error, "" if none */
    redisReply *reply[];     /* owned; NULL where the connection failed */
};

/* --- small helpers -------------------------------------------------------- */

/* Copies a hiredis error text in the lower-case style of our other errors
 * ("Connection refused" -> "connection refused"). */
static void set_err(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src && *src ? src : "connection closed");
    if (dst[0] >= 'A' && dst[0] <= 'Z' && !(dst[1] >= 'A' && dst[1] <= 'Z'))
        dst[0] = (char)tolower((unsigned char)dst[0]);
}

static void timer_stop(mg_rds_pool_t *p, ev_timer *w)
{
    if (p->loop_alive)
        ev_timer_stop(p->ev, w);
}

static void pool_failed(mg_rds_pool_t *p, const char *why)
{
    set_err(p->err, sizeof p->err, why);
    double now = ev_now(p->ev);
    p->retry_at = now + p->backoff;
    p->backoff = p->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : p->backoff * 2;
}

static void pool_ok(mg_rds_pool_t *p)
{
    p->backoff = BACKOFF_MIN;
    p->retry_at = 0;
}

static void conn_unlink(mg_rds_conn_t *c)
{
    mg_rds_pool_t *p = c->pool;
    for (mg_rds_conn_t **pp = &p->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            if (c->state == CONN_RETIRED)
                p->nretired--;
            else
                p->nlive--;
            return;
        }
    }
}

/* The context is gone and every callback has run: forget c. */
static void conn_free(mg_rds_conn_t *c)
{
    timer_stop(c->pool, &c->timer);
    conn_unlink(c);
    free(c);
}

/* Closes c's context. graceful: if replies are pending, stop taking new
 * commands, let hiredis close once they arrived, and kill the connection
 * after a delay if they do not. c may be freed on return. Never called from
 * inside a hiredis callback. */
static void conn_close(mg_rds_conn_t *c, int graceful)
{
    mg_rds_pool_t *p = c->pool;
    redisAsyncContext *ac = c->ac;
    if (ac == NULL)
        return;
    if (c->state != CONN_RETIRED) {
        c->state = CONN_RETIRED;
        p->nlive--;
        p->nretired++;
    }
    if (graceful && ac->replies.head != NULL) {
        redisAsyncDisconnect(ac); /* sets REDIS_DISCONNECTING: replies pending */
        timer_stop(p, &c->timer);
        ev_timer_set(&c->timer, p->timeout + 0.1, 0.);
        ev_timer_start(p->ev, &c->timer);
        return;
    }
    int connected = (ac->c.flags & REDIS_CONNECTED) != 0;
    redisAsyncFree(ac); /* NULL replies to the callbacks; on_disconnect if connected */
    if (!connected) {
        c->ac = NULL;
        conn_free(c);
    }
}

/* --- hiredis callbacks ---------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    mg_rds_conn_t *c = ac->data;
    mg_rds_pool_t *p = c->pool;
    if (status == REDIS_OK) {
        if (c->state != CONN_RETIRED)
            timer_stop(p, &c->timer);
        if (c->setup == 0) {
            if (c->state == CONN_CONNECTING)
                c->state = CONN_READY;
            pool_ok(p);
        }
        return;
    }
    /* hiredis frees the context after this, then fires the pending
     * callbacks with NULL: the last of them frees c. */
    set_err(c->err, sizeof c->err, ac->c.errstr);
    mg_log_warn("redis %s:%d: connect failed: %s", p->host, p->port, c->err);
    pool_failed(p, c->err);
    c->ac = NULL;
    if (c->pending == 0)
        conn_free(c);
    else
        timer_stop(p, &c->timer);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    mg_rds_conn_t *c = ac->data;
    mg_rds_pool_t *p = c->pool;
    if (status != REDIS_OK && !p->closing) {
        char why[128];
        set_err(why, sizeof why, c->err[0] ? c->err : ac->c.errstr);
        mg_log_warn("redis %s:%d: connection lost: %s", p->host, p->port, why);
    }
    c->ac = NULL;
    conn_free(c); /* every callback has run */
}

/* Replies to AUTH and SELECT, sent ahead of everything else. */
static void setup_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    mg_rds_conn_t *c = ac->data;
    mg_rds_pool_t *p = c->pool;
    redisReply *r = reply;
    c->pending--;
    c->setup--;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !p->closing) {
        snprintf(c->err, sizeof c->err, "%s", r->str);
        mg_log_warn("redis %s:%d: connection setup failed: %s", p->host, p->port, c->err);
        pool_failed(p, c->err);
        /* Inside a callback hiredis defers the free until we return; the
         * commands queued behind get NULL replies and c->err. */
        if (c->ac && !(ac->c.flags & REDIS_FREEING))
            redisAsyncFree(ac);
    } else if (r != NULL && c->setup == 0 && c->state == CONN_CONNECTING) {
        c->state = CONN_READY;
        pool_ok(p);
    }
    if (c->ac == NULL && c->pending == 0)
        conn_free(c);
}

static void ticket_free(mg_rds_ticket_t *t)
{
    for (int i = 0; i < t->n; i++)
        if (t->reply[i])
            freeReplyObject(t->reply[i]);
    free(t);
}

/* Takes ownership of the reply hiredis is about to free (see the top). */
static redisReply *steal(redisReply *r)
{
    redisReply *own = malloc(sizeof *own);
    if (own == NULL)
        return NULL;
    *own = *r;
    r->type = REDIS_REPLY_NIL; /* hiredis frees just the shell */
    r->str = NULL;
    r->element = NULL;
    r->elements = 0;
    return own;
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    mg_rds_conn_t *c = ac->data;
    mg_rds_ticket_t *t = privdata;
    mg_rds_pool_t *p = t->pool;
    c->pending--;
    int i = t->next++;
    if (t->fn != NULL && reply != NULL) {
        t->reply[i] = steal(reply);
        if (t->reply[i] == NULL && t->err[0] == 0)
            snprintf(t->err, sizeof t->err, "out of memory");
    } else if (reply == NULL && t->err[0] == 0) {
        set_err(t->err, sizeof t->err, c->err[0] ? c->err : ac->c.err ? ac->c.errstr : NULL);
    }
    if (--t->remaining == 0) {
        t->conn = NULL;
        if (t->fn == NULL)
            ticket_free(t);
        else if (!p->closing)
            t->fn(t, t->data);
    }
    if (c->ac == NULL && c->pending == 0)
        conn_free(c); /* a failed connect: on_connect ran first */
}

static void conn_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_rds_conn_t *c = w->data;
    mg_rds_pool_t *p = c->pool;
    if (c->ac && !(c->ac->c.flags & REDIS_CONNECTED)) {
        snprintf(c->err, sizeof c->err, "connect timeout");
        mg_log_warn("redis %s:%d: connect timeout", p->host, p->port);
        pool_failed(p, c->err);
    } else if (c->err[0] == 0) {
        snprintf(c->err, sizeof c->err, "timeout");
    }
    conn_close(c, 0);
}

/* --- pool ----------------------------------------------------------------- */

int mg_rds_parse_addr(const char *addr, mg_rds_addr_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (addr == NULL)
        addr = "";
    const char *path = strncmp(addr, "unix:", 5) == 0 ? addr + 5 : addr[0] == '/' ? addr : NULL;
    if (path) {
        if (path[0] != '/' || strlen(path) >= sizeof out->unix_path) {
            snprintf(err, errlen, "addr: expected \"unix:/absolute/path\", got \"%s\"", addr);
            return -1;
        }
        snprintf(out->unix_path, sizeof out->unix_path, "%s", path);
        return 0;
    }
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr) {
        snprintf(err, errlen, "addr: expected \"host:port\" or \"unix:/path\", got \"%s\"",
                 addr);
        return -1;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 1 || port > 65535) {
        snprintf(err, errlen, "addr: bad port in \"%s\"", addr);
        return -1;
    }
    const char *h = addr;
    size_t hn = (size_t)(colon - addr);
    if (h[0] == '[' && hn >= 2 && h[hn - 1] == ']') {
        h++;
        hn -= 2;
    }
    if (hn == 0 || hn >= sizeof out->host) {
        snprintf(err, errlen, "addr: bad host in \"%s\"", addr);
        return -1;
    }
    memcpy(out->host, h, hn);
    out->port = (int)port;
    if (strcmp(out->host, "localhost") == 0)
        strcpy(out->host, "127.0.0.1");
    unsigned char b[16];
    if (inet_pton(AF_INET, out->host, b) == 1 || inet_pton(AF_INET6, out->host, b) == 1)
        return 0;
    for (const char *c = out->host; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_') {
            snprintf(err, errlen, "addr: bad host in \"%s\"", addr);
            return -1;
        }
    out->is_name = 1;
    return 0;
}

mg_rds_pool_t *mg_rds_pool_new(struct ev_loop *ev, const mg_rds_opts_t *o, char *err,
                               size_t errlen)
{
    mg_rds_addr_t a;
    if (mg_rds_parse_addr(o->addr, &a, err, errlen) != 0)
        return NULL;
    if (a.is_name && o->dns == NULL) {
        snprintf(err, errlen, "addr: no resolver for host \"%s\"", a.host);
        return NULL;
    }
    if (o->size < 1 || !(o->timeout > 0) || !(o->connect_timeout > 0) || o->db < 0) {
        snprintf(err, errlen, "pool must be >= 1, timeouts > 0 and db >= 0");
        return NULL;
    }
    mg_rds_pool_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        goto oom;
    if (o->password && (p->password = strdup(o->password)) == NULL)
        goto oom;
    if (a.is_name && (p->dns = mg_dns_name(o->dns, a.host)) == NULL)
        goto oom;
    p->ev = ev;
    snprintf(p->host, sizeof p->host, "%s", a.unix_path[0] ? a.unix_path : a.host);
    snprintf(p->unix_path, sizeof p->unix_path, "%s", a.unix_path);
    p->port = a.port;
    p->db = o->db;
    p->size = o->size;
    p->timeout = o->timeout;
    p->connect_timeout = o->connect_timeout;
    p->backoff = BACKOFF_MIN;
    p->loop_alive = 1;
    return p;
oom:
    if (p)
        free(p->password);
    free(p);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

double mg_rds_pool_timeout(const mg_rds_pool_t *p)
{
    return p->timeout;
}

void mg_rds_pool_retire(mg_rds_pool_t *p)
{
    mg_rds_conn_t *c = p->conns;
    while (c) {
        mg_rds_conn_t *next = c->next; /* conn_close may free c, never another */
        if (c->state != CONN_RETIRED)
            conn_close(c, 1);
        c = next;
    }
}

void mg_rds_pool_free(mg_rds_pool_t *p, int loop_alive)
{
    if (p == NULL)
        return;
    p->closing = 1;
    p->loop_alive = loop_alive ? 1 : 0;
    while (p->conns) {
        mg_rds_conn_t *c = p->conns;
        redisAsyncContext *ac = c->ac;
        if (ac == NULL) { /* cannot happen: such a conn is freed in its callbacks */
            conn_free(c);
            continue;
        }
        if (!loop_alive) {
            /* Detach the adapter without libev: the loop may be destroyed. */
            mg_rds_ev_detach_dead(ac);
        }
        ac->onDisconnect = NULL;
        redisAsyncFree(ac); /* callbacks free detached tickets */
        c->ac = NULL;
        conn_free(c);
    }
    if (loop_alive)
        mg_dns_name_unref(p->dns); /* the resolver goes with the loop otherwise */
    free(p->password);
    free(p);
}

static void send_setup(mg_rds_conn_t *c)
{
    mg_rds_pool_t *p = c->pool;
    if (p->password) {
        const char *argv[] = { "AUTH", p->password };
        size_t lens[] = { 4, strlen(p->password) };
        if (redisAsyncCommandArgv(c->ac, setup_cb, NULL, 2, argv, lens) == REDIS_OK) {
            c->pending++;
            c->setup++;
        }
    }
    if (p->db != 0) {
        char db[16];
        int n = snprintf(db, sizeof db, "%d", p->db);
        const char *argv[] = { "SELECT", db };
        size_t lens[] = { 6, (size_t)n };
        if (redisAsyncCommandArgv(c->ac, setup_cb, NULL, 2, argv, lens) == REDIS_OK) {
            c->pending++;
            c->setup++;
        }
    }
}

/* Starts a connection. NULL with p->err set when the connect failed at once
 * (connection refused on loopback is usually immediate). */
static mg_rds_conn_t *conn_open(mg_rds_pool_t *p)
{
    mg_rds_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(p->err, sizeof p->err, "out of memory");
        return NULL;
    }
    redisAsyncContext *ac;
    if (p->unix_path[0]) {
        ac = redisAsyncConnectUnix(p->unix_path);
    } else if (p->dns) {
        /* hiredis would look the name up itself, blocking: connect to the
         * resolver's latest numeric answer instead */
        struct sockaddr_storage ss;
        socklen_t sl;
        const char *why = NULL;
        char ip[INET6_ADDRSTRLEN];
        if (mg_dns_name_addr(p->dns, p->port, &ss, &sl, &why) != 0) {
            snprintf(c->err, sizeof c->err, "%s", why);
            pool_failed(p, c->err);
            free(c);
            return NULL;
        }
        const void *ia = ss.ss_family == AF_INET
                             ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                             : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        inet_ntop(ss.ss_family, ia, ip, sizeof ip);
        ac = redisAsyncConnect(ip, p->port);
    } else {
        ac = redisAsyncConnect(p->host, p->port);
    }
    if (ac == NULL || ac->err) {
        set_err(c->err, sizeof c->err, ac ? ac->errstr : "out of memory");
        mg_log_warn("redis %s:%d: connect failed: %s", p->host, p->port, c->err);
        pool_failed(p, c->err);
        if (ac)
            redisAsyncFree(ac);
        free(c);
        return NULL;
    }
    c->pool = p;
    c->ac = ac;
    c->state = CONN_CONNECTING;
    ac->data = c;
    if (mg_rds_ev_attach(p->ev, ac) != 0) {
        redisAsyncFree(ac);
        free(c);
        snprintf(p->err, sizeof p->err, "cannot attach to the event loop");
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* ev_now may be stale after a long callback (a script's startup): count
     * from the real time, or the timer fires at once. */
    ev_now_update(p->ev);
    ev_timer_init(&c->timer, conn_timer_cb, p->connect_timeout, 0.);
    c->timer.data = c;
    ev_timer_start(p->ev, &c->timer);
    c->next = p->conns;
    p->conns = c;
    p->nlive++;
    send_setup(c);
    return c;
}

/* The connection for the next command: the least busy usable one, or a new
 * one while the pool has room and every open one is busy. */
static mg_rds_conn_t *pick(mg_rds_pool_t *p, const char **err)
{
    mg_rds_conn_t *best = NULL;
    for (mg_rds_conn_t *c = p->conns; c; c = c->next) {
        if (c->state == CONN_RETIRED || c->ac == NULL ||
            (c->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
            continue;
        if (best == NULL || c->pending < best->pending)
            best = c;
    }
    if (best && best->pending == 0)
        return best;
    if (p->nlive < p->size && p->nretired < 2 * p->size) {
        if (best == NULL && ev_now(p->ev) < p->retry_at) {
            *err = p->err; /* down: fail fast until the backoff ends */
            return NULL;
        }
        if (best == NULL || ev_now(p->ev) >= p->retry_at) {
            mg_rds_conn_t *c = conn_open(p);
            if (c)
                return c;
        }
    }
    if (best == NULL)
        *err = p->err[0] ? p->err : "no redis connection available";
    return best;
}

mg_rds_ticket_t *mg_rds_submit(mg_rds_pool_t *p, int ncmds, const int *argc, const char **argv,
                               const size_t *argvlen, mg_rds_done_fn fn, void *data,
                               const char **err)
{
    mg_rds_conn_t *c = pick(p, err);
    if (c == NULL)
        return NULL;
    mg_rds_ticket_t *t = calloc(1, sizeof *t + (size_t)ncmds * sizeof t->reply[0]);
    if (t == NULL) {
        *err = "out of memory";
        return NULL;
    }
    t->pool = p;
    t->conn = c;
    t->fn = fn;
    t->data = data;
    t->n = ncmds;
    int sent = 0;
    for (int i = 0, off = 0; i < ncmds; off += argc[i], i++) {
        if (redisAsyncCommandArgv(c->ac, reply_cb, t, argc[i], argv + off, argvlen + off) !=
            REDIS_OK)
            break;
        sent++;
    }
    if (sent == 0) {
        free(t);
        *err = "redis connection closing";
        return NULL;
    }
    /* Commands after a failed append get no callback: they count as failed
     * (the slots stay NULL, and the reply callbacks fill the first `sent`). */
    if (sent < ncmds)
        snprintf(t->err, sizeof t->err, "redis connection closing");
    t->remaining = sent;
    c->pending += sent;
    return t;
}

int mg_rds_ticket_ready(const mg_rds_ticket_t *t)
{
    return t->remaining == 0;
}

int mg_rds_ticket_count(const mg_rds_ticket_t *t)
{
    return t->n;
}

const struct redisReply *mg_rds_ticket_reply(const mg_rds_ticket_t *t, int i)
{
    return i >= 0 && i < t->n ? t->reply[i] : NULL;
}

const char *mg_rds_ticket_err(const mg_rds_ticket_t *t)
{
    return t->err[0] ? t->err : NULL;
}

void mg_rds_ticket_free(mg_rds_ticket_t *t)
{
    if (t)
        ticket_free(t);
}

void mg_rds_detach(mg_rds_ticket_t *t)
{
    t->fn = NULL;
    t->data = NULL;
    if (t->remaining == 0)
        ticket_free(t);
}

void mg_rds_timeout(mg_rds_ticket_t *t)
{
    mg_rds_conn_t *c = t->conn;
    t->fn = NULL;
    t->data = NULL;
    if (t->remaining == 0) {
        ticket_free(t);
        return;
    }
    if (c && c->ac && c->state != CONN_RETIRED) {
        mg_log_info("redis %s:%d: a reply is late; retiring its connection", c->pool->host,
                    c->pool->port);
        conn_close(c, 1); /* our replies are pending: graceful keeps t alive */
    }
}
