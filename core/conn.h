/* One client connection: the fd, its read/write watchers, the timer for
 * header/idle timeouts, the pipelined-bytes buffer, the write queue and the
 * request parser. It owns the current request's lifetime on the socket. */
#ifndef MG_CONN_H
#define MG_CONN_H

#include <ev.h>

#include "buf.h"
#include "http1.h"
#include "sock.h"
#include "writer.h"

struct sockaddr;
typedef struct mg_loop mg_loop_t;
typedef struct mg_req mg_req_t;
typedef struct mg_listener mg_listener_t;
struct ssl_ctx_st;

/* Above this many queued output bytes the producer (upstream) pauses. */
#define MG_CONN_WBUF_HIGH MG_WRITER_HIGH
#define MG_CONN_WBUF_LOW (64 * 1024)
#define MG_CONN_RBUF_MAX (64 * 1024)

typedef struct mg_conn {
    mg_loop_t *loop;
    mg_sock_t sock;          /* fd and TLS session (sock.h: rd_ww/wr_wr route a TLS read
                              * that waits for writability and the reverse) */
    ev_io rio, wio;
    ev_timer timer;
    double deadline_at;      /* when the current timeout fires */
    double armed_at;         /* when the timer is due (<= deadline_at; see set_timeout) */
    int timeout_kind;        /* MG_CONN_T_* */
    mg_buf_t rbuf;           /* bytes read but not parsed yet (pipelining) */
    mg_buf_t wbuf;           /* bytes queued for the client */
    mg_h1_t h1;
    mg_h1_head_t *spare;     /* head store reused across requests */
    mg_req_t *req;           /* the request being parsed or served */
    mg_writer_t w;           /* its response writer (h1writer.c) */
    mg_reqsrc_t src;         /* its request source; src.paused: body reading paused */
    char remote[64];         /* client IP as text */
    int remote_port;
    struct mg_conn *prev, *next;   /* loop->conns */
    unsigned closing : 1;    /* close once wbuf is flushed */
    unsigned closed : 1;     /* fd closed, memory freed later */
    unsigned eof : 1;        /* client half-closed */
    unsigned in_process : 1; /* re-entrancy guard for mg_conn_process */
    unsigned wio_on : 1;
    unsigned rio_on : 1;
    unsigned admin : 1;      /* accepted on the admin listener */
    unsigned https : 1;      /* accepted on a TLS listener (X-Forwarded-Proto, req.scheme) */
    unsigned parse_held : 1; /* the next pipelined request waits for wbuf to drain */
    unsigned resp_chunked : 1; /* the response in progress is chunk-encoded */
    unsigned resp_close : 1; /* ... or ends with the connection (HTTP/1.0 client) */
    unsigned pp_wait : 1;    /* a PROXY protocol header is still to come (rbuf holds its start) */
    unsigned h2_sniff : 1;   /* the first bytes may make it HTTP/2 (h2conn.c) */
} mg_conn_t;

enum { MG_CONN_T_NONE, MG_CONN_T_IDLE, MG_CONN_T_HEADER, MG_CONN_T_SEND };

/* mg_conn_accept flags */
enum { MG_CONN_F_ADMIN = 1, MG_CONN_F_PROXY_PROTOCOL = 2, MG_CONN_F_H2 = 4 };

/* Takes ownership of fd (already nonblocking). With tls (borrowed; the
 * session takes its own reference) the connection speaks TLS; the
 * handshake counts against header_timeout. flags: MG_CONN_F_*; with
 * MG_CONN_F_PROXY_PROTOCOL a PROXY header comes first (before TLS). */
void mg_conn_accept(mg_loop_t *loop, int fd, const struct sockaddr *sa, int flags,
                    struct ssl_ctx_st *tls);
/* Queues bytes for the client. Returns 0 or MG_ENOMEM. */
int mg_conn_write(mg_conn_t *c, const void *p, size_t n);
/* Writes what the socket takes now; arms the write watcher for the rest.
 * May close the connection (check c->closed afterwards). */
void mg_conn_flush(mg_conn_t *c);
/* Closes now: aborts the request in flight. Idempotent; memory freed later. */
void mg_conn_close(mg_conn_t *c);
/* The current request finished: the next pipelined request may start. */
void mg_conn_request_done(mg_conn_t *c, int keepalive);
/* Backpressure: stop/restart reading the client (request body). */
void mg_conn_pause_read(mg_conn_t *c, int pause);
/* Hands the socket over (to a tunnel, after a 101): *fd, *tls and *out
 * (the queued output: the 101 head) become the caller's; in[0..*in_n) are
 * the bytes the client sent after its request, valid until the next loop
 * iteration; *eof says the client already half-closed. The connection is
 * closed without its fd; the request in flight is detached, not aborted. */
void mg_conn_detach(mg_conn_t *c, int *fd, struct mg_tls **tls, mg_buf_t *out, const char **in,
                    size_t *in_n, int *eof);
/* Graceful stop: close if no request is in flight. */
void mg_conn_close_idle(mg_conn_t *c);

/* The connection as its request's response writer and request source
 * (h1writer.c). */
extern const mg_writer_ops_t mg_conn_writer_ops;
extern const mg_reqsrc_ops_t mg_conn_src_ops;

#endif
