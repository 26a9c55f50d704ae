/* HTTP/2 from clients: one connection (h2conn.c) carrying many streams,
 * each stream an ordinary request (h2stream.c) with its own response
 * writer and request source (writer.h). libnghttp2 does the framing,
 * HPACK and flow control; this module owns the socket, the timers, the
 * stream bookkeeping and the flood limits.
 *
 * conn.c hands a socket over when a plain connection starts with the
 * HTTP/2 preface or TLS agreed on "h2" (mg_h2_accept); from then on the
 * connection is this module's. */
#ifndef MG_H2CONN_H
#define MG_H2CONN_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http1.h"
#include "sock.h"
#include "writer.h"

typedef struct mg_loop mg_loop_t;
typedef struct mg_req mg_req_t;
typedef struct nghttp2_session nghttp2_session;
typedef struct mg_h2c mg_h2c_t;

/* One stream: a request in the making (its head being decoded), then a
 * request's client side. Owned by its connection; freed (deferred) once
 * nghttp2 closed it and no request points at it. */
typedef struct mg_h2s {
    mg_writer_t w;            /* the request's response writer */
    mg_reqsrc_t src;          /* the request's source; src.paused: body held back */
    mg_h2c_t *c;
    int32_t id;
    mg_req_t *req;            /* the request while it owns this client side, or NULL */
    mg_h1_head_t *head;       /* the request head being decoded; the request's once made */
    size_t hbytes;            /* decoded header bytes so far (limits) */
    double t0;                /* when its HEADERS began (header_timeout) */
    int err_status;           /* the head broke a limit: answer this (414, 431, 400) */
    const char *err_reason;   /* static */
    mg_buf_t cookie;          /* cookie crumbs, joined with "; " (RFC 9113 8.2.3) */
    mg_h1_head_t *rhead;      /* the response head waiting for its HEADERS frame */
    mg_h1_head_t *trl;        /* response trailers, sent when the body ends */
    mg_buf_t out;             /* response body bytes nghttp2 has not taken yet */
    size_t unacked;           /* body bytes received while paused: window not reopened */
    size_t discarded;         /* body bytes dropped after the request was done */
    unsigned authority : 1;   /* :authority seen (it is the Host) */
    unsigned headers_done : 1;/* the request head is complete */
    unsigned end_stream : 1;  /* the client's side ended (END_STREAM seen) */
    unsigned head_pending : 1;/* rhead waits to be submitted */
    unsigned head_sent : 1;   /* the response HEADERS were submitted */
    unsigned ended : 1;       /* end() was called: out holds the body's last bytes */
    unsigned deferred : 1;    /* nghttp2 waits for body bytes (NGHTTP2_ERR_DEFERRED) */
    unsigned reset_after : 1; /* its body is unread: dropped, the stream reset past a bound */
    unsigned closed : 1;      /* nghttp2 closed the stream */
    unsigned drained : 1;     /* out went below the low mark: tell the producer */
    unsigned eof_sent : 1;    /* the response's END_STREAM went out */
    struct mg_h2s *prev, *next;   /* c->streams */
    struct mg_h2s *pend;      /* c->pending: a head or body waiting for the next send */
    unsigned in_pend : 1;
} mg_h2s_t;

struct mg_h2c {
    mg_loop_t *loop;
    nghttp2_session *ng;
    mg_sock_t sock;
    ev_io rio, wio;
    ev_idle kick;             /* never started: fed an event to send after a callback */
    ev_timer timer;
    mg_buf_t wbuf;            /* frames nghttp2 produced that the socket has not taken */
    char remote[64];          /* the client (after a PROXY header) */
    mg_h2s_t *streams;        /* every stream with our state */
    mg_h2s_t *pending;        /* streams with a head or bytes to hand to nghttp2 */
    int nstreams;             /* streams counted against h2_max_streams */
    int max_streams;          /* limits.h2_max_streams when the connection started */
    double last_read, last_write, last_busy;
    double period;            /* the timer's period while streams are open */
    double rst_tokens, ctl_tokens, tokens_at; /* flood budgets (h2conn.c) */
    struct mg_h2c *prev, *next;   /* loop->h2conns */
    unsigned https : 1;
    unsigned admin : 1;
    unsigned closed : 1;
    unsigned kicked : 1;      /* a send is queued on `kick` (ev_feed_event) */
    unsigned in_ng : 1;       /* inside nghttp2 (mem_recv or mem_send): no mem_send now */
    unsigned wio_on : 1;
    unsigned rio_on : 1;
    unsigned settings_patch : 1; /* the first SETTINGS frame still has to go out */
    unsigned stopping : 1;    /* GOAWAY sent: close once the streams are done */
    unsigned served : 1;      /* a request head arrived: idle_timeout from now on */
    unsigned calm : 1;        /* a flood was seen: GOAWAY ENHANCE_YOUR_CALM */
    unsigned lingering : 1;   /* the session is over: last bytes out, then close */
    unsigned shut : 1;        /* ... half-closed, draining the client for a moment */
};

/* mg_h2_accept flags */
enum { MG_H2_F_HTTPS = 1, MG_H2_F_ADMIN = 2 };

/* Takes over a client connection that speaks HTTP/2: *sock's fd and TLS
 * session become the new connection's (the caller forgets them); in[0..n)
 * are the bytes already read (the preface first). `remote` is the client.
 * On failure the socket is closed. */
void mg_h2_accept(mg_loop_t *loop, mg_sock_t *sock, const char *remote, int flags,
                  const char *in, size_t n);
/* Graceful stop: every HTTP/2 connection gets GOAWAY and closes once its
 * streams are done. */
void mg_h2_stop_all(mg_loop_t *loop);
/* While stopping: closes the connections with no stream left. */
void mg_h2_close_idle_all(mg_loop_t *loop);
/* Closes every HTTP/2 connection now (teardown). */
void mg_h2_close_all(mg_loop_t *loop);

/* --- between h2conn.c and h2stream.c ------------------------------------- */

/* A send is due: at once when safe, else right after the current callback. */
void mg_h2c_kick(mg_h2c_t *c);
/* Puts s on the list of streams whose head or body nghttp2 must see. */
void mg_h2c_pend(mg_h2s_t *s);

/* h2stream.c: the stream as a request's client side. */
extern const mg_writer_ops_t mg_h2s_writer_ops;
extern const mg_reqsrc_ops_t mg_h2s_src_ops;
/* A decoded request header (pseudo-headers included); 0, or an nghttp2
 * error code to return from the callback. */
int mg_h2s_header(mg_h2s_t *s, const uint8_t *name, size_t nn, const uint8_t *value, size_t vn);
/* A decoded field of the request's trailers (kept for an h2 upstream);
 * 0 or an nghttp2 error code. */
int mg_h2s_trailer(mg_h2s_t *s, const uint8_t *name, size_t nn, const uint8_t *value,
                   size_t vn);
/* The request head is complete: make the request and dispatch it. */
void mg_h2s_start(mg_h2s_t *s);
/* Submits what s has waiting (its response head, resumed body). */
void mg_h2s_submit(mg_h2s_t *s);
/* The stream went away (nghttp2 closed it): the request loses its client. */
void mg_h2s_detach(mg_h2s_t *s);
void mg_h2s_free(mg_h2s_t *s);

#endif
