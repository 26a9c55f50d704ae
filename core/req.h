/* The request object: its head (views into an owned store), routing result,
 * body accounting, response state and access-log data. Dispatches to a
 * handler or to the proxy; builds responses and asks conn to write them. */
#ifndef MG_REQ_H
#define MG_REQ_H

#include <stdint.h>

#include "buf.h"
#include "http1.h"
#include "loop.h"

typedef struct mg_upconn mg_upconn_t;

typedef struct mg_req {
    mg_loop_t *loop;
    mg_conn_t *conn;          /* NULL once the client is gone */
    mg_gen_t *gen;            /* generation this request runs on (ref held) */
    mg_h1_head_t *head;       /* owned; returned to conn->spare when done */
    int route;                /* index into gen->cfg->routes, or -1 */
    mg_str_t path, query;     /* views into head->store */
    double t_start;

    /* request body, as it arrives from the client */
    uint64_t body_bytes;
    unsigned has_body : 1;    /* Content-Length > 0 or chunked */
    unsigned body_done : 1;   /* message complete seen */
    unsigned http10 : 1;      /* client spoke HTTP/1.0 */
    unsigned keepalive : 1;   /* client wants to keep the connection */

    /* response */
    int status;
    uint64_t resp_body_bytes; /* body bytes queued to the client */
    uint64_t resp_bytes;      /* all bytes queued (head + body) */
    unsigned resp_started : 1;/* head queued: no more error pages possible */
    unsigned resp_chunked : 1;/* we chunk-encode the body for the client */
    unsigned resp_close : 1;  /* close-delimited body for the client */
    unsigned done : 1;        /* finished; waiting to be freed */

    /* upstream */
    mg_upconn_t *up;          /* the exchange in progress */
    int upstream;             /* index into gen->ups */
    char upstream_addr[80];   /* for the access log */
    int tries;                /* failed connects so far */
    int stale_retries;        /* reused connections found dead */
    uint64_t tried;           /* servers already tried (bit per index) */
    mg_buf_t uhead;           /* the request head as sent upstream */
    unsigned req_chunked : 1; /* body goes up chunk-encoded */
} mg_req_t;

/* Creates a request for conn on the current generation. */
mg_req_t *mg_req_new(mg_conn_t *c);
/* The head is complete: route and start the handler or the proxy.
 * Returns 0 to go on parsing, -1 when an error response was queued. */
int mg_req_dispatch(mg_req_t *r);
void mg_req_body(mg_req_t *r, const char *p, size_t n);
void mg_req_body_done(mg_req_t *r);

/* Queues a complete response (head and body) and finishes the request. */
void mg_req_respond(mg_req_t *r, int status, const char *ctype, const char *body, size_t n,
                    const char *extra_headers);
/* {"error": msg} with the status. */
void mg_req_error(mg_req_t *r, int status, const char *msg);
/* Appends "Connection:"/"Date"-style common trailer headers and CRLF. */
void mg_req_end_head(mg_req_t *r, mg_buf_t *out);
/* Response fully queued: log it and release the connection for the next. */
void mg_req_finish(mg_req_t *r);
/* The client went away: cancel everything and free. */
void mg_req_abort(mg_req_t *r);
/* Value of the first header named `name`, or an empty view with p == NULL. */
mg_str_t mg_req_header(const mg_req_t *r, const char *name);

const char *mg_status_reason(int status);

#endif
