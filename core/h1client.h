/* One outgoing HTTP/1.1 exchange on a pooled upstream connection
 * (upstream.h): the one client engine under the proxy (proxy.c) and
 * gw.http (hclient.c), after h2o's http1client.
 *
 * It writes the request (the owner's message: the head, maybe the whole
 * body, plus body bytes that keep streaming in through mg_h1c_send, with
 * backpressure both ways), parses the response with http1 in response mode
 * and hands it up through callbacks. 1xx interim responses are dropped
 * (at most MG_H1C_MAX_INTERIM of them); a 101 goes up to on_head, which
 * decides whether the exchange may switch protocols.
 *
 * One replay rule: a request is sent again, once, on a fresh connection to
 * the same server when a pooled (reused) connection fails on I/O before any
 * response byte arrived (the server most likely closed it while idle), and
 * either the request is idempotent and every byte written is still held in
 * the owner's message, or no byte of its body left yet. The server's other
 * idle connections are as old or older: they are closed too.
 *
 * Lifetime: mg_h1c_t lives in its owner (embedded) and is the connection's
 * owner (u->owner) while attached. Exactly one of on_done, on_switch or
 * on_error ends an attachment; the connection is released (or closed)
 * before on_done and on_error run, so they may start another exchange or
 * free the owner (deferred). Callbacks never run from inside mg_h1c_attach.
 * After on_error for a failed connect, the unsent request bytes stay with
 * the exchange for a retry (mg_h1c_attach) until mg_h1c_cancel. */
#ifndef MG_H1CLIENT_H
#define MG_H1CLIENT_H

#include <stddef.h>

#include "buf.h"
#include "http1.h"

typedef struct mg_up mg_up_t;
typedef struct mg_up_server mg_up_server_t;
typedef struct mg_upconn mg_upconn_t;
struct ssl_st;

#define MG_H1C_MAX_INTERIM 16      /* 1xx responses allowed before the final one */
#define MG_H1C_MAX_HEAD (64 * 1024) /* response head size cap */
#define MG_H1C_WBUF_HIGH (256 * 1024) /* queued request bytes: the producer stops above */
#define MG_H1C_WBUF_LOW (64 * 1024)   /* ... and goes on below */

/* The one error type: a code (its text by mg_h1c_strerror) and details. */
typedef enum mg_h1c_err {
    MG_H1C_TIMEOUT = 1, /* "timeout": a phase took too long (or the socket said ETIMEDOUT) */
    MG_H1C_REFUSED,     /* "connection refused" */
    MG_H1C_UNREACHABLE, /* "network unreachable" */
    MG_H1C_CONNECT,     /* "connect failed": any other socket error */
    MG_H1C_TLS,         /* "tls handshake failed": `why` has the library's reason */
    MG_H1C_RESET,       /* "connection reset" */
    MG_H1C_CLOSED,      /* "connection closed": EOF before the response ended */
    MG_H1C_WRITE,       /* "write failed" */
    MG_H1C_INVALID,     /* "invalid response" */
    MG_H1C_TOO_LARGE,   /* "response too large" */
    MG_H1C_NOMEM,       /* "out of memory" */
} mg_h1c_err_t;

typedef struct mg_h1c_error {
    mg_h1c_err_t code;
    const char *why;         /* for logs: strerror, TLS or parser reason; valid during on_error */
    unsigned connecting : 1; /* failed while connecting (TCP or TLS): nothing was sent */
} mg_h1c_error_t;

const char *mg_h1c_strerror(mg_h1c_err_t code);
/* The code of a socket error (errno): refused, reset, timeout, ... (h2client
 * too). */
mg_h1c_err_t mg_h1c_errno(int e);

/* Callbacks, all with the owner's `ud`. */
typedef struct mg_h1c_cbs {
    /* Where the response head is parsed into; NULL: the connection's own
     * store (valid until on_done returns). */
    mg_h1_head_t *(*head_store)(void *ud);
    /* The final head (or a 101): 0 go on, 1 no body follows, -1 fail
     * (mg_h1c_reason says why; else "invalid response"). */
    int (*on_head)(void *ud, mg_h1_head_t *h);
    /* Body bytes (de-chunked): 0 or -1. */
    int (*on_body)(void *ud, const char *p, size_t n);
    /* The response's last byte was parsed (the connection still attached):
     * 0 or -1; may be NULL. */
    int (*on_end)(void *ud);
    /* The exchange ended well; the connection is back in its pool. */
    void (*on_done)(void *ud);
    /* on_head accepted a 101 and its head is parsed; rest[0..n) followed
     * it. The connection stays attached for mg_h1c_detach. */
    void (*on_switch)(void *ud, const char *rest, size_t n);
    /* The exchange failed; the connection is closed. */
    void (*on_error)(void *ud, const mg_h1c_error_t *e);
    /* A read's bytes were all handed up and the exchange goes on; may be NULL. */
    void (*on_read)(void *ud);
    /* Request backpressure: 0 when the queue passed MG_H1C_WBUF_HIGH (stop
     * producing body bytes), 1 after a write left it below
     * MG_H1C_WBUF_LOW. May be NULL. */
    void (*on_sendable)(void *ud, int ok);
} mg_h1c_cbs_t;

