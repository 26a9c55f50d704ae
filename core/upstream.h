/* Upstream pools: per upstream, its servers with their idle keep-alive
 * connections, balancing, and nonblocking connects. The exchange itself
 * (what is written and read) belongs to h1client.c. */
#ifndef MG_UPSTREAM_H
#define MG_UPSTREAM_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "http1.h"
#include "sock.h"

typedef struct mg_loop mg_loop_t;
typedef struct mg_up mg_up_t;
typedef struct mg_upconn mg_upconn_t;
typedef struct mg_tlsc mg_tlsc_t;
struct ssl_st;
struct ssl_session_st;

typedef struct mg_up_server {
    mg_up_t *up;
    const mg_addr_t *addr;
    struct mg_dns_name *dns;   /* addr is a host name: its kept resolution (a ref), else NULL */
    int active;                /* connections in use */
    mg_upconn_t *idle;         /* idle keep-alive connections (LIFO) */
    int nidle;
    char *tls_name;            /* SNI / verified name (TLS pools only) */
    struct ssl_session_st *tls_sess; /* the newest session, resumed by new connections */
    int fails;                 /* failed connects since fail_start (passive health) */
    double fail_start;         /* loop time of the first of them */
    double down_until;         /* loop time until which the balancer skips it */
    const uint32_t *hdown;     /* active health (health.c): nonzero while its checks have it
                                * down (shared memory, read atomically); NULL: no checks */
    struct mg_h2uconn *h2;     /* protocol = "h2": its HTTP/2 connections (h2client.c), or NULL */
} mg_up_server_t;

struct mg_up {
    mg_loop_t *loop;
    const mg_cfg_upstream_t *cfg;
    mg_up_server_t *servers;
    int nservers;
    unsigned rr;
    double down_max;           /* latest down_until of any server: past it, none is down */
    int health;                /* some server has hdown set */
    int nidle;                 /* over all servers: up to cfg->keepalive, and up to 4x that for a second after a burst */
    mg_tlsc_t *tls;            /* NULL: plain TCP */
    int tls_owned;             /* tls is freed with the pool */
    /* Closes a server's HTTP/2 connections (sv->h2) when the pool closes;
     * set by h2client.c when it opens the first. */
    void (*close_h2)(mg_up_server_t *sv);
};

/* What the exchange running on a connection does with its events. While a
 * connection is idle (owner == NULL) the pool handles them instead. */
typedef struct mg_upconn_ops {
    void (*on_read)(mg_upconn_t *u);
    void (*on_write)(mg_upconn_t *u);
    void (*on_timer)(mg_upconn_t *u);
} mg_upconn_ops_t;

/* One connection to an upstream server. Its watchers are set up once and
 * its read watcher stays on for its whole life (idle included), so reuse
 * costs no epoll_ctl. */
struct mg_upconn {
    const mg_upconn_ops_t *ops;
    mg_loop_t *loop;
    mg_up_server_t *server;
    mg_sock_t sock;            /* fd and TLS state (sock.ssl NULL on plain TCP) */
    ev_io rio, wio;
    ev_timer timer;            /* connect, read and idle timeouts */
    double deadline, armed_at; /* the timeout's time, and when the timer is due (mg_up_arm_timer) */
    mg_buf_t wbuf;             /* request bytes not yet written */
    mg_h1_t h1;                /* response parser */
    mg_h1_head_t head;         /* response head store */
    void *owner;               /* the exchange it serves (opaque to the pool); NULL while idle */
    mg_upconn_t *next;         /* idle list */
    double last_io;
    unsigned dns_gen;          /* the server name's answer count when connected (dns.h) */
    unsigned connecting : 1;   /* TCP connect, then the TLS handshake */
    unsigned handshaking : 1;  /* connected; the TLS handshake runs */
    unsigned reused : 1;       /* came from the idle pool */
    unsigned closed : 1;
    unsigned in_use : 1;       /* serving a request (counted in server->active) */
    unsigned rio_on : 1, wio_on : 1;
    unsigned read_paused : 1;
    unsigned closed_by_peer : 1;
};

/* Sets up the pool; with cfg->tls, also its TLS context (CA file read
 * here, so at config time). MG_OK, or an error (logged). */
int mg_up_init(mg_up_t *up, mg_loop_t *loop, const mg_cfg_upstream_t *cfg);
/* Makes the pool's new connections speak TLS with t (borrowed: it must
 * outlive the pool), verifying `name` (NULL: each server's host part). For
 * pools whose config is not a configured upstream (gw.http). */
