/* Config loading: runs the config file in a protected call, then walks the
 * returned table into mg_cfg_t. Every check names the option; the line is
 * found by locating the offending text in the file. */
#include "config.h"
#include "mg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

typedef struct walk {
    mg_cfg_t *cfg;
    char needle[128];    /* text to look for in the file when reporting */
} walk_t;

static char *xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Raises a config error. `needle` locates the line (a key or a value). */
static int MG_LJMP cfg_fail(lua_State *L, walk_t *w, const char *needle, const char *fmt, ...)
{
    snprintf(w->needle, sizeof w->needle, "%s", needle ? needle : "");
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

int mg_cfg_parse_addr(const char *text, mg_addr_t *out, char *err, size_t errlen)
{
    char host[256] = "", port[16] = "";
    const char *colon;
    memset(out, 0, sizeof *out);
    snprintf(out->text, sizeof out->text, "%s", text);
    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (rb == NULL || rb[1] != ':' || (size_t)(rb - text - 1) >= sizeof host)
            goto bad;
        memcpy(host, text + 1, (size_t)(rb - text - 1));
        snprintf(port, sizeof port, "%s", rb + 2);
    } else if ((colon = strrchr(text, ':')) != NULL) {
        if ((size_t)(colon - text) >= sizeof host)
            goto bad;
        memcpy(host, text, (size_t)(colon - text));
        snprintf(port, sizeof port, "%s", colon + 1);
    } else {
        snprintf(port, sizeof port, "%s", text);
    }
    if (port[0] == '\0')
        goto bad;
    if (strlen(port) > 5)
        goto bad;
    for (const char *c = port; *c; c++)
        if (!isdigit((unsigned char)*c))
            goto bad;
    long pn = strtol(port, NULL, 10);
    if (pn <= 0 || pn > 65535)
        goto bad;
    if (host[0] == '\0' || strcmp(host, "*") == 0)
        snprintf(host, sizeof host, "0.0.0.0");
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve '%s': %s", text, gai_strerror(rc));
        return -1;
    }
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
bad:
    snprintf(err, errlen, "invalid address '%s' (want host:port)", text);
    return -1;
}

/* --- typed field readers; the table is at the top of the stack ---------- */

static void check_keys(lua_State *L, walk_t *w, const char *where, const char *const *allowed)
{
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            continue; /* array part, checked by the caller */
        const char *k = lua_tostring(L, -1);
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = 1;
        if (!ok)
            cfg_fail(L, w, k, "%s: unknown option '%s'", where, k);
    }
}

static int field_type(lua_State *L, const char *key)
{
    lua_getfield(L, -1, key);
    int t = lua_type(L, -1);
    lua_pop(L, 1);
    return t;
}

static char *opt_string(lua_State *L, walk_t *w, const char *where, const char *key,
                        const char *def)
{
    lua_getfield(L, -1, key);
    char *r;
    if (lua_isnil(L, -1))
        r = xstrdup(def);
    else if (lua_type(L, -1) == LUA_TSTRING)
        r = xstrdup(lua_tostring(L, -1));
    else
        return (char *)(intptr_t)cfg_fail(L, w, key, "%s.%s: expected a string, got %s", where,
                                           key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return r;
}

static double opt_number(lua_State *L, walk_t *w, const char *where, const char *key, double def,
                         double min)
{
    lua_getfield(L, -1, key);
    double r = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            cfg_fail(L, w, key, "%s.%s: expected a number, got %s", where, key,
                     luaL_typename(L, -1));
        r = lua_tonumber(L, -1);
        if (r < min)
            cfg_fail(L, w, key, "%s.%s: must be at least %f", where, key, min);
    }
    lua_pop(L, 1);
    return r;
}

/* opt_number for counts: an integral value (1e3 is fine, 1.5 is not). */
static int opt_count(lua_State *L, walk_t *w, const char *where, const char *key, int def,
                     int min)
{
    double r = opt_number(L, w, where, key, def, min);
    if (r != (double)(long)r || r > 1e9)
        cfg_fail(L, w, key, "%s.%s: expected a whole number, got %f", where, key, r);
    return (int)r;
}

