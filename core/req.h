/* The request object: its head (views into an owned store), routing result,
 * body accounting, response state, Lua state (coroutine, the one
 * pending-operation slot, header edits) and access-log data. Dispatches to
 * the Lua runtime, a handler or the proxy (loop->proxy_handler); answers
 * through the response writer its client side gave it (writer.h), never
 * through a connection's buffers. */
#ifndef MG_REQ_H
#define MG_REQ_H

#include <ev.h>
#include <stdint.h>

#include "buf.h"
#include "edits.h"
#include "h1client.h"
#include "http1.h"
#include "loop.h"
#include "writer.h"

typedef struct mg_req mg_req_t;

/* The upstream exchange producing r's response (set by proxy.c, which sits
 * above the request): while r->up is set the request body goes to it, and
 * it is cancelled when the request ends first. */
typedef struct mg_req_exchange_ops {
    void (*body)(mg_req_t *r, const char *p, size_t n);
    void (*body_done)(mg_req_t *r);
    void (*cancel)(mg_req_t *r);
} mg_req_exchange_ops_t;

/* What a request coroutine waits for (the pending-operation slot). */
enum {
    MG_WAIT_SLEEP = 1,   /* gw.sleep */
    MG_WAIT_BODY,        /* req:body() */
    MG_WAIT_HEAD,        /* the upstream response head (response plugins) */
    MG_WAIT_DONE,        /* the response to end (log phase) */
    MG_WAIT_EXT,         /* a binding's own operation (Redis, HTTP) */
};

/* The single pending-operation slot of a request coroutine (STYLE.md b).
 * Armed by a binding right before it yields; cleared before resuming. */
typedef struct mg_wait {
    unsigned armed : 1;
    int kind;                     /* MG_WAIT_* */
    void (*cancel)(mg_req_t *r);  /* extra cleanup on abort, or NULL */
    ev_timer timer;               /* sleeps, and zero-delay wake-ups */
    int status;                   /* MG_OK or an MG_E* code for the continuation */
    const char *err;              /* static error text */
    void *ticket;                 /* binding-owned (redis ticket, http exchange) */
} mg_wait_t;

struct mg_req {
    mg_loop_t *loop;
    /* The client side: the response writer and the request source (its
     * body). NULL once the client is gone or the request finished (a
     * request finished inside Lua keeps them until Lua returned:
     * mg_req_release_conn). */
    mg_writer_t *w;
    mg_reqsrc_t *src;
    mg_gen_t *gen;            /* generation this request runs on (ref held) */
    mg_h1_head_t *head;       /* owned; returned to conn->spare when done */
    int route;                /* index into gen->cfg->routes, or -1 */
    mg_str_t path, query;     /* views into head->store */
    double t_start;
    char remote[64];          /* the client (after trusted_proxies' X-Forwarded-For) */
    char peer[64];            /* the address that connected (after a PROXY header) */

    /* request body, as it arrives from the client */
    uint64_t body_bytes;
    mg_buf_t body_buf;        /* body held while Lua runs before the proxy starts */
    unsigned has_body : 1;    /* Content-Length > 0 or chunked */
    unsigned body_done : 1;   /* message complete seen */
    unsigned http10 : 1;      /* client spoke HTTP/1.0 */
    unsigned https : 1;       /* came over a TLS listener (req.scheme, X-Forwarded-Proto) */
    unsigned keepalive : 1;   /* client wants to keep the connection */
    unsigned admin_listener : 1; /* came in on the admin listener */
    unsigned want_body : 1;   /* req:body() waits for the rest */

    /* response */
    int status;
    uint64_t resp_body_bytes; /* body bytes queued to the client */
    uint64_t resp_bytes;      /* all bytes queued (head + body) */
    unsigned done : 1;        /* finished (or aborted); freed once Lua lets go */
    unsigned aborted : 1;
    unsigned rs : 3;          /* the response phase: MG_RS_* (resphase.h) */
    unsigned stage_replies : 1; /* generated responses wait for the response phase */
    unsigned own_held : 1;    /* the held response is a staged reply, not the upstream's */

