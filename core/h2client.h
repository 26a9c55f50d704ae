/* One outgoing exchange on an HTTP/2 upstream connection (protocol = "h2"):
 * the second client engine under the proxy, beside h1client.c, with the
 * same callbacks (mg_h1c_cbs_t) and error type (mg_h1c_error_t), so
 * proxy.c runs either the same way.
 *
 * One HTTP/2 connection per upstream server (and worker) carries many
 * exchanges as streams; a new one opens only when every open connection
 * has as many streams as the server allows (its SETTINGS_MAX_CONCURRENT_
 * STREAMS), or after the old one got GOAWAY or died. h2 is prior knowledge
 * over plain TCP, ALPN "h2" with TLS. A connection counts as connecting
 * until the server's first SETTINGS arrived: streams wait on it unsent, and
 * a failure before then is a connect failure (retried elsewhere by the
 * owner: nothing was sent).
 *
 * The request: the owner's message is its head as HTTP/1.1 text (what
 * proxy.c builds for either engine), turned into an HTTP/2 header list
 * (hop-by-hop fields dropped, Host as :authority); body bytes stream in
 * through mg_h2u_send with backpressure (on_sendable) and HTTP/2 flow
 * control; mg_h2u_end may add request trailers (a trailing HEADERS frame).
 * The response: its head goes up as an mg_h1_head_t (status, fields), body
 * bytes through on_body, and its trailers, if any, are mg_h2u_trailers()
 * when on_end runs. The consumer's backpressure (mg_h2u_pause_read) holds
 * the stream's bytes and withholds its WINDOW_UPDATEs; other streams go on.
 *
 * Errors: RST_STREAM or the connection failing before the end is "connection
 * reset" / "connection closed"; no progress within read_timeout is
 * "timeout". A stream the server refused unprocessed (REFUSED_STREAM, or
 * beyond a GOAWAY's last stream), or one that saw no answer on a reused
 * connection that died, goes again once on another connection if no body
 * byte of it left yet.
 *
 * Lifetime: the owner creates the exchange (mg_h2u_new) and frees it with
 * mg_h2u_free, which cancels it if it still runs. Exactly one of on_done or
 * on_error ends an attachment; nothing touches the exchange after calling
 * them, so they may free it. Callbacks never run from inside mg_h2u_attach,
 * mg_h2u_send, mg_h2u_end or mg_h2u_pause_read. */
#ifndef MG_H2CLIENT_H
#define MG_H2CLIENT_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "h1client.h"
#include "http1.h"

typedef struct mg_loop mg_loop_t;
typedef struct mg_h2u mg_h2u_t;
struct mg_h2uconn;

struct mg_h2u {
    const mg_h1c_cbs_t *cb;
    void *ud;
    mg_loop_t *loop;
    struct mg_h2uconn *c;      /* the connection, while attached */
    mg_h2u_t *prev, *next;     /* the connection's exchanges */
    mg_up_server_t *server;    /* its server (kept after a failure: passive health) */
    const mg_buf_t *msg;       /* the request head as HTTP/1.1 text (the owner's) */
    const mg_h1_head_t *req_trailers; /* borrowed from mg_h2u_end until the exchange ends */
    mg_buf_t body;             /* request body bytes not yet taken by the connection */
    mg_buf_t pending;          /* response body bytes held while paused */
    mg_h1_head_t head;         /* the response head */
    mg_h1_head_t trailers;     /* the response trailers */
    ev_timer rt;               /* the read timeout */
    ev_timer wake;             /* next-iteration work: held bytes after a resume, a replay */
    double connect_timeout;    /* seconds; 0: none */
    double read_timeout;       /* seconds without progress once sent; 0: none */
    double last_io;
    uint64_t sent;             /* body bytes the connection took */
    int32_t sid;               /* stream id; 0: not submitted yet */
    const char *why;           /* why the owner's callback failed */
    mg_h1c_err_t code;         /* ... and the code (0: invalid response) */
    unsigned interim;          /* 1xx responses seen */
    unsigned body_end : 1;     /* the whole request body is queued */
    unsigned te_trailers : 1;  /* the client accepts trailers: "te: trailers" goes up */
    unsigned deferred : 1;     /* the connection waits for body bytes (resume it) */
    unsigned final : 1;        /* the final head arrived */
    unsigned in_head : 1;      /* a HEADERS block of a head is being received */
    unsigned in_trailers : 1;  /* ... of the trailers */
    unsigned no_body : 1;      /* on_head said no body follows */
    unsigned got_end : 1;      /* END_STREAM arrived (held bytes may still wait) */
    unsigned paused : 1;       /* the consumer paused the response */
    unsigned stop_send : 1;    /* on_sendable(0) was said */
    unsigned resp_done : 1;    /* the response ended (on_end ran) */
    unsigned replayed : 1;     /* already sent again once */
    unsigned reused : 1;       /* went out on a connection that carried others before */
    unsigned replay : 1;       /* wake: attach again to the same server */
    unsigned got_data : 1;     /* response bytes went up since the last on_read */
    unsigned peer_rst : 1;     /* the upstream sent RST_STREAM (else nghttp2 reset it) */
};

/* A new exchange: msg is the request head (HTTP/1.1 text, borrowed until
 * the exchange ends); body_end: no body bytes will come. NULL: no memory. */
mg_h2u_t *mg_h2u_new(mg_loop_t *loop, const mg_h1c_cbs_t *cb, void *ud, const mg_buf_t *msg,
                     int body_end);
/* Cancels the exchange if it runs (the stream is reset) and frees it
 * (later: safe from inside its callbacks). NULL-tolerant. */
void mg_h2u_free(mg_h2u_t *x);
/* Runs the exchange on a connection to server s of up (a shared one with
 * room, or a new one). MG_OK, or an error with *err saying why (nothing
 * was called). */
int mg_h2u_attach(mg_h2u_t *x, mg_up_t *up, int s, const char **err);
/* Whether the exchange waits for its connection to connect. */
int mg_h2u_connecting(const mg_h2u_t *x);
/* Queues body bytes. MG_OK or MG_ENOMEM (the exchange fails later). */
int mg_h2u_send(mg_h2u_t *x, const char *p, size_t n);
/* The body is complete; trailers (or NULL; borrowed until the exchange
 * ends) go up after it. */
int mg_h2u_end(mg_h2u_t *x, const mg_h1_head_t *trailers);
/* Stops/resumes taking the response (the consumer's backpressure). */
void mg_h2u_pause_read(mg_h2u_t *x, int pause);
/* The response's trailers once on_end runs, or NULL. */
static inline const mg_h1_head_t *mg_h2u_trailers(const mg_h2u_t *x)
{
    return x->trailers.nhdrs ? &x->trailers : NULL;
}
/* An owner's callback failing the exchange says why (static text). */
static inline void mg_h2u_reason(mg_h2u_t *x, mg_h1c_err_t code, const char *why)
{
    x->code = code;
    x->why = why;
}

#endif