typedef struct mg_h1c {
    const mg_h1c_cbs_t *cb;
    void *ud;
    mg_upconn_t *u;          /* the connection, while attached */
    mg_up_server_t *server;  /* its server (kept after a failure: passive health) */
    const mg_buf_t *msg;     /* the owner's request bytes, kept until the exchange ends */
    size_t head_len;         /* the head's length in msg (or MG_H1C_FIND_HEAD) */
    size_t wrote;            /* bytes written on this connection */
    mg_buf_t carry;          /* the unsent bytes of a failed attempt */
    double connect_timeout;  /* seconds; 0: none (the owner has its own deadline) */
    double read_timeout;     /* seconds without I/O once connected; 0: none */
    mg_h1_head_t *head;      /* the response head being parsed */
    const char *why;         /* why the owner's callback failed */
    mg_h1c_err_t code;       /* ... and the code (0: invalid response) */
    unsigned interim;        /* 1xx responses seen */
    unsigned idempotent : 1; /* may be replayed with its body written */
    unsigned chunked : 1;    /* streamed body bytes go up chunk-encoded */
    unsigned body_end : 1;   /* the whole request is queued */
    unsigned final : 1;      /* the head being parsed is not a 1xx */
    unsigned got_any : 1;    /* some response bytes arrived on this connection */
    unsigned resp_done : 1;  /* the response was parsed to its end */
    unsigned replayed : 1;   /* already sent again once */
} mg_h1c_t;

/* Where the head ends in msg is looked up (at its blank line) only when a
 * replay is considered: a caller that wrote head and body into one buffer
 * passes this as head_len instead of scanning every request. */
#define MG_H1C_FIND_HEAD ((size_t)-1)

/* Sets up an exchange: msg[0..head_len) is the head, the rest of msg body
 * bytes; body_end: nothing more will come through mg_h1c_send. */
static inline void mg_h1c_init(mg_h1c_t *x, const mg_h1c_cbs_t *cb, void *ud,
                               const mg_buf_t *msg, size_t head_len, int body_end)
{
    /* what each attempt sets afresh is left to mg_h1c_attach */
    if (x->carry.base)
        mg_buf_free(&x->carry);
    x->cb = cb;
    x->ud = ud;
    x->u = NULL;
    x->server = NULL;
    x->msg = msg;
    x->head_len = head_len;
    x->connect_timeout = x->read_timeout = 0;
    x->idempotent = x->chunked = x->replayed = 0;
    x->body_end = body_end ? 1 : 0;
}
/* Runs the exchange on a connection to server s of up (idle or new): the
 * carried bytes of a failed attempt, else the message, go out. MG_OK, or
 * MG_ENOMEM / MG_ECLOSED with *err saying why (for logs) and x->code the
 * failure's code (no connection; nothing was called). */
int mg_h1c_attach(mg_h1c_t *x, mg_up_t *up, int s, const char **err);
/* Queues body bytes (chunk-encoded with x->chunked) and writes what the
 * socket takes. MG_OK, or -1 when the exchange failed (on_error ran). */
int mg_h1c_send(mg_h1c_t *x, const char *p, size_t n);
/* The body is complete (the last chunk goes up). MG_OK or -1 as above. */
int mg_h1c_end(mg_h1c_t *x);
/* Stops/resumes reading the response (the consumer's backpressure). */
void mg_h1c_pause_read(mg_h1c_t *x, int pause);
/* An owner's callback failing the exchange says why (static text). */
static inline void mg_h1c_reason(mg_h1c_t *x, mg_h1c_err_t code, const char *why)
{
    x->code = code;
    x->why = why;
}
/* Ends the exchange without callbacks: the connection is closed (a
 * half-read response never goes back to the pool), carried bytes freed. */
void mg_h1c_cancel(mg_h1c_t *x);
/* After on_switch: the socket, its TLS state and the request bytes not yet
 * written become the caller's (a tunnel's); the connection never returns
 * to the pool. */
void mg_h1c_detach(mg_h1c_t *x, int *fd, struct ssl_st **ssl, mg_buf_t *out);

#endif