int mg_up_use_tls(mg_up_t *up, mg_tlsc_t *t, const char *name);
/* Closes every idle connection; active ones must be gone already. */
void mg_up_close(mg_up_t *up);

/* Picks a server among those whose bit is not set in `tried` and that are
 * not marked down at loop time `now`; -1 when none is left. `hash` is the
 * request's balancing key (mg_up_hash of what cfg->hash_key names), used
 * only by hash balancing: the caller computes it, the pool never looks
 * into a request. */
int mg_up_pick_at(mg_up_t *up, uint32_t hash, uint64_t tried, double now);
/* mg_up_pick_at at the loop's time. */
int mg_up_pick(mg_up_t *up, uint32_t hash, uint64_t tried);
/* The balancing hash of a key (FNV-1a). */
uint32_t mg_up_hash(const char *p, size_t n);
/* Passive health (nginx's max_fails/fail_timeout): server s failed to
 * connect at `now`. After max_fails failures within fail_timeout it is
 * marked down for fail_timeout: 1 is returned then. An upstream with one
 * server never marks it down (nothing to fail over to). */
int mg_up_server_failed(mg_up_t *up, int s, double now);
/* A connect to s succeeded: its failure count starts over. */
static inline void mg_up_server_ok(mg_up_server_t *sv)
{
    sv->fails = 0;
}
/* True if some server of up is not marked down at `now`. */
int mg_up_any_up(const mg_up_t *up, double now);
/* An idle connection to server s, or a new connecting one (write watcher
 * armed for the connect), now serving `owner` with ops. NULL when the socket
 * could not even be created or the connect failed at once: err says why
 * (for logs) and errno is the cause (ECONNREFUSED, ENOMEM, EHOSTUNREACH for
 * a host name with no address, ...), for callers to classify it. */
mg_upconn_t *mg_up_get(mg_up_t *up, int s, void *owner, const mg_upconn_ops_t *ops,
                       const char **err);
/* Drives a connecting connection (u->connecting) on: call it when its
 * socket is writable, and when readable while the TLS handshake runs
 * (read events of a connecting connection arrive at ops->on_write). Checks
 * the TCP connect, then runs the TLS handshake, arming the watchers it
 * needs. MG_OK: connected, u->connecting is 0. MG_EAGAIN: not yet.
 * MG_ECLOSED: failed, with the reason in err and *sys_errno the connect's
 * errno (0 for a TLS failure). */
int mg_up_connect_step(mg_upconn_t *u, char *err, size_t errlen, int *sys_errno);

/* The transport (sock.h): recv(2)/send(2) on plain TCP (exactly those
 * syscalls), through OpenSSL on TLS connections, with the watchers a TLS
 * read needing writability arms. Same results as recv/send. */
ssize_t mg_up_tls_recv(mg_upconn_t *u, void *p, size_t n);
static inline ssize_t mg_up_recv(mg_upconn_t *u, void *p, size_t n)
{
    if (u->sock.ssl == NULL)
        return recv(u->sock.fd, p, n, 0); /* recv: skips the VFS layer of read() */
    return mg_up_tls_recv(u, p, n);
}
static inline ssize_t mg_up_send(mg_upconn_t *u, const void *p, size_t n)
{
    /* TLS: a write needing readability sets sock.wr_wr; the caller's
     * want_write(1) then waits for rio */
    return mg_sock_send(&u->sock, p, n);
}

/* Starts/stops the write watcher; pauses/resumes reading. */
void mg_up_want_write(mg_upconn_t *u, int on);
void mg_up_pause_read(mg_upconn_t *u, int pause);
/* (Re)arms the connection's one timer. */
void mg_up_arm_timer(mg_upconn_t *u, double secs);
/* Returns a finished connection to its pool (or closes it if full). */
void mg_up_release(mg_upconn_t *u);
/* Closes and frees later; idempotent. */
void mg_up_conn_close(mg_upconn_t *u);
/* Hands the socket over to a tunnel after a 101: *fd, *ssl and *out (the
 * request bytes not yet written) become the caller's, and u is closed
 * without them (never back to the pool). */
void mg_up_detach(mg_upconn_t *u, int *fd, struct ssl_st **ssl, mg_buf_t *out);

#endif
