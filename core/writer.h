/* The response writer and the request source: how a request answers its
 * client and reads from it without knowing the protocol that carries it
 * (h2o's h2o_ostream_t is the model). The HTTP/1 connection implements
 * both (h1writer.c), and so does an HTTP/2 stream (h2stream.c).
 *
 * A request holds `r->w` and `r->src` while it owns its client side; both
 * go NULL together when the client is gone or the request handed it on.
 *
 * Rules every writer keeps:
 *   - a head goes out whole or not at all (buf.h's sticky failure, rolled
 *     back): head() returns MG_ENOMEM with nothing queued;
 *   - the writer decides the framing (HTTP/1: Content-Length, chunked or
 *     close-delimited) from what the head says and from the request;
 *   - body() queues without blocking and sets `full` above its high mark;
 *     the request's `on_drained` is called once it is below its low mark. */
#ifndef MG_WRITER_H
#define MG_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "edits.h"
#include "http1.h"
#include "mg.h"

typedef struct mg_req mg_req_t;
struct mg_tun_end;

/* A producer above this many queued bytes pauses (body() sets `full`);
 * held bytes (response plugins) are bounded the same way. */
#define MG_WRITER_HIGH (256 * 1024)

/* What a response head says. Two kinds:
 *   forwarded (`fields` set): the upstream's (or a held) head: its fields
 *     minus hop-by-hop ones and those `edits` replace, then `edits`; the
 *     body length is known when `fields` carries Content-Length;
 *   generated (`fields` NULL): the gateway's own answer: Content-Type
 *     `ctype`, Content-Length `length`, and `extra`, CRLF-ended lines as a
 *     handler gave them.
 * Every head gets Date unless it has one. */
typedef struct mg_resp_head {
    int status;
    mg_str_t reason;               /* p NULL: the standard reason phrase */
    const mg_h1_head_t *fields;
    const mg_edits_t *edits;       /* or NULL */
    const char *ctype;             /* generated only, or NULL */
    const char *extra;             /* generated only, or NULL */
    size_t length;                 /* generated only */
} mg_resp_head_t;

typedef struct mg_writer mg_writer_t;

typedef struct mg_writer_ops {
    /* Queues the head of r's response; with body != NULL the response is
     * complete (head, body and end in one piece, all or nothing). Returns
     * the bytes queued, or MG_ENOMEM with nothing queued. */
    ssize_t (*head)(mg_writer_t *w, mg_req_t *r, const mg_resp_head_t *h, const char *body,
                    size_t n);
    /* Queues body bytes (framed as head() decided). Bytes queued, or
     * MG_ENOMEM (the response is broken: abort). Sets w->full above the
     * high mark. */
    ssize_t (*body)(mg_writer_t *w, const char *p, size_t n);
    /* The body is complete; `trailers` (or NULL) end a chunked body and
     * are dropped otherwise. Bytes queued, or MG_ENOMEM. */
    ssize_t (*end)(mg_writer_t *w, const mg_h1_head_t *trailers);
    /* An interim response (100 Continue), sent at once. */
    void (*interim)(mg_writer_t *w, int status);
    /* Sends what is queued as far as the client takes it now. */
    void (*flush)(mg_writer_t *w);
    /* No keep-alive: the client side ends once what is queued is sent. */
    void (*close)(mg_writer_t *w);
    /* Cuts the response off now (the request is aborted). */
    void (*abort)(mg_writer_t *w);
    /* After a 101: the client's transport leaves the writer for a tunnel
     * (socket, TLS, queued bytes, bytes read past the request). The
     * request is detached, not aborted. */
    void (*take_over)(mg_writer_t *w, struct mg_tun_end *end);
} mg_writer_ops_t;

struct mg_writer {
    const mg_writer_ops_t *ops;
    unsigned full : 1;             /* above the high mark after the last body() */
};

typedef struct mg_reqsrc mg_reqsrc_t;

typedef struct mg_reqsrc_ops {
    /* Stops (1) or restarts (0) reading the request body (backpressure). */
    void (*pause)(mg_reqsrc_t *s, int pause);
    /* The request is finished with its client side: the next request on
     * it may start (keepalive) or the client side ends. `head` (or NULL):
     * the request's head store, which the source may keep for its next
     * request; returns 1 if it took it. */
    int (*done)(mg_reqsrc_t *s, int keepalive, mg_h1_head_t *head);
} mg_reqsrc_ops_t;

struct mg_reqsrc {
    const mg_reqsrc_ops_t *ops;
    unsigned paused : 1;           /* body reading paused by the request */
};

#endif