static void expect_table(lua_State *L, walk_t *w, const char *where, const char *key)
{
    if (!lua_istable(L, -1))
        cfg_fail(L, w, key, "%s: expected a table, got %s", where, luaL_typename(L, -1));
}

/* --- sections ------------------------------------------------------------- */

static void parse_addr_field(lua_State *L, walk_t *w, const char *where, const char *text,
                             mg_addr_t *out)
{
    char err[256];
    if (mg_cfg_parse_addr(text, out, err, sizeof err) != 0)
        cfg_fail(L, w, text, "%s: %s", where, err);
}

static int locate_line(const char *file, const char *needle);

/* A listener's cert or key file: finds the config line naming it (for
 * errors found later, when the TLS context is built), then makes a relative
 * path relative to the config file's directory, as plugin_path does. */
static int tls_file(lua_State *L, walk_t *w, const char *key, char **path)
{
    char needle[160];
    snprintf(needle, sizeof needle, "%s\x01%s", key, *path);
    int line = locate_line(w->cfg->file, needle);
    const char *file = w->cfg->file;
    const char *slash = strrchr(file, '/');
    if ((*path)[0] != '/' && slash != NULL) {
        size_t dn = (size_t)(slash - file), pn = strlen(*path);
        char *full = malloc(dn + 1 + pn + 1);
        if (full == NULL)
            luaL_error(L, "out of memory");
        memcpy(full, file, dn);
        full[dn] = '/';
        memcpy(full + dn + 1, *path, pn + 1);
        free(*path);
        *path = full;
    }
    return line;
}

