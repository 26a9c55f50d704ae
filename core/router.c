#include "router.h"

#include <string.h>

int mg_router_host_match(const char *pattern, mg_str_t host)
{
    size_t pn = strlen(pattern);
    if (pn >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com" matches "a.example.com", not "example.com" */
        size_t sn = pn - 1; /* ".example.com" */
        if (host.n <= sn)
            return 0;
        mg_str_t tail = { host.p + host.n - sn, sn };
        return mg_str_eq_ci(tail, pattern + 1, sn);
    }
    return mg_str_eq_ci(host, pattern, pn);
}

static int route_matches(const mg_cfg_route_t *rt, const mg_route_input_t *in)
{
    if (rt->path && !(in->path.n == strlen(rt->path) && memcmp(in->path.p, rt->path, in->path.n) == 0))
        return 0;
    if (rt->prefix &&
        !(in->path.n >= rt->prefix_len && memcmp(in->path.p, rt->prefix, rt->prefix_len) == 0))
        return 0;
    if (rt->methods && !(in->method >= 0 && in->method < 64 && (rt->methods >> in->method) & 1))
        return 0;
    if (rt->host && !mg_router_host_match(rt->host, in->host))
        return 0;
    for (int i = 0; i < rt->nheaders; i++) {
        mg_str_t v = in->header ? in->header(in->ud, rt->headers[i].name) : (mg_str_t){ NULL, 0 };
        size_t want = strlen(rt->headers[i].value);
        if (v.p == NULL || v.n != want || memcmp(v.p, rt->headers[i].value, want) != 0)
            return 0;
    }
    if (rt->match_ref >= 0 && !(in->call_match && in->call_match(in->ud, rt->match_ref)))
        return 0;
    return 1;
}

int mg_router_match(const mg_cfg_t *cfg, const mg_route_input_t *in)
{
    for (int k = 0; k < cfg->nroutes; k++) {
        int idx = cfg->order[k];
        if (route_matches(&cfg->routes[idx], in))
            return idx;
    }
    return -1;
}
