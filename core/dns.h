/* Name resolution without blocking: c-ares on the worker's libev loop (one
 * channel per loop, hanging off mg_loop_t). c-ares sockets become ev_io
 * watchers and its timeouts one ev_timer; answers arrive as callbacks on
 * the loop. Two ways to use it:
 *
 * - a one-off query (mg_dns_query), for gw.http.request's hosts: a heap
 *   ticket calls back once, unless cancelled first;
 * - a kept name (mg_dns_name), for upstream servers and Redis: the module
 *   resolves it at once and again every `valid` seconds, and readers take
 *   its current addresses without waiting (mg_dns_name_addr). A failed
 *   re-resolution keeps the last good addresses (and logs).
 *
 * c-ares reads /etc/resolv.conf and /etc/hosts; `resolver` in the config
 * replaces the name servers. Also safe across fork(): a channel made before
 * a fork is remade in the child on its first use there. */
#ifndef MG_DNS_H
#define MG_DNS_H

#include <stddef.h>
#include <sys/socket.h>

struct ev_loop;

#define MG_DNS_MAX_ADDRS 8
#define MG_DNS_VALID_DEFAULT 30.0

typedef struct mg_dns mg_dns_t;
typedef struct mg_dns_query mg_dns_query_t;
typedef struct mg_dns_name mg_dns_name_t;

/* One answer: up to MG_DNS_MAX_ADDRS addresses (port 0), as c-ares sorted
 * them. */
typedef struct mg_dns_addrs {
    struct sockaddr_storage a[MG_DNS_MAX_ADDRS];
    socklen_t len[MG_DNS_MAX_ADDRS];
    int n;
} mg_dns_addrs_t;

/* err is NULL on success (addrs->n >= 1), else a static-ish text valid for
 * the call. addrs is borrowed for the call. */
typedef void (*mg_dns_fn)(void *data, const mg_dns_addrs_t *addrs, const char *err);

/* A resolver on the loop. NULL with a reason in err. */
mg_dns_t *mg_dns_new(struct ev_loop *ev, char *err, size_t errlen);
/* Frees the channel, its kept names and tickets; callbacks are not called.
 * loop_alive = 0: the loop is gone, touch no watcher. NULL is fine. */
void mg_dns_free(mg_dns_t *d, int loop_alive);
/* Name servers ("ip[:port],[v6][:port]", as the config's `resolver`; NULL:
 * the system's) and the re-resolve interval of kept names (s). Applied at
 * once when nothing is in flight, else at the next refresh. 0 or -1. */
int mg_dns_configure(mg_dns_t *d, const char *servers, double valid);

/* Starts resolving host. fn is called later (never from inside this call),
 * once. NULL with *err set when the query could not start. */
mg_dns_query_t *mg_dns_query(mg_dns_t *d, const char *host, mg_dns_fn fn, void *data,
                             const char **err);
/* The caller is gone: fn will not be called. */
void mg_dns_cancel(mg_dns_query_t *q);

/* A kept name, shared by everyone who asks for the same host (a reference
 * each). NULL on out of memory. */
mg_dns_name_t *mg_dns_name(mg_dns_t *d, const char *host);
void mg_dns_name_unref(mg_dns_name_t *n);
/* The name's next address (round robin over the current answer) with
 * `port`, into out. 0, or -1 when there is none yet (never resolved, or
 * only failures): then *err says why. */
int mg_dns_name_addr(mg_dns_name_t *n, int port, struct sockaddr_storage *out, socklen_t *len,
                     const char **err);
const char *mg_dns_name_host(const mg_dns_name_t *n);
/* Counts answers that changed the name's addresses: a connection made
 * under an older count goes to an address that may be gone. */
unsigned mg_dns_name_gen(const mg_dns_name_t *n);
/* Kept names still waiting for their first answer. */
int mg_dns_pending(const mg_dns_t *d);
/* Runs the loop until every kept name has had its first answer or
 * `timeout` seconds passed (startup and -t, before anything is served). */
void mg_dns_settle(mg_dns_t *d, double timeout);

#endif