static void walk_listen(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "listen");
    if (lua_isnil(L, -1))
        cfg_fail(L, w, "return", "listen: at least one listener is required");
    expect_table(L, w, "listen", "listen");
    int n = (int)luaL_len(L, -1);
    if (n == 0)
        cfg_fail(L, w, "listen", "listen: at least one listener is required");
    cfg->listen = calloc((size_t)n, sizeof *cfg->listen);
    if (cfg->listen == NULL)
        luaL_error(L, "out of memory");
    for (int i = 1; i <= n; i++) {
        char where[64];
        snprintf(where, sizeof where, "listen[%d]", i);
        lua_rawgeti(L, -1, i);
        mg_cfg_listen_t *l = &cfg->listen[cfg->nlisten++];
        if (lua_type(L, -1) == LUA_TSTRING) {
            parse_addr_field(L, w, where, lua_tostring(L, -1), &l->addr);
        } else {
            expect_table(L, w, where, "listen");
            static const char *const keys[] = { "addr", "tls", NULL };
            check_keys(L, w, where, keys);
            lua_getfield(L, -1, "addr");
            if (lua_type(L, -1) != LUA_TSTRING)
                cfg_fail(L, w, "addr", "%s.addr: expected a string like \"127.0.0.1:8080\"",
                         where);
            parse_addr_field(L, w, where, lua_tostring(L, -1), &l->addr);
            lua_pop(L, 1);
            lua_getfield(L, -1, "tls");
            if (!lua_isnil(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
                expect_table(L, w, where, "tls");
                static const char *const tkeys[] = { "cert", "key", NULL };
                char twhere[80];
                snprintf(twhere, sizeof twhere, "%s.tls", where);
                check_keys(L, w, twhere, tkeys);
                l->tls_cert = opt_string(L, w, where, "cert", NULL);
                l->tls_key = opt_string(L, w, where, "key", NULL);
                if (!l->tls_cert || !l->tls_key || !l->tls_cert[0] || !l->tls_key[0])
                    cfg_fail(L, w, "tls", "%s.tls: cert and key are required", where);
                l->tls_cert_line = tls_file(L, w, "cert", &l->tls_cert);
                l->tls_key_line = tls_file(L, w, "key", &l->tls_key);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void walk_limits(lua_State *L, walk_t *w)
{
    mg_limits_t *lim = &w->cfg->limits;
    lim->max_uri_bytes = 8192;
    lim->max_header_bytes = 16384;
    lim->max_body_bytes = 1048576;
    lim->header_timeout = 10;
    lim->idle_timeout = 60;
    lim->drain_timeout = 30;
    lim->underscore_headers = MG_CFG_US_DROP;
    lua_getfield(L, -1, "limits");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "limits", "limits");
        static const char *const keys[] = { "max_uri_bytes", "max_header_bytes",
                                            "max_body_bytes", "header_timeout", "idle_timeout",
                                            "drain_timeout", "underscore_headers", NULL };
        check_keys(L, w, "limits", keys);
        lim->max_uri_bytes = (size_t)opt_number(L, w, "limits", "max_uri_bytes", 8192, 16);
        lim->max_header_bytes = (size_t)opt_number(L, w, "limits", "max_header_bytes", 16384, 256);
        lim->max_body_bytes = (size_t)opt_number(L, w, "limits", "max_body_bytes", 1048576, 0);
        lim->header_timeout = opt_number(L, w, "limits", "header_timeout", 10, 0.001);
        lim->idle_timeout = opt_number(L, w, "limits", "idle_timeout", 60, 0.001);
        lim->drain_timeout = opt_number(L, w, "limits", "drain_timeout", 30, 0);
        lua_getfield(L, -1, "underscore_headers");
        if (!lua_isnil(L, -1)) {
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            if (strcmp(v, "drop") == 0)
                lim->underscore_headers = MG_CFG_US_DROP;
            else if (strcmp(v, "allow") == 0)
                lim->underscore_headers = MG_CFG_US_ALLOW;
            else if (strcmp(v, "reject") == 0)
                lim->underscore_headers = MG_CFG_US_REJECT;
            else
                cfg_fail(L, w, "underscore_headers",
                         "limits.underscore_headers: expected \"drop\", \"allow\" or \"reject\"");
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int opt_bool(lua_State *L, walk_t *w, const char *where, const char *key, int def)
{
    lua_getfield(L, -1, key);
    int r = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isboolean(L, -1))
            cfg_fail(L, w, key, "%s.%s: expected true or false, got %s", where, key,
                     luaL_typename(L, -1));
        r = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return r;
}

/* The upstream's TLS options (its table is at the top of the stack). The CA
 * file is only checked for being a readable PEM file here: it is loaded
 * when the generation's pools are built, and `-t` should catch a wrong
 * path without needing OpenSSL in this leaf module. */
static void walk_upstream_tls(lua_State *L, walk_t *w, const char *where, mg_cfg_upstream_t *u)
{
    u->tls = opt_bool(L, w, where, "tls", 0);
    u->tls_verify = opt_bool(L, w, where, "tls_verify", 0);
    u->tls_server_name = opt_string(L, w, where, "tls_server_name", NULL);
    u->tls_ca = opt_string(L, w, where, "tls_ca", NULL);
    static const char *const opts[] = { "tls_verify", "tls_server_name", "tls_ca", NULL };
    for (const char *const *o = opts; *o && !u->tls; o++)
        if (field_type(L, *o) != LUA_TNIL)
            cfg_fail(L, w, *o, "%s.%s: needs tls = true", where, *o);
    if (u->tls_server_name && (u->tls_server_name[0] == '\0' || strlen(u->tls_server_name) > 253))
        cfg_fail(L, w, "tls_server_name", "%s.tls_server_name: expected a host name", where);
    if (u->tls_ca) {
        FILE *f = fopen(u->tls_ca, "r");
        if (f == NULL)
            cfg_fail(L, w, "tls_ca", "%s.tls_ca: cannot read '%s': %s", where, u->tls_ca,
                     strerror(errno));
        char line[256];
        int pem = 0;
        while (!pem && fgets(line, sizeof line, f))
            pem = strstr(line, "-----BEGIN CERTIFICATE-----") != NULL;
        fclose(f);
        if (!pem)
            cfg_fail(L, w, "tls_ca", "%s.tls_ca: '%s' holds no PEM certificate", where,
                     u->tls_ca);
    }
}

static void walk_upstreams(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "upstreams");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    expect_table(L, w, "upstreams", "upstreams");
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    cfg->upstreams = calloc((size_t)n + 1, sizeof *cfg->upstreams);
    if (cfg->upstreams == NULL)
        luaL_error(L, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            cfg_fail(L, w, "upstreams", "upstreams: keys must be upstream names");
        const char *name = lua_tostring(L, -2);
        char where[160];
        snprintf(where, sizeof where, "upstreams.%s", name);
        expect_table(L, w, where, name);
        static const char *const keys[] = { "servers", "balance", "hash_key", "keepalive",
                                            "connect_timeout", "read_timeout", "idle_timeout",
                                            "retries", "max_fails", "fail_timeout", "tls",
                                            "tls_verify", "tls_server_name", "tls_ca", NULL };
        check_keys(L, w, where, keys);
        mg_cfg_upstream_t *u = &cfg->upstreams[cfg->nupstreams++];
        u->name = xstrdup(name);
        lua_getfield(L, -1, "servers");
        if (!lua_istable(L, -1))
            cfg_fail(L, w, name, "%s.servers: expected a list of \"host:port\"", where);
        int ns = (int)luaL_len(L, -1);
        u->servers = calloc((size_t)ns + 1, sizeof *u->servers);
        if (u->servers == NULL)
            luaL_error(L, "out of memory");
        for (int i = 1; i <= ns; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                cfg_fail(L, w, name, "%s.servers[%d]: expected \"host:port\"", where, i);
            parse_addr_field(L, w, where, lua_tostring(L, -1), &u->servers[u->nservers++]);
            lua_pop(L, 1);
        }
        if (ns == 0)
            cfg_fail(L, w, name, "%s.servers: at least one server is required", where);
        if (ns > 64)
            cfg_fail(L, w, name, "%s.servers: at most 64 servers", where);
        lua_pop(L, 1);
        char *bal = opt_string(L, w, where, "balance", "round_robin");
        if (strcmp(bal, "round_robin") == 0)
            u->balance = MG_BAL_ROUND_ROBIN;
        else if (strcmp(bal, "least_conn") == 0)
            u->balance = MG_BAL_LEAST_CONN;
        else if (strcmp(bal, "hash") == 0)
            u->balance = MG_BAL_HASH;
        else {
            free(bal);
            cfg_fail(L, w, "balance", "%s.balance: expected round_robin, least_conn or hash",
                     where);
        }
        free(bal);
        u->hash_key = opt_string(L, w, where, "hash_key", "remote_addr");
        if (strcmp(u->hash_key, "remote_addr") != 0 && strcmp(u->hash_key, "uri") != 0 &&
            !(strncmp(u->hash_key, "header:", 7) == 0 && u->hash_key[7] != '\0'))
            cfg_fail(L, w, "hash_key",
                     "%s.hash_key: expected \"remote_addr\", \"uri\" or \"header:NAME\", got '%s'",
                     where, u->hash_key);
        u->keepalive = opt_count(L, w, where, "keepalive", 64, 0);
        u->connect_timeout = opt_number(L, w, where, "connect_timeout", 5, 0.001);
        u->read_timeout = opt_number(L, w, where, "read_timeout", 60, 0.001);
        u->idle_timeout = opt_number(L, w, where, "idle_timeout", 60, 0.001);
        u->retries = opt_count(L, w, where, "retries", 1, 0);
        u->max_fails = opt_count(L, w, where, "max_fails", 1, 0);
        u->fail_timeout = opt_number(L, w, where, "fail_timeout", 10, 0.001);
        walk_upstream_tls(L, w, where, u);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

int mg_cfg_upstream_index(const mg_cfg_t *cfg, const char *name)
{
    for (int i = 0; i < cfg->nupstreams; i++)
        if (strcmp(cfg->upstreams[i].name, name) == 0)
            return i;
    return -1;
}

static uint64_t method_bit(const char *name)
{
    for (int m = 0; m <= HTTP_FLUSH; m++) { /* llhttp aborts past its last method */
        const char *mn = llhttp_method_name((llhttp_method_t)m);
        if (mn && strcmp(mn, "<unknown>") != 0 && strcasecmp(mn, name) == 0)
            return (uint64_t)1 << m;
    }
    return 0;
}

static void walk_match(lua_State *L, walk_t *w, const char *where, mg_cfg_route_t *r)
{
    lua_getfield(L, -1, "match");
    if (lua_isfunction(L, -1)) {
        r->match_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return;
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    char mwhere[96];
    snprintf(mwhere, sizeof mwhere, "%s.match", where);
    expect_table(L, w, mwhere, "match");
    static const char *const keys[] = { "host", "path", "prefix", "methods", "headers", NULL };
    check_keys(L, w, mwhere, keys);
    r->host = opt_string(L, w, mwhere, "host", NULL);
    r->path = opt_string(L, w, mwhere, "path", NULL);
    r->prefix = opt_string(L, w, mwhere, "prefix", NULL);
    if (r->path && r->path[0] != '/')
        cfg_fail(L, w, r->path, "%s.path: must start with /", mwhere);
    if (r->prefix && r->prefix[0] != '/')
        cfg_fail(L, w, r->prefix, "%s.prefix: must start with /", mwhere);
    if (r->path && r->prefix)
        cfg_fail(L, w, "prefix", "%s: use path or prefix, not both", mwhere);
    r->prefix_len = r->prefix ? strlen(r->prefix) : 0;
    lua_getfield(L, -1, "methods");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            cfg_fail(L, w, "methods", "%s.methods: expected a list of method names", mwhere);
        int n = (int)luaL_len(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *m = lua_tostring(L, -1);
            uint64_t bit = m ? method_bit(m) : 0;
            if (bit == 0)
                cfg_fail(L, w, m ? m : "methods", "%s.methods[%d]: unknown method '%s'", mwhere,
                         i, m ? m : "?");
            r->methods |= bit;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "headers");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            cfg_fail(L, w, "headers", "%s.headers: expected { name = value }", mwhere);
        int n = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            n++;
        }
        r->headers = calloc((size_t)n + 1, sizeof *r->headers);
        if (r->headers == NULL)
            luaL_error(L, "out of memory");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                cfg_fail(L, w, "headers", "%s.headers: expected string names and values",
                         mwhere);
            mg_cfg_header_match_t *h = &r->headers[r->nheaders++];
            h->name = xstrdup(lua_tostring(L, -2));
            h->value = xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_pop(L, 1); /* match */
}

static void walk_routes(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "routes");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    expect_table(L, w, "routes", "routes");
    int n = (int)luaL_len(L, -1);
    cfg->routes = calloc((size_t)n + 1, sizeof *cfg->routes);
    cfg->order = calloc((size_t)n + 1, sizeof *cfg->order);
    if (cfg->routes == NULL || cfg->order == NULL)
        luaL_error(L, "out of memory");
    for (int i = 1; i <= n; i++) {
        mg_cfg_route_t *r = &cfg->routes[cfg->nroutes++];
        r->match_ref = r->chain_ref = LUA_NOREF;
        r->upstream = -1;
        char where[64];
        snprintf(where, sizeof where, "routes[%d]", i);
        lua_rawgeti(L, -1, i);
        expect_table(L, w, where, "routes");
        static const char *const keys[] = { "name", "match", "upstream", "handler", "plugins",
                                            "plugin_order", NULL };
        check_keys(L, w, where, keys);
        r->name = opt_string(L, w, where, "name", NULL);
        if (r->name == NULL) {
            char buf[32];
            snprintf(buf, sizeof buf, "route%d", i);
            r->name = xstrdup(buf);
        }
        walk_match(L, w, where, r);
        char *up = opt_string(L, w, where, "upstream", NULL);
        if (up) {
            r->upstream = mg_cfg_upstream_index(cfg, up);
            if (r->upstream < 0) {
                char needle[128], name[100];
                snprintf(name, sizeof name, "%s", up);
                snprintf(needle, sizeof needle, "upstream\x01%s", up);
                free(up);
                cfg_fail(L, w, needle, "%s.upstream: unknown upstream '%s'", where, name);
            }
            free(up);
        }
        int ht = field_type(L, "handler");
        if (ht != LUA_TNIL && ht != LUA_TFUNCTION)
            cfg_fail(L, w, "handler", "%s.handler: expected a function", where);
        r->has_handler = ht == LUA_TFUNCTION;
        int pt = field_type(L, "plugins");
        if (pt != LUA_TNIL && pt != LUA_TTABLE)
            cfg_fail(L, w, "plugins", "%s.plugins: expected a list of plugins", where);
        r->has_plugins = pt == LUA_TTABLE;
        if (r->upstream < 0 && !r->has_handler && !r->has_plugins)
            cfg_fail(L, w, r->name, "%s: a route needs an upstream or a handler", where);
        if (r->upstream >= 0 && r->has_handler)
            cfg_fail(L, w, "handler", "%s: a route has an upstream or a handler, not both",
                     where);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Match order: exact paths (config order), then prefixes by length (longest
 * first, stable), then routes without a path (length 0), then functions. */
static int route_rank(const mg_cfg_route_t *r)
{
    if (r->match_ref != LUA_NOREF)
        return 3;
    if (r->path)
        return 0;
    return r->prefix ? 1 : 2;
}

static void build_order(mg_cfg_t *cfg)
{
    int k = 0;
    for (int rank = 0; rank < 4; rank++) {
        int start = k;
        for (int i = 0; i < cfg->nroutes; i++)
            if (route_rank(&cfg->routes[i]) == rank)
                cfg->order[k++] = i;
        if (rank == 1) /* stable insertion sort by prefix length, longest first */
            for (int a = start + 1; a < k; a++) {
                int v = cfg->order[a], b = a;
                while (b > start &&
                       cfg->routes[cfg->order[b - 1]].prefix_len < cfg->routes[v].prefix_len) {
                    cfg->order[b] = cfg->order[b - 1];
                    b--;
                }
                cfg->order[b] = v;
            }
    }
}

/* Opens a file access_log for appending and closes it again (creating it,
 * as nginx -t does), so that -t, a start and a reload all refuse a path that
 * cannot be written with the config line, instead of a worker failing (and
 * being restarted in a loop) or a reload silently turning the log off. */
static void check_access_log(lua_State *L, walk_t *w, const char *where)
{
    if (where == NULL || strcmp(where, "stdout") == 0 || strcmp(where, "stderr") == 0)
        return;
    FILE *f = fopen(where, "a");
    if (f == NULL)
        cfg_fail(L, w, "access_log", "access_log: cannot open %s: %s", where, strerror(errno));
    fclose(f);
}

static int walk_root(lua_State *L)
{
    walk_t *w = lua_touserdata(L, 1);
    mg_cfg_t *cfg = w->cfg;
    lua_settop(L, 2);
    if (!lua_istable(L, 2))
        cfg_fail(L, w, "return", "the config file must return a table, got %s",
                 luaL_typename(L, 2));
    static const char *const keys[] = { "workers", "listen", "admin", "limits", "access_log",
                                        "redis", "upstreams", "plugin_path", "routes", "watch",
                                        "lua", "busy_poll", NULL };
    check_keys(L, w, "config", keys);
    lua_getfield(L, 2, "workers");
    if (lua_isnil(L, -1))
        cfg->workers = 1;
    else if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0)
        cfg->workers = 0;
    else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= 256)
        cfg->workers = (int)lua_tointeger(L, -1);
    else
        cfg_fail(L, w, "workers", "workers: expected a number from 1 to 256 or \"auto\"");
    lua_pop(L, 1);
    walk_listen(L, w);
    lua_getfield(L, 2, "watch");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        cfg_fail(L, w, "watch", "watch: expected true or false");
    cfg->watch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    cfg->busy_poll = opt_number(L, w, "config", "busy_poll", MG_BUSY_POLL_DEFAULT, 0);
    if (cfg->busy_poll > 0.01)
        cfg_fail(L, w, "busy_poll", "busy_poll: at most 0.01 (10 ms), got %g", cfg->busy_poll);
    lua_getfield(L, 2, "admin");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "admin", "admin");
        static const char *const akeys[] = { "addr", NULL };
        check_keys(L, w, "admin", akeys);
        lua_getfield(L, -1, "addr");
        if (lua_type(L, -1) != LUA_TSTRING)
            cfg_fail(L, w, "admin", "admin.addr: expected \"host:port\"");
        parse_addr_field(L, w, "admin", lua_tostring(L, -1), &cfg->admin);
        cfg->has_admin = 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    walk_limits(L, w);
    lua_getfield(L, 2, "access_log");
    if (lua_isnil(L, -1))
        cfg->access_log = xstrdup("stdout");
    else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1))
        cfg->access_log = NULL;
    else if (lua_type(L, -1) == LUA_TSTRING)
        cfg->access_log = xstrdup(lua_tostring(L, -1));
    else
        cfg_fail(L, w, "access_log", "access_log: expected \"stdout\", a path, or false");
    lua_pop(L, 1);
    check_access_log(L, w, cfg->access_log);
    cfg->lua_memory_limit = 128u << 20;
    cfg->lua_max_instructions = 50000000;
    lua_getfield(L, 2, "lua");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "lua", "lua");
        static const char *const lkeys[] = { "memory_limit", "max_instructions", NULL };
        check_keys(L, w, "lua", lkeys);
        cfg->lua_memory_limit = (size_t)opt_number(L, w, "lua", "memory_limit", 128u << 20, 1 << 20);
        cfg->lua_max_instructions = (long)opt_number(L, w, "lua", "max_instructions", 5e7, 1000);
    }
    lua_pop(L, 1);
    walk_upstreams(L, w);
    walk_routes(L, w);
    build_order(cfg);
    return 0;
}

