/* Outgoing HTTP/1.1 exchanges (gw.http.request) on pooled connections.
 *
 * Connections come from the upstream pools (upstream.h): one mg_up_t per
 * origin (scheme, verification, host, port), created lazily with a
 * synthesized config this module owns, so an https pool never hands out a
 * plain connection, nor a verified-https pool an unverified one. Responses are parsed by http1 in response mode. Names resolve
 * without blocking the loop: numeric addresses and "localhost" at once,
 * anything else through the loop's c-ares resolver (dns.h), the one
 * upstream and Redis host names use.
 *
 * Lifetime: an exchange (mg_hc_t) belongs to its caller. It ends exactly once:
 * either its `done` callback runs (from a top-level libev callback, never
 * from inside mg_hc_start), or the caller cancels it first. The caller then
 * frees it with mg_hc_free, which may be called from inside `done`. */
#ifndef MG_HCLIENT_H
#define MG_HCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http1.h"

typedef struct mg_loop mg_loop_t;
typedef struct mg_hc mg_hc_t;
typedef struct mg_hc_ctx mg_hc_ctx_t;

/* Error texts handed to `done` (compare by pointer or by text). */
extern const char mg_hc_err_timeout[];      /* "timeout" */
extern const char mg_hc_err_refused[];      /* "connection refused" */
extern const char mg_hc_err_invalid[];      /* "invalid response" */
extern const char mg_hc_err_too_large[];    /* "response too large" */
extern const char mg_hc_err_closed[];       /* "connection closed" (EOF mid-response) */
extern const char mg_hc_err_reset[];        /* "connection reset" */
extern const char mg_hc_err_resolve[];      /* "could not resolve host" */
extern const char mg_hc_err_nomem[];        /* "out of memory" */
/* TLS failures come as "tls handshake failed: <why>", e.g. "tls handshake
 * failed: certificate verify failed (self-signed certificate)". */

#define MG_HC_KEEPALIVE 256          /* idle connections kept per origin */
#define MG_HC_IDLE_TIMEOUT 60.0     /* seconds an idle connection is kept */
#define MG_HC_MAX_BODY (8u << 20)   /* default response size cap */

/* Per-worker state: the origins with their pools, and the resolver. Freed
 * by mg_hc_ctx_free; also shuts itself down from an ev_cleanup watcher when
 * the libev loop is destroyed first (idle connections closed, resolver
 * detached). */
mg_hc_ctx_t *mg_hc_ctx_new(mg_loop_t *loop);
/* Fails any exchange still running (without calling `done`: by then nobody
 * waits), closes every pooled connection. NULL-tolerant. */
void mg_hc_ctx_free(mg_hc_ctx_t *ctx);

typedef void (*mg_hc_done_fn)(mg_hc_t *hc, void *ud, const char *err);

/* What to send. host is borrowed for the call only (copied into the origin);
 * `request` is filled by the caller beforehand with mg_hc_request(). */
typedef struct mg_hc_opts {
    const char *host;        /* name or numeric address, no brackets */
    size_t host_len;
    int port;
    int head;                /* HEAD request: the response has no body */
    int idempotent;          /* may be replayed with its body written (h1client.h's rule) */
    double timeout;          /* seconds for resolve + connect + send + receive */
    size_t max_body;         /* response body cap */
    int tls;                 /* https: TLS to the origin */
    int tls_verify;          /* check its certificate chain (system store) and name */
} mg_hc_opts_t;

/* A new exchange, not started; NULL on OOM. */
mg_hc_t *mg_hc_new(mg_hc_ctx_t *ctx);
/* The buffer the caller writes the whole request into (head and body). */
mg_buf_t *mg_hc_request(mg_hc_t *hc);
/* Starts the exchange (the pooled connection's owner is the exchange;
 * `ud` is the caller's). Returns NULL when the exchange is under way (done
 * will run later), or an error text when it failed at once (done will not
 * run). */
const char *mg_hc_start(mg_hc_t *hc, const mg_hc_opts_t *o, mg_hc_done_fn done, void *ud);
/* Stops a running exchange: the connection is closed (a half-read response
 * never goes back to the pool), timers stopped, done never runs. No-op once
 * the exchange ended. */
void mg_hc_cancel(mg_hc_t *hc);
/* Cancels if needed and frees the exchange at the next loop iteration, so
 * results stay readable until the current callback returns. NULL-tolerant. */
void mg_hc_free(mg_hc_t *hc);

/* Results, valid after done(NULL) until the free takes effect. */
const mg_h1_head_t *mg_hc_head(const mg_hc_t *hc);
const mg_buf_t *mg_hc_body(const mg_hc_t *hc);

#endif
