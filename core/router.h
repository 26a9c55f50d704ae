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
/* The path routes are matched against, as nginx matches locations: %XX
 * decoded, "." and ".." segments resolved, runs of slashes merged. Without
 * it "/public/../admin/x" or "/%61dmin/x" would skip the plugins of an
 * "/admin/" route while the upstream, which normalizes, serves /admin/x.
 * p[0..n) is a path starting with "/"; out has room for n bytes. Returns 1
 * and the length in *outn when out holds a normalized path, 0 when p is
 * normal already (out unused), -1 for a path to refuse (a bad %XX, %00, a
 * ".." above the root). */
int mg_router_normalize(const char *p, size_t n, char *out, size_t *outn);
/* True when mg_router_normalize would leave p as it is (no %, //, /. in
 * it): callers can skip finding room for the normalized copy. */
int mg_router_path_is_normal(const char *p, size_t n);
/* True if host matches the pattern ("example.com" or "*.example.com"). */
int mg_router_host_match(const char *pattern, mg_str_t host);

#endif