/* True if `word` occurs in line as a whole word or quoted string. */
static int has_word(const char *line, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(line, word); p; p = strstr(p + 1, word)) {
        int before = p == line || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (before && after)
            return 1;
    }
    return 0;
}

/* Finds the line of `file` the error is about; 1 if none. `needle` is a
 * word, or "key\x01value": a line holding both (an option and its value). */
static int locate_line(const char *file, const char *needle)
{
    if (needle == NULL || needle[0] == '\0')
        return 1;
    char key[128], value[128] = "";
    snprintf(key, sizeof key, "%s", needle);
    char *sep = strchr(key, '\x01');
    if (sep) {
        *sep = '\0';
        snprintf(value, sizeof value, "%s", sep + 1);
    }
    FILE *f = fopen(file, "r");
    if (f == NULL)
        return 1;
    char line[4096];
    int n = 0, found = 0, loose = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        char *dash = strstr(line, "--"); /* skip Lua comments */
        if (dash)
            *dash = '\0';
        if (value[0]) {
            if (has_word(line, key) && has_word(line, value)) {
                found = n;
                break;
            }
            if (!loose && has_word(line, value))
                loose = n;
        } else if (has_word(line, key)) {
            found = n;
            break;
        } else if (!loose && strstr(line, key)) {
            loose = n;
        }
    }
    fclose(f);
    return found ? found : loose ? loose : 1;
}

