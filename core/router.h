/* Route matching: exact paths, then the longest prefix, then routes without
 * a path, then Lua match functions, each filtered by host, methods and
 * headers (PRODUCT.md). */
#ifndef MG_ROUTER_H
#define MG_ROUTER_H

#include "config.h"
#include "mg.h"

typedef struct mg_req mg_req_t;

/* What the router needs to know about a request. */
typedef struct mg_route_input {
    mg_str_t path;
    mg_str_t host;            /* Host header without the port */
    int method;               /* llhttp method */
    mg_str_t (*header)(void *ud, const char *name);
    int (*call_match)(void *ud, int ref);   /* Lua match function: 1 = match */
    void *ud;
} mg_route_input_t;

/* Index of the first matching route in cfg->routes, or -1. */
int mg_router_match(const mg_cfg_t *cfg, const mg_route_input_t *in);
/* True if host matches the pattern ("example.com" or "*.example.com"). */
int mg_router_host_match(const char *pattern, mg_str_t host);

#endif