    /* upstream */
    /* the exchange in progress: &exchange (HTTP/1.1), or h2x (an h2
     * upstream); NULL when none runs */
    void *up;
    const mg_req_exchange_ops_t *upx; /* its operations (r->up set) */
    mg_h1c_t exchange;        /* the upstream exchange (h1client.h) */
    struct mg_h2u *h2x;       /* an h2 upstream's exchange (h2client.h; proxy.c frees it), or NULL */
    mg_h1_head_t *res_trailers; /* the response's trailers, held with a held response (owned) */
    mg_h1_head_t *req_trailers; /* the request's trailers (mg_req_trailer_store; owned), or NULL */
    /* The client's write queue drained below its low mark: the producer of
     * the response body (set by the proxy) may go on. NULL: nobody waits. */
    void (*on_drained)(mg_req_t *r);
    int upstream;             /* index into gen->ups */
    char upstream_addr[80];   /* for the access log */
    int tries;                /* failed connects so far */
    uint64_t tried;           /* servers already tried (bit per index) */
    mg_buf_t uhead;           /* the request head as sent upstream */
    unsigned req_chunked : 1; /* body goes up chunk-encoded */
    unsigned upgrading : 1;   /* went up with Upgrade: a 101 answer makes a tunnel */
    unsigned websocket : 1;   /* ... and the protocol is websocket */
    unsigned tunnel : 1;      /* the connections became a tunnel (ends at its close) */
    uint64_t tun_bytes[2];    /* bytes the tunnel relayed: client->upstream, upstream->client */
    mg_h1_head_t *res_head;   /* held response head (response plugins) */
    mg_buf_t hold;            /* held response body bytes, framed */

    /* Lua */
    lua_State *co;            /* the request coroutine, or NULL */
    int co_ref;               /* registry ref anchoring co */
    void **lua_handle;        /* the req userdata's pointer, NULLed at free */
    void **res_handle;
    mg_wait_t wait;
    /* Drops the coroutine and cancels its wait when the request is aborted
     * (mg_lrt_abort, set when Lua starts on this request); NULL: no Lua. */
    void (*lua_abort)(mg_req_t *r);
    unsigned in_lua : 1;      /* inside mg_lrt_resume */
    unsigned lua_dead : 1;    /* aborted while in Lua: clean up after resume */
    unsigned killed : 1;      /* instruction budget exhausted */
    unsigned log_after_error : 1; /* the log phase runs in a second coroutine after a Lua error */
    unsigned freeing : 1;     /* free scheduled */
    unsigned keep_res_head : 1; /* copy the response head for the log phase */
    unsigned script : 1;      /* `moongate --script`: not an HTTP request */
    unsigned admin : 1;       /* an admin API request: not logged or counted */
    unsigned instr_ticks;     /* count-hook ticks since the last resume */
    mg_edits_t edits;         /* request header edits */
    mg_edits_t res_edits;     /* response header edits */
    char *path_override;      /* req:set_path */
    char *request_id;         /* the request_id plugin's id, for the access log (owned) */
    struct mg_req *next_free; /* loop->free_reqs */
    uint64_t reload_ok0, reload_failed0; /* POST /reload: counters when asked */
};

/* Creates a request on the current generation; `head` (or NULL: a new
 * one) becomes its head store. The caller sets its client side (w, src,
 * remote, peer, https, admin_listener). */
mg_req_t *mg_req_new(mg_loop_t *loop, mg_h1_head_t *head);
/* The head is complete: route and start Lua, a handler or the proxy. */
void mg_req_dispatch(mg_req_t *r);
void mg_req_body(mg_req_t *r, const char *p, size_t n);
void mg_req_body_done(mg_req_t *r);
/* Where the client side puts the request's trailers (a chunked body's, an
 * HTTP/2 client's trailing HEADERS) before mg_req_body_done: r's own store,
 * made on first use; NULL without memory. An h2 upstream gets them as
 * trailing HEADERS after the body. */
mg_h1_head_t *mg_req_trailer_store(mg_req_t *r);

/* Queues a complete response (head and body) and finishes the request. */
void mg_req_respond(mg_req_t *r, int status, const char *ctype, const char *body, size_t n,
                    const char *extra_headers);
/* Like mg_req_respond, but holds the response for the route's response
 * plugins (head in res_head, body in hold); mg_proxy_send_held sends it.
 * Replaces a response held before. Begin makes the held head (status,
 * Content-Type `ctype` if not NULL, Content-Length n) and returns it for
 * the caller to add its headers to (mg_h1_head_add); end holds the body.
 * Begin returns NULL and end MG_ENOMEM when the response cannot be held
 * (no client, no memory): the caller answers with mg_req_respond. */
mg_h1_head_t *mg_req_stage_begin(mg_req_t *r, int status, const char *ctype, size_t n);
int mg_req_stage_end(mg_req_t *r, const char *body, size_t n);
/* gRPC calls (req_grpc.c). 1 if r is one: its Content-Type starts with
 * application/grpc (never an admin request, nor one whose head is not
 * complete). */
