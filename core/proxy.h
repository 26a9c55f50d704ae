/* The proxy exchange: serializes the request for the upstream, streams the
 * request body up and the response down with backpressure both ways,
 * retries failed connects on the next server, maps failures to 502/504. */
#ifndef MG_PROXY_H
#define MG_PROXY_H

#include <stddef.h>

typedef struct mg_req mg_req_t;

/* Proxies r to r->upstream (the route's, or the one Lua chose), with the
 * body bytes that arrived while Lua ran (loop->proxy_handler). May finish
 * r (error response). */
void mg_proxy_run(mg_req_t *r);
/* Starts proxying r to route's upstream. May finish r (error response). */
void mg_proxy_start(mg_req_t *r, int upstream);
void mg_proxy_body(mg_req_t *r, const char *p, size_t n);
void mg_proxy_body_done(mg_req_t *r);
/* Response plugins are done: write the held head (with their edits) and
 * the body held so far, then stream the rest. */
void mg_proxy_send_held(mg_req_t *r);
/* The client is gone: drop the upstream connection. */
void mg_proxy_abort(mg_req_t *r);

#endif
