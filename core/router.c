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

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int mg_router_path_is_normal(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/')
        return 1; /* not an origin-form path: nothing to resolve */
    for (size_t i = 0; i < n; i++)
        if (p[i] == '%' || (p[i] == '/' && i + 1 < n && (p[i + 1] == '/' || p[i + 1] == '.')))
            return 0;
    return 1;
}

int mg_router_normalize(const char *p, size_t n, char *out, size_t *outn)
{
    /* the common case costs one scan: nothing to decode or resolve */
    if (mg_router_path_is_normal(p, n))
        return 0;
    /* decode into out, then resolve segments in place (it only shrinks) */
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)p[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        out[d++] = (char)c;
    }
    size_t r = 0, w = 0;
    while (r < d) {
        while (r < d && out[r] == '/') /* out[r] is '/' here; merge runs */
            r++;
        size_t s = r;
        while (r < d && out[r] != '/')
            r++;
        size_t len = r - s;
        int last = r >= d;
        if (len == 0) { /* trailing slash */
            out[w++] = '/';
            break;
        }
        if (len == 1 && out[s] == '.') {
            if (last)
                out[w++] = '/';
            continue;
        }
        if (len == 2 && out[s] == '.' && out[s + 1] == '.') {
            if (w == 0)
                return -1; /* above the root */
            while (out[w - 1] != '/')
                w--;
            w--;
            if (last)
                out[w++] = '/';
            continue;
        }
        out[w++] = '/';
        memmove(out + w, out + s, len);
        w += len;
    }
    if (w == 0)
        out[w++] = '/';
    *outn = w;
    return 1;
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