int mg_req_grpc_call(const mg_req_t *r);
/* If r is a gRPC call and status an error (>= 400): fills *h with the
 * gRPC answer (200, Content-Type, grpc-status, grpc-message from `body`,
 * the lines of `extra` but Content-Type; no body), its lines kept in
 * `lines` (the caller frees it), and returns 1; -1 out of memory; 0 for
 * any other answer (h untouched). */
int mg_req_grpc_head(const mg_req_t *r, int status, const char *extra, const char *body,
                     size_t n, mg_resp_head_t *h, mg_buf_t *lines);
/* A held reply (own_held) that is an error to a gRPC call goes out the
 * gRPC way now, with the response plugins' edits, and finishes r:
 * returns 1. 0: not such a reply (mg_proxy_send_held sends it). */
int mg_req_grpc_send_held(mg_req_t *r);
/* {"error": msg} with the status. */
void mg_req_error(mg_req_t *r, int status, const char *msg);
/* Body reading: stop (1) or go on (0); no-op without a client. */
static inline void mg_req_pause_body(mg_req_t *r, int pause)
{
    if (r->src && !pause != !r->src->paused)
        r->src->ops->pause(r->src, pause);
}
/* Cuts the client off now (a response that cannot be completed): aborts r. */
static inline void mg_req_cut(mg_req_t *r)
{
    if (r->w)
        r->w->ops->abort(r->w);
}
/* Request body bytes still to come that may be read and dropped after the
 * answer, so an HTTP/1 connection stays usable (as nginx discards a body
 * it did not read); more, or an unknown amount, and the connection closes. */
#define MG_REQ_DISCARD_MAX (64 * 1024)
/* The rest of r's body (r->body_done not set yet) can be discarded: an
 * HTTP/1 request (an HTTP/2 stream is reset instead: writer close) whose
 * length is known (Content-Length, not chunked), at most
 * MG_REQ_DISCARD_MAX bytes are missing, and no 100 Continue is awaited
 * (such a client may never send the body it announced). */
static inline int mg_req_discard_body(const mg_req_t *r)
{
    const mg_h1_head_t *h = r->head;
    if (r->body_done || h == NULL || h->http_major != 1 ||
        (h->flags & (MG_H1_CHUNKED | MG_H1_EXPECT_100)) ||
        !(h->flags & MG_H1_HAS_CL) || r->body_bytes > h->content_length)
        return 0;
    return h->content_length - r->body_bytes <= MG_REQ_DISCARD_MAX;
}
/* Response fully queued: log it and release the connection for the next
 * (once Lua has returned, if it runs now). */
void mg_req_finish(mg_req_t *r);
/* Hands a finished request's connection on to its next request, unless
 * that waits for Lua to return. */
void mg_req_release_conn(mg_req_t *r);

/* The request layer's side of the Lua runtime (req_lua.c): these run Lua
 * through lrt and act on the outcome (a 500, cutting off a started
 * response, the log phase after an error, handing the connection on,
 * freeing the request). */
/* Starts r's coroutine on the route's chain. */
void mg_req_lua_start(mg_req_t *r, int chain_ref);
/* Resumes r's waiting coroutine (a binding's completion callback). */
void mg_req_resume(mg_req_t *r, int nargs);
/* Runs a route match function: 1 if it matched; a Lua error answers 500
 * (r->done) and counts as no match. */
int mg_req_lua_match(mg_req_t *r, int ref);
/* The client went away: cancel everything and free. */
void mg_req_abort(mg_req_t *r);
/* Resumes r's waiting coroutine once the current libev callback has
 * returned, in the same loop iteration (safe from any callback, including
 * ones running inside Lua or hiredis): feeds the wait timer, whose callback
 * resumes. No-op if nothing waits. */
void mg_req_wake(mg_req_t *r);
/* Frees r once it is done and no coroutine holds it. */
void mg_req_maybe_free(mg_req_t *r);
/* The protocol the client asks to upgrade to (the first one its Upgrade
 * header lists, as sent), only when its Connection header carries the
 * `upgrade` token; else p == NULL. */
mg_str_t mg_req_upgrade(const mg_req_t *r);
/* Value of the request header `name` (edits included), or p == NULL. */
mg_str_t mg_req_header(const mg_req_t *r, const char *name);

/* The balancing hash of r for an upstream's hash_key ("uri",
 * "header:NAME" or "remote_addr"); a missing header hashes as "". */
uint32_t mg_req_hash(const mg_req_t *r, const char *key);

const char *mg_status_reason(int status);

/* A response with this status has no body and no Content-Length (1xx, 204,
 * 304). */
static inline int mg_status_no_length(int status)
{
    return status == 204 || status == 304 || (status >= 100 && status < 200);
}

/* The response phase's states and transitions (r->rs). */
#include "resphase.h"

#endif