/* Asks the Lua runtime (lua/moongate/runtime.lua, in the registry as
 * "mg_runtime") to load every route's plugins, check their options against
 * their schemas and build the per-route chains. The config table is at
 * index `tab`. 0, or -1 with "file:line: why" in err. */
static int build_chains(lua_State *L, mg_cfg_t *cfg, int tab, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_runtime");
    if (!lua_istable(L, -1)) {
        lua_settop(L, top);
        return 0; /* no runtime loaded (unit tests): plain routes only */
    }
    lua_getfield(L, -1, "build");
    lua_pushvalue(L, tab);
    lua_pushstring(L, cfg->file);
    if (lua_pcall(L, 2, 3, 0) != LUA_OK) {
        snprintf(err, errlen, "%s:1: %s", cfg->file,
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "error loading plugins");
        lua_settop(L, top);
        return -1;
    }
    if (!lua_istable(L, -3)) {
        const char *m = lua_tostring(L, -2);
        const char *needle = lua_tostring(L, -1);
        snprintf(err, errlen, "%s:%d: %s", cfg->file, locate_line(cfg->file, needle),
                 m ? m : "invalid plugin configuration");
        lua_settop(L, top);
        return -1;
    }
    lua_pop(L, 2);
    for (int i = 0; i < cfg->nroutes; i++) {
        lua_rawgeti(L, -1, i + 1);
        if (lua_istable(L, -1))
            cfg->routes[i].chain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    lua_settop(L, top);
    return 0;
}

mg_cfg_t *mg_cfg_load(lua_State *L, const char *file, char *err, size_t errlen)
{
    mg_cfg_t *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL) {
        snprintf(err, errlen, "%s:1: out of memory", file);
        return NULL;
    }
    cfg->file = xstrdup(file);
    cfg->L = L;
    walk_t w = { .cfg = cfg };
    int top = lua_gettop(L);
    if (luaL_loadfile(L, file) != LUA_OK) {
        /* "file:line: message" already, or "cannot open file" */
        const char *m = lua_tostring(L, -1);
        if (strncmp(m, "cannot open", 11) == 0)
            snprintf(err, errlen, "%s:0: %s", file, m);
        else
            snprintf(err, errlen, "%s", m);
        goto fail;
    }
    lua_pushvalue(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "mg_traceback");
    lua_remove(L, -2);
    lua_insert(L, -2);
    if (lua_pcall(L, 0, 1, lua_isfunction(L, -2) ? -2 : 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", m ? m : "error running config");
        goto fail;
    }
    int tab = lua_gettop(L);
    lua_pushcfunction(L, walk_root);
    lua_pushlightuserdata(L, &w);
    lua_pushvalue(L, tab);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s:%d: %s", file, locate_line(file, w.needle),
                 m ? m : "invalid config");
        goto fail;
    }
    if (build_chains(L, cfg, tab, err, errlen) != 0)
        goto fail;
    lua_settop(L, top);
    return cfg;
