/* Redis connection pools: hiredis async contexts on the libev adapter, one
 * pool per named Redis per worker. Commands from many requests are
 * multiplexed on up to `size` connections (hiredis keeps replies in order,
 * so several waiters pipeline on one connection). Reconnects with backoff;
 * AUTH and SELECT on connect. No Lua and no request here: a waiter is a
 * callback plus `void *` (STYLE.md a), and its handle is a heap *ticket*
 * that outlives the waiter when the waiter gives up (STYLE.md b, "Redis is
 * a special case"). Nothing here blocks: a numeric address is used as is,
 * a host name through the loop's resolver (dns.h: resolved in the
 * background, kept fresh; connects use the latest answer), and
 * "unix:/path" or "/path" is a unix socket. */
#ifndef MG_REDIS_H
#define MG_REDIS_H

#include <stddef.h>

struct ev_loop;
struct redisReply;
struct mg_dns;

/* A parsed Redis address. */
typedef struct mg_rds_addr {
    char host[256];          /* numeric address or host name ("" for a unix socket) */
    int port;
    int is_name;             /* host needs the resolver */
    char unix_path[108];     /* "" for TCP */
} mg_rds_addr_t;

/* "host:port", "[v6]:port", "unix:/path" or "/path". 0, or -1 with a
 * reason in err. */
int mg_rds_parse_addr(const char *addr, mg_rds_addr_t *out, char *err, size_t errlen);

typedef struct mg_rds_pool mg_rds_pool_t;
typedef struct mg_rds_ticket mg_rds_ticket_t;

/* What a pool connects to. Strings are copied by mg_rds_pool_new. */
typedef struct mg_rds_opts {
    const char *addr;        /* as mg_rds_parse_addr takes it */
    struct mg_dns *dns;      /* resolver for host names (borrowed; outlives the pool) */
    const char *password;    /* AUTH on connect, or NULL */
    int db;                  /* SELECT on connect when not 0 */
    int size;                /* most connections open at once (>= 1) */
    double timeout;          /* per-call timeout the binding applies (s) */
    double connect_timeout;  /* a connect that takes longer fails (s) */
} mg_rds_opts_t;

/* Called once, when every reply of an attached ticket is in (or its
 * connection failed). Runs inside a hiredis callback: it must not run Lua
 * or touch the pool; it should only schedule the waiter (mg_lrt_wake). */
typedef void (*mg_rds_done_fn)(mg_rds_ticket_t *t, void *data);

/* A new pool on the loop; no connection is opened until the first command.
 * NULL with a message in err (bad address, out of memory). */
mg_rds_pool_t *mg_rds_pool_new(struct ev_loop *ev, const mg_rds_opts_t *o, char *err,
                               size_t errlen);
/* The pool's configured per-call timeout (s). */
double mg_rds_pool_timeout(const mg_rds_pool_t *p);
/* Closes the pool's connections gracefully (replies still pending are
 * awaited); the pool stays usable and reconnects on the next command. Used
 * when a reload replaced the config the pool was made from. */
void mg_rds_pool_retire(mg_rds_pool_t *p);
/* Frees the pool and its connections. Waiters still attached are not told.
 * loop_alive = 0: the event loop may already be destroyed (process exit,
 * lua_close after ev_loop_destroy), so no watcher is touched. NULL is ok. */
void mg_rds_pool_free(mg_rds_pool_t *p, int loop_alive);

/* Sends ncmds commands, back to back on one connection (a pipeline; no
 * other waiter's command comes between them). Command i has argc[i]
 * arguments taken in order from argv/argvlen (borrowed for the call only).
 * Returns a ticket that calls fn(t, data) once every reply is in, or NULL
 * with *err set (static text or the pool's last error, valid until the
 * pool's next event) when nothing was sent: Redis is down and the pool is
 * backing off, the connect failed at once, out of memory. */
mg_rds_ticket_t *mg_rds_submit(mg_rds_pool_t *p, int ncmds, const int *argc, const char **argv,
                               const size_t *argvlen, mg_rds_done_fn fn, void *data,
                               const char **err);
/* 1 once every reply is in (fn has been called or is being called). */
int mg_rds_ticket_ready(const mg_rds_ticket_t *t);
int mg_rds_ticket_count(const mg_rds_ticket_t *t);
/* Reply i, owned by the ticket, or NULL when the connection failed before
 * it arrived (then mg_rds_ticket_err says why). Only once ready. */
const struct redisReply *mg_rds_ticket_reply(const mg_rds_ticket_t *t, int i);
/* The connection error that cut the ticket short ("connection refused",
 * "server closed the connection", ...), or NULL. */
const char *mg_rds_ticket_err(const mg_rds_ticket_t *t);
/* Frees a ready ticket and its replies (the waiter is done with it). */
void mg_rds_ticket_free(mg_rds_ticket_t *t);
/* The waiter is gone (request aborted): the ticket frees itself when its
 * last reply arrives, or now if it is ready. Late replies are discarded. */
void mg_rds_detach(mg_rds_ticket_t *t);
/* The waiter gave up waiting: detach, and stop sending new commands to the
 * ticket's connection (a reply that late means Redis or the network is
 * stuck; the connection is closed once its replies arrive, or soon). Must
 * not be called from inside a hiredis callback. */
void mg_rds_timeout(mg_rds_ticket_t *t);

#endif