fail:
    lua_settop(L, top);
    mg_cfg_free(cfg);
    return NULL;
}

void mg_cfg_free(mg_cfg_t *cfg)
{
    if (cfg == NULL)
        return;
    for (int i = 0; i < cfg->nlisten; i++) {
        free(cfg->listen[i].tls_cert);
        free(cfg->listen[i].tls_key);
    }
    free(cfg->listen);
    for (int i = 0; i < cfg->nupstreams; i++) {
        free(cfg->upstreams[i].name);
        free(cfg->upstreams[i].servers);
        free(cfg->upstreams[i].hash_key);
        free(cfg->upstreams[i].tls_server_name);
        free(cfg->upstreams[i].tls_ca);
    }
    free(cfg->upstreams);
    for (int i = 0; i < cfg->nroutes; i++) {
        mg_cfg_route_t *r = &cfg->routes[i];
        free(r->name);
        free(r->host);
        free(r->path);
        free(r->prefix);
        for (int j = 0; j < r->nheaders; j++) {
            free(r->headers[j].name);
            free(r->headers[j].value);
        }
        free(r->headers);
        if (cfg->L) {
            luaL_unref(cfg->L, LUA_REGISTRYINDEX, r->match_ref);
            luaL_unref(cfg->L, LUA_REGISTRYINDEX, r->chain_ref);
        }
    }
    free(cfg->routes);
    free(cfg->order);
    free(cfg->access_log);
    free(cfg->file);
    free(cfg);
}
