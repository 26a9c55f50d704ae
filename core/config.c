/* Config loading: runs the config file in a protected call, then walks the
 * returned table into mg_cfg_t. Every check names the option; the line is
 * found by locating the offending text in the file. */
#include "config.h"
#include "cfg_src.h"
#include "log.h"
#include "mg.h"
#include "realip.h"
#include "shdict.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
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

typedef struct cfg_err {
    int line;
    int seq;                /* discovery order, for a stable sort */
    char *msg;              /* "path: why" */
} cfg_err_t;

typedef struct walk walk_t;
typedef void (*walk_step_t)(lua_State *L, walk_t *w);

/* The walk over the config table. Errors are collected (every one found,
 * not just the first): a check that fails records its error and raises; the
 * raise unwinds to the nearest protected step (a section, or one upstream
 * or route), and the walk goes on with the next one. */
struct walk {
    mg_cfg_t *cfg;
    mg_cfg_src_t *src;      /* where keys are in the source (cfg_src.h) */
    cfg_err_t *errs;
    int nerr, caperr;
    int raised;             /* the error being raised is recorded already */
    walk_step_t step;       /* what protect() runs */
    int item;               /* the list item / */
    const char *item_name;  /* the named item the step walks */
};

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

/* `path` made relative to the folder of the config file `file` (absolute
 * paths, and "stdout"/"stderr", as they are). A new string, or NULL. */
static char *cfg_relpath(const char *file, const char *path)
{
    const char *slash = strrchr(file, '/');
    if (path[0] == '/' || slash == NULL || strcmp(path, "stdout") == 0 ||
        strcmp(path, "stderr") == 0)
        return xstrdup(path);
    size_t dn = (size_t)(slash - file), pn = strlen(path);
    char *full = malloc(dn + 1 + pn + 1);
    if (full == NULL)
        return NULL;
    memcpy(full, file, dn);
    full[dn] = '/';
    memcpy(full + dn + 1, path, pn + 1);
    return full;
}

static int locate_line(const char *file, const char *needle, int *exact);

/* The line an error is about: the line of the config path it starts with
 * ("upstreams.app.servers[1]: ..."), from the source scan; else a line
 * holding `needle` (a word, or "key\x01value"); else the nearest mapped
 * parent of the path; else 1. */
static int error_line(walk_t *w, const char *path_in, const char *msg, const char *needle)
{
    char path[256];
    size_t n = strcspn(msg, ": ");
    int line = 0;
    if (path_in) {
        snprintf(path, sizeof path, "%s", path_in);
    } else if (n < sizeof path && msg[n] == ':') {
        memcpy(path, msg, n);
        path[n] = '\0';
    } else {
        path[0] = '\0';
    }
    if (path[0]) {
        line = mg_cfg_src_line(w->src, path);
        if (line == 0 && needle && needle[0]) {
            int exact = 0;
            int l = locate_line(w->cfg->file, needle, &exact);
            if (exact)
                line = l;
        }
        if (line == 0)
            line = mg_cfg_src_line_near(w->src, path);
    }
    if (line == 0)
        line = locate_line(w->cfg->file, needle, NULL);
    return line;
}

/* Records an error ("path: why") at the line error_line finds for `path`
 * (NULL: the path the message starts with). */
static void cfg_note_at(walk_t *w, const char *path, const char *needle, const char *msg)
{
    if (w->nerr == w->caperr) {
        int cap = w->caperr ? w->caperr * 2 : 8;
        cfg_err_t *e = realloc(w->errs, sizeof *e * (size_t)cap);
        if (e == NULL)
            return;
        w->errs = e;
        w->caperr = cap;
    }
    char *copy = xstrdup(msg);
    if (copy == NULL)
        return;
    w->errs[w->nerr] = (cfg_err_t){ error_line(w, path, msg, needle), w->nerr, copy };
    w->nerr++;
}

static void cfg_note_msg(walk_t *w, const char *needle, const char *msg)
{
    cfg_note_at(w, NULL, needle, msg);
}

static void cfg_note(walk_t *w, const char *needle, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_note(walk_t *w, const char *needle, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cfg_note_msg(w, needle, msg);
}

/* Records a config error and raises (to the enclosing protect()). `needle`
 * helps locate the line when the path is not in the source scan. */
static int MG_LJMP cfg_fail(lua_State *L, walk_t *w, const char *needle, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int MG_LJMP cfg_fail(lua_State *L, walk_t *w, const char *needle, const char *fmt, ...)
{
    char msg[1024]; /* vsnprintf: every printf format (lua_pushfstring has no %g) */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cfg_note_msg(w, needle, msg);
    w->raised = 1;
    lua_pushstring(L, msg);
    return lua_error(L);
}

static int protect_tramp(lua_State *L)
{
    walk_t *w = lua_touserdata(L, 1);
    lua_settop(L, 2);
    w->step(L, w);
    return 0;
}

/* Runs fn over the table at the top of the stack in a protected call: an
 * error in it is recorded and the caller goes on with the next step. */
static void protect(lua_State *L, walk_t *w, walk_step_t fn)
{
    int top = lua_gettop(L);
    w->step = fn;
    lua_pushcfunction(L, protect_tramp);
    lua_pushlightuserdata(L, w);
    lua_pushvalue(L, top);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        if (!w->raised) /* out of memory, or a raise from Lua */
            cfg_note_msg(w, NULL, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        w->raised = 0;
    }
    lua_settop(L, top);
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

int mg_cfg_parse_server(const char *text, mg_addr_t *out, char *err, size_t errlen)
{
    char host[256] = "";
    const char *colon, *port;
    memset(out, 0, sizeof *out);
    snprintf(out->text, sizeof out->text, "%s", text);
    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (rb == NULL || rb[1] != ':' || (size_t)(rb - text - 1) >= sizeof host)
            goto bad;
        memcpy(host, text + 1, (size_t)(rb - text - 1));
        port = rb + 2;
    } else if ((colon = strrchr(text, ':')) != NULL && colon != text &&
               (size_t)(colon - text) < sizeof host) {
        memcpy(host, text, (size_t)(colon - text));
        port = colon + 1;
    } else {
        goto bad;
    }
    char *end;
    long pn = strtol(port, &end, 10);
    if (*port < '0' || *port > '9' || *end || pn <= 0 || pn > 65535)
        goto bad;
    out->port = (int)pn;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->sa;
    if (strcasecmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pn);
        out->len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pn);
        out->len = sizeof *s6;
        return 0;
    }
    /* a DNS name: letters, digits, '-', '_' and dots */
    for (const char *c = host; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_')
            goto bad;
    if (host[0] == '\0' || host[0] == '.' || host[0] == '-' || (out->name = xstrdup(host)) == NULL)
        goto bad;
    return 0;
bad:
    snprintf(err, errlen, "invalid address '%s' (want host:port)", text);
    return -1;
}

/* --- typed field readers; the table is at the top of the stack ---------- */

/* Records an error for every key of the table on top that `allowed` does
 * not list, with "did you mean" for a likely misspelling. Does not raise:
 * the walk goes on and finds the other errors of this table too. */
static int check_keys(lua_State *L, walk_t *w, const char *where, const char *const *allowed)
{
    int unknown = 0;
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
        if (!ok) {
            const char *hint = mg_cfg_suggest(k, allowed);
            char dym[128] = "";
            if (hint)
                snprintf(dym, sizeof dym, " (did you mean '%s'?)", hint);
            cfg_note(w, k, "%s%s%s: unknown option%s", where, where[0] ? "." : "", k, dym);
            unknown++;
        }
    }
    return unknown;
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
    /* noted without raising: the section's other options are still checked
     * (-t reports every error); the default stands in for the bad value */
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) {
            cfg_note(w, key, "%s.%s: expected a number, got %s", where, key,
                     luaL_typename(L, -1));
        } else if (lua_tonumber(L, -1) < min) {
            cfg_note(w, key, "%s.%s: must be at least %g, got %g", where, key, min,
                     lua_tonumber(L, -1));
        } else {
            r = lua_tonumber(L, -1);
        }
    }
    lua_pop(L, 1);
    return r;
}

/* opt_number for counts: an integral value (1e3 is fine, 1.5 is not). */
static int opt_count(lua_State *L, walk_t *w, const char *where, const char *key, int def,
                     int min)
{
    double r = opt_number(L, w, where, key, def, min);
    if (r != (double)(long)r || r > 1e9) {
        cfg_note(w, key, "%s.%s: expected a whole number, got %g", where, key, r);
        return def;
    }
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


static int opt_bool(lua_State *L, walk_t *w, const char *where, const char *key, int def);

/* A listener's cert or key file: finds the config line naming it (for
 * errors found later, when the TLS context is built), then makes a relative
 * path relative to the config file's directory, as plugin_path does. */
static int tls_file(lua_State *L, walk_t *w, const char *where, const char *key, char **path)
{
    char needle[160], kpath[128];
    snprintf(needle, sizeof needle, "%s\x01%s", key, *path);
    snprintf(kpath, sizeof kpath, "%s.tls.%s", where, key);
    int line = mg_cfg_src_line(w->src, kpath);
    if (line == 0)
        line = locate_line(w->cfg->file, needle, NULL);
    char *full = cfg_relpath(w->cfg->file, *path);
    if (full == NULL)
        luaL_error(L, "out of memory");
    free(*path);
    *path = full;
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
        l->http2 = 1;
        if (lua_type(L, -1) == LUA_TSTRING) {
            parse_addr_field(L, w, where, lua_tostring(L, -1), &l->addr);
        } else {
            expect_table(L, w, where, "listen");
            static const char *const keys[] = { "addr", "tls", "proxy_protocol", "http2", NULL };
            check_keys(L, w, where, keys);
            lua_getfield(L, -1, "addr");
            if (lua_type(L, -1) != LUA_TSTRING)
                cfg_fail(L, w, "addr", "%s.addr: expected a string like \"127.0.0.1:8080\"",
                         where);
            parse_addr_field(L, w, where, lua_tostring(L, -1), &l->addr);
            lua_pop(L, 1);
            l->proxy_protocol = opt_bool(L, w, where, "proxy_protocol", 0);
            l->http2 = opt_bool(L, w, where, "http2", 1);
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
                l->tls_cert_line = tls_file(L, w, where, "cert", &l->tls_cert);
                l->tls_key_line = tls_file(L, w, where, "key", &l->tls_key);
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
    lim->tunnel_idle_timeout = 3600;
    lim->h2_max_streams = 128;
    lua_getfield(L, -1, "limits");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "limits", "limits");
        static const char *const keys[] = { "max_uri_bytes", "max_header_bytes",
                                            "max_body_bytes", "header_timeout", "idle_timeout",
                                            "drain_timeout", "tunnel_idle_timeout",
                                            "underscore_headers", "h2_max_streams", NULL };
        check_keys(L, w, "limits", keys);
        lim->max_uri_bytes = (size_t)opt_number(L, w, "limits", "max_uri_bytes", 8192, 16);
        lim->max_header_bytes = (size_t)opt_number(L, w, "limits", "max_header_bytes", 16384, 256);
        lim->max_body_bytes = (size_t)opt_number(L, w, "limits", "max_body_bytes", 1048576, 0);
        lim->header_timeout = opt_number(L, w, "limits", "header_timeout", 10, 0.001);
        lim->idle_timeout = opt_number(L, w, "limits", "idle_timeout", 60, 0.001);
        lim->drain_timeout = opt_number(L, w, "limits", "drain_timeout", 30, 0);
        lim->tunnel_idle_timeout = opt_number(L, w, "limits", "tunnel_idle_timeout", 3600, 0.001);
        lim->h2_max_streams = opt_count(L, w, "limits", "h2_max_streams", 128, 1);
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
    if (u->tls_ca) { /* relative to the config's folder, as every path in it */
        char *full = cfg_relpath(w->cfg->file, u->tls_ca);
        if (full == NULL)
            luaL_error(L, "out of memory");
        free(u->tls_ca);
        u->tls_ca = full;
    }
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

/* The upstream's `health` table (active checks, health.c): `true` takes
 * every default; the upstream's table is at the top of the stack. */
static void walk_upstream_health(lua_State *L, walk_t *w, const char *uwhere,
                                 mg_cfg_upstream_t *u)
{
    mg_cfg_health_t *h = &u->health;
    lua_getfield(L, -1, "health");
    int t = lua_type(L, -1);
    if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        lua_pop(L, 1);
        return;
    }
    char where[200];
    snprintf(where, sizeof where, "%s.health", uwhere);
    /* defaults: HAProxy's (inter 2s, rise 2, fall 3), nginx's 2xx/3xx */
    h->on = 1;
    h->interval = 2;
    h->timeout = 1;
    h->rise = 2;
    h->fall = 3;
    h->status_lo = 200;
    h->status_hi = 399;
    if (t == LUA_TBOOLEAN) {
        h->tcp = u->h2; /* an h2 upstream's checks only connect */
        h->path = xstrdup("/");
        lua_pop(L, 1);
        if (h->path == NULL)
            luaL_error(L, "out of memory");
        return;
    }
    if (t != LUA_TTABLE)
        cfg_fail(L, w, "health", "%s: expected a table or true, got %s", where,
                 luaL_typename(L, -1));
    static const char *const keys[] = { "type", "path", "host", "interval", "timeout",
                                        "rise", "fall", "status", NULL };
    check_keys(L, w, where, keys);
    /* an h2 upstream's checks only connect (the check speaks HTTP/1.1) */
    char *type = opt_string(L, w, where, "type", u->h2 ? "tcp" : "http");
    h->tcp = strcmp(type, "tcp") == 0;
    int known = h->tcp || strcmp(type, "http") == 0;
    free(type);
    if (!known)
        cfg_fail(L, w, "type", "%s.type: expected \"http\" or \"tcp\"", where);
    if (u->h2 && !h->tcp)
        cfg_fail(L, w, "type", "%s.type: an upstream with protocol = \"h2\" is checked with "
                 "type = \"tcp\" (a connect; with tls, the handshake)", where);
    static const char *const http_only[] = { "path", "host", "status", NULL };
    for (const char *const *o = http_only; *o && h->tcp; o++)
        if (field_type(L, *o) != LUA_TNIL)
            cfg_fail(L, w, *o, "%s.%s: a tcp check sends no request (needs type = \"http\")",
                     where, *o);
    h->path = opt_string(L, w, where, "path", "/");
    if (h->path[0] != '/' || strpbrk(h->path, " \t\r\n") != NULL || strlen(h->path) > 1024)
        cfg_fail(L, w, "path", "%s.path: expected a path starting with '/', without spaces",
                 where);
    h->host = opt_string(L, w, where, "host", NULL);
    if (h->host && (h->host[0] == '\0' || strpbrk(h->host, " \t\r\n") != NULL ||
                    strlen(h->host) > 255))
        cfg_fail(L, w, "host", "%s.host: expected a host name", where);
    h->interval = opt_number(L, w, where, "interval", h->interval, 0.01);
    h->timeout = opt_number(L, w, where, "timeout", h->timeout, 0.001);
    h->rise = opt_count(L, w, where, "rise", h->rise, 1);
    h->fall = opt_count(L, w, where, "fall", h->fall, 1);
    lua_getfield(L, -1, "status");
    if (!lua_isnil(L, -1)) {
        int ok = lua_istable(L, -1) && luaL_len(L, -1) == 2;
        for (int i = 1; ok && i <= 2; i++) {
            lua_rawgeti(L, -1, i);
            lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
            ok = v >= 100 && v <= 599;
            *(i == 1 ? &h->status_lo : &h->status_hi) = (int)v;
            lua_pop(L, 1);
        }
        if (!ok || h->status_lo > h->status_hi)
            cfg_fail(L, w, "status",
                     "%s.status: expected { low, high }, statuses from 100 to 599 with low <= high",
                     where);
    }
    lua_pop(L, 2);
}

/* shared = { name = bytes }: gw.shared dictionaries. */
static void walk_shared(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "shared");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    expect_table(L, w, "shared", "shared");
    cfg->shared = calloc(MG_SHD_MAX_DICTS, sizeof *cfg->shared);
    if (cfg->shared == NULL)
        luaL_error(L, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            cfg_fail(L, w, "shared", "shared: expected name = bytes pairs");
        const char *name = lua_tostring(L, -2);
        size_t nlen = strlen(name);
        int ok = nlen > 0 && nlen < MG_SHD_NAME_MAX;
        for (size_t i = 0; ok && i < nlen; i++)
            ok = isalnum((unsigned char)name[i]) || strchr("_.-", name[i]) != NULL;
        if (!ok)
            cfg_fail(L, w, name,
                     "shared.%s: a name is 1 to %d letters, digits, '_', '.' or '-'", name,
                     MG_SHD_NAME_MAX - 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < (lua_Integer)MG_SHD_MIN_SIZE ||
            (uint64_t)lua_tointeger(L, -1) > (uint64_t)MG_SHD_MAX_SIZE)
            cfg_fail(L, w, name, "shared.%s: expected a size in bytes from %d to %llu", name,
                     (int)MG_SHD_MIN_SIZE, (unsigned long long)MG_SHD_MAX_SIZE);
        if (cfg->nshared == MG_SHD_MAX_DICTS - 1) /* one is rate_limit's */
            cfg_fail(L, w, name, "shared: at most %d dictionaries", MG_SHD_MAX_DICTS - 1);
        mg_cfg_shared_t *s = &cfg->shared[cfg->nshared++];
        s->size = (size_t)lua_tointeger(L, -1);
        s->name = xstrdup(name);
        if (s->name == NULL)
            luaL_error(L, "out of memory");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* One upstream (its table on top; its name in w->item_name). */
static void walk_upstream(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    const char *name = w->item_name;
    char where[160];
    snprintf(where, sizeof where, "upstreams.%s", name);
    expect_table(L, w, where, name);
    static const char *const keys[] = { "servers", "balance", "hash_key", "keepalive",
                                        "connect_timeout", "read_timeout", "idle_timeout",
                                        "retries", "max_fails", "fail_timeout", "tls",
                                        "tls_verify", "tls_server_name", "tls_ca", "health",
                                        "protocol", NULL };
    check_keys(L, w, where, keys);
    mg_cfg_upstream_t *u = &cfg->upstreams[cfg->nupstreams - 1];
    lua_getfield(L, -1, "servers");
    if (!lua_istable(L, -1))
        cfg_fail(L, w, name, "%s.servers: expected a list of \"host:port\"", where);
    int ns = (int)luaL_len(L, -1);
    u->servers = calloc((size_t)ns + 1, sizeof *u->servers);
    if (u->servers == NULL)
        luaL_error(L, "out of memory");
    for (int i = 1; i <= ns; i++) {
        lua_rawgeti(L, -1, i);
        char swhere[192];
        snprintf(swhere, sizeof swhere, "%s.servers[%d]", where, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            cfg_fail(L, w, name, "%s: expected \"host:port\"", swhere);
        char aerr[256];
        const char *text = lua_tostring(L, -1);
        mg_addr_t *a = &u->servers[u->nservers++];
        if (mg_cfg_parse_server(text, a, aerr, sizeof aerr) != 0)
            cfg_fail(L, w, text, "%s: %s", swhere, aerr);
        if (a->name) {
            a->line = mg_cfg_src_line(w->src, swhere);
            if (a->line == 0)
                a->line = locate_line(cfg->file, text, NULL);
        }
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
    char *proto = opt_string(L, w, where, "protocol", "http1");
    u->h2 = strcmp(proto, "h2") == 0;
    int proto_ok = u->h2 || strcmp(proto, "http1") == 0;
    free(proto);
    if (!proto_ok)
        cfg_fail(L, w, "protocol", "%s.protocol: expected \"http1\" or \"h2\"", where);
    walk_upstream_health(L, w, where, u);
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
        if (lua_type(L, -2) != LUA_TSTRING) {
            cfg_note(w, "upstreams", "upstreams: keys must be upstream names");
            lua_pop(L, 1);
            continue;
        }
        /* declared even if broken: routes naming it get no second error */
        mg_cfg_upstream_t *u = &cfg->upstreams[cfg->nupstreams++];
        u->name = xstrdup(lua_tostring(L, -2));
        w->item_name = u->name;
        protect(L, w, walk_upstream); /* an error in one: the next is still checked */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

const mg_cfg_listen_t *mg_cfg_listener(const mg_cfg_t *cfg, const char *addr)
{
    for (int i = 0; i < cfg->nlisten; i++)
        if (strcmp(cfg->listen[i].addr.text, addr) == 0)
            return &cfg->listen[i];
    return NULL;
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

/* A route's `upgrades`: the protocols whose Upgrade requests become
 * tunnels (lower-cased); { "websocket" } when absent, none for {}. h2c is
 * never tunneled (HTTP/2 is the gateway's own business). */
static void walk_upgrades(lua_State *L, walk_t *w, const char *where, mg_cfg_route_t *r)
{
    lua_getfield(L, -1, "upgrades");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        r->upgrades = calloc(1, sizeof *r->upgrades);
        if (r->upgrades == NULL)
            luaL_error(L, "out of memory");
        r->upgrades[0] = xstrdup("websocket");
        r->nupgrades = 1;
        return;
    }
    if (!lua_istable(L, -1))
        cfg_fail(L, w, "upgrades", "%s.upgrades: expected a list of protocol names like "
                 "{ \"websocket\" }", where);
    int n = (int)luaL_len(L, -1);
    r->upgrades = calloc((size_t)n + 1, sizeof *r->upgrades);
    if (r->upgrades == NULL)
        luaL_error(L, "out of memory");
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        size_t len = 0;
        const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (p == NULL || len == 0 || len > 64 || strpbrk(p, " \t,") != NULL)
            cfg_fail(L, w, "upgrades", "%s.upgrades[%d]: expected a protocol name like "
                     "\"websocket\"", where, i);
        if (strcasecmp(p, "h2c") == 0)
            cfg_fail(L, w, "h2c", "%s.upgrades[%d]: h2c upgrades are never tunneled", where, i);
        char *lc = xstrdup(p);
        for (char *c = lc; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c | 0x20);
        r->upgrades[r->nupgrades++] = lc;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* One route (its table on top; its number in w->item). */
static void walk_route(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    int i = w->item;
    mg_cfg_route_t *r = &cfg->routes[i - 1];
    char where[64];
    snprintf(where, sizeof where, "routes[%d]", i);
    expect_table(L, w, where, "routes");
    static const char *const keys[] = { "name", "match", "upstream", "handler", "plugins",
                                        "plugin_order", "upgrades", NULL };
    int unknown = check_keys(L, w, where, keys);
    r->name = opt_string(L, w, where, "name", NULL);
    if (r->name == NULL) {
        char buf[32];
        snprintf(buf, sizeof buf, "route%d", i);
        r->name = xstrdup(buf);
    }
    walk_match(L, w, where, r);
    walk_upgrades(L, w, where, r);
    char *up = opt_string(L, w, where, "upstream", NULL);
    if (up) {
        r->upstream = mg_cfg_upstream_index(cfg, up);
        if (r->upstream < 0) {
            char needle[128], name[100], dym[140] = "";
            const char *names[65];
            int k = 0;
            for (; k < cfg->nupstreams && k < 64; k++)
                names[k] = cfg->upstreams[k].name;
            names[k] = NULL;
            const char *hint = mg_cfg_suggest(up, names);
            if (hint)
                snprintf(dym, sizeof dym, " (did you mean '%s'?)", hint);
            snprintf(name, sizeof name, "%s", up);
            snprintf(needle, sizeof needle, "upstream\x01%s", up);
            free(up);
            cfg_fail(L, w, needle, "%s.upstream: unknown upstream '%s'%s", where, name, dym);
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
    /* (a misspelt "upstrem" was reported already: not a second error) */
    if (r->upstream < 0 && !r->has_handler && !r->has_plugins && unknown == 0)
        cfg_fail(L, w, NULL, "%s: a route needs an upstream or a handler", where);
    if (r->upstream >= 0 && r->has_handler)
        cfg_fail(L, w, "handler", "%s.handler: a route has an upstream or a handler, not both",
                 where);
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
    for (int i = 0; i < n; i++) {
        cfg->routes[i].match_ref = cfg->routes[i].chain_ref = LUA_NOREF;
        cfg->routes[i].upstream = -1;
    }
    cfg->nroutes = n;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        w->item = i;
        protect(L, w, walk_route); /* an error in one route: the next is still checked */
        lua_pop(L, 1);
    }
    /* names label metrics and logs: two routes with one name would merge */
    for (int i = 1; i < n; i++) {
        const char *name = cfg->routes[i].name;
        for (int j = 0; name && j < i; j++)
            if (cfg->routes[j].name && strcmp(cfg->routes[j].name, name) == 0) {
                cfg_note(w, NULL, "routes[%d].name: '%s' is already the name of routes[%d]",
                         i + 1, name, j + 1);
                break;
            }
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

/* resolver = { "10.0.0.2", "127.0.0.1:5353", "[::1]:53", valid = 30 }: the
 * name servers for upstream and Redis host names and gw.http (else
 * /etc/resolv.conf), and how often kept names are resolved again. */
static void walk_resolver(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    cfg->resolver_valid = 30;
    lua_getfield(L, -1, "resolver");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            cfg_fail(L, w, "resolver",
                     "resolver: expected { \"ip[:port]\", ..., valid = seconds }");
        static const char *const keys[] = { "valid", NULL };
        check_keys(L, w, "resolver", keys);
        cfg->resolver_valid = opt_number(L, w, "resolver", "valid", 30, 0.1);
        int n = (int)luaL_len(L, -1);
        char csv[1024] = "";
        size_t used = 0;
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            char host[64] = "", one[80];
            const char *port = NULL;
            if (s[0] == '[') {
                const char *rb = strchr(s, ']');
                if (rb && (size_t)(rb - s - 1) < sizeof host) {
                    memcpy(host, s + 1, (size_t)(rb - s - 1));
                    port = rb[1] == ':' ? rb + 2 : rb[1] == '\0' ? "53" : NULL;
                }
            } else {
                const char *c = strchr(s, ':');
                size_t hn = c ? (size_t)(c - s) : strlen(s);
                if (hn < sizeof host) {
                    memcpy(host, s, hn);
                    port = c ? c + 1 : "53";
                }
            }
            unsigned char buf[16];
            int v6 = inet_pton(AF_INET6, host, buf) == 1;
            char *end = NULL;
            long pn = port ? strtol(port, &end, 10) : 0;
            if ((!v6 && inet_pton(AF_INET, host, buf) != 1) || port == NULL || *end ||
                pn < 1 || pn > 65535)
                cfg_fail(L, w, s[0] ? s : "resolver",
                         "resolver[%d]: expected a name server address like \"10.0.0.2\" or "
                         "\"127.0.0.1:5353\"", i);
            int k = snprintf(one, sizeof one, v6 ? "%s[%s]:%ld" : "%s%s:%ld", i > 1 ? "," : "",
                             host, pn);
            if (used + (size_t)k >= sizeof csv)
                cfg_fail(L, w, "resolver", "resolver: too many name servers");
            memcpy(csv + used, one, (size_t)k + 1);
            used += (size_t)k;
            lua_pop(L, 1);
        }
        if (n > 0)
            cfg->resolver = xstrdup(csv);
    }
    lua_pop(L, 1);
}

/* trusted_proxies = { "10.0.0.0/8", "127.0.0.1", "::1/128" } */
static void walk_trusted(lua_State *L, walk_t *w)
{
    lua_getfield(L, -1, "trusted_proxies");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            cfg_fail(L, w, "trusted_proxies",
                     "trusted_proxies: expected a list of addresses or CIDRs");
        int n = (int)luaL_len(L, -1);
        w->cfg->trusted = calloc((size_t)n + 1, sizeof *w->cfg->trusted);
        if (w->cfg->trusted == NULL)
            luaL_error(L, "out of memory");
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (s == NULL || mg_cidr_parse(s, &w->cfg->trusted[w->cfg->ntrusted]) != 0) {
                /* noted: the list's other entries are still checked */
                cfg_note(w, s ? s : "trusted_proxies",
                         "trusted_proxies[%d]: expected an address or CIDR like "
                         "\"10.0.0.0/8\" or \"::1/128\", got %s%s%s", i, s ? "'" : "",
                         s ? s : luaL_typename(L, -1), s ? "'" : "");
            } else {
                w->cfg->ntrusted++;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* error_log = "path" | { path = "stderr"|"stdout"|<file>, level = "info" }.
 * The file is opened (created) now, so -t, a start and a reload refuse a
 * path that cannot be written, with the config line. */
static void walk_error_log(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    cfg->error_log_level = -1;
    lua_getfield(L, -1, "error_log");
    if (lua_type(L, -1) == LUA_TSTRING) {
        cfg->error_log = cfg_relpath(cfg->file, lua_tostring(L, -1));
    } else if (lua_istable(L, -1)) {
        static const char *const keys[] = { "path", "level", NULL };
        check_keys(L, w, "error_log", keys);
        char *path = opt_string(L, w, "error_log", "path", NULL);
        if (path) {
            cfg->error_log = cfg_relpath(cfg->file, path);
            free(path);
        }
        lua_getfield(L, -1, "level");
        if (!lua_isnil(L, -1)) {
            const char *lv = lua_tostring(L, -1);
            cfg->error_log_level = lua_type(L, -1) == LUA_TSTRING ? mg_log_level_parse(lv) : -1;
            if (cfg->error_log_level < 0)
                cfg_fail(L, w, "level",
                         "error_log.level: expected debug, info, warn or error, got '%s'",
                         lv ? lv : luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    } else if (!lua_isnil(L, -1)) {
        cfg_fail(L, w, "error_log",
                 "error_log: expected { path = \"stderr\"|\"stdout\"|<file>, level = ... }");
    }
    lua_pop(L, 1);
    const char *p = cfg->error_log;
    if (p && strcmp(p, "stdout") != 0 && strcmp(p, "stderr") != 0) {
        FILE *f = fopen(p, "a");
        if (f == NULL)
            cfg_fail(L, w, "error_log", "error_log: cannot open %s: %s", p, strerror(errno));
        fclose(f);
    }
}

static void walk_workers(lua_State *L, walk_t *w)
{
    lua_getfield(L, -1, "workers");
    if (lua_isnil(L, -1))
        w->cfg->workers = 1;
    else if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0)
        w->cfg->workers = 0;
    else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= 256)
        w->cfg->workers = (int)lua_tointeger(L, -1);
    else
        cfg_fail(L, w, "workers", "workers: expected a number from 1 to 256 or \"auto\"");
    lua_pop(L, 1);
}

static void walk_watch(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "watch");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        cfg_fail(L, w, "watch", "watch: expected true or false");
    cfg->watch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    cfg->busy_poll = opt_number(L, w, "config", "busy_poll", MG_BUSY_POLL_DEFAULT, 0);
    if (cfg->busy_poll > 0.01)
        cfg_fail(L, w, "busy_poll", "busy_poll: at most 0.01 (10 ms), got %g", cfg->busy_poll);
}

static void walk_admin(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "admin");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "admin", "admin");
        static const char *const akeys[] = { "addr", NULL };
        check_keys(L, w, "admin", akeys);
        lua_getfield(L, -1, "addr");
        if (lua_type(L, -1) != LUA_TSTRING)
            cfg_fail(L, w, "admin", "admin.addr: expected \"host:port\"");
        parse_addr_field(L, w, "admin.addr", lua_tostring(L, -1), &cfg->admin);
        cfg->has_admin = 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* access_log = "stdout" | PATH | false | { path = ..., format = "text" | "json" } */
static void walk_access_log(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "access_log");
    if (lua_isnil(L, -1)) {
        cfg->access_log = xstrdup("stdout");
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        cfg->access_log = NULL;
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        cfg->access_log = cfg_relpath(cfg->file, lua_tostring(L, -1));
    } else if (lua_istable(L, -1)) {
        static const char *const keys[] = { "path", "format", NULL };
        check_keys(L, w, "access_log", keys);
        int pt = field_type(L, "path");
        if (pt == LUA_TBOOLEAN) {
            if (opt_bool(L, w, "access_log", "path", 0))
                cfg_fail(L, w, "path", "access_log.path: expected \"stdout\", a path or false");
            cfg->access_log = NULL;
        } else {
            char *p = opt_string(L, w, "access_log", "path", "stdout");
            cfg->access_log = cfg_relpath(cfg->file, p);
            free(p);
        }
        char *fmt = opt_string(L, w, "access_log", "format", "text");
        int json = strcmp(fmt, "json") == 0, text = strcmp(fmt, "text") == 0;
        free(fmt);
        if (!json && !text)
            cfg_fail(L, w, "format", "access_log.format: expected \"text\" or \"json\"");
        cfg->access_log_format = json; /* MG_ALOG_JSON is 1 */
    } else {
        cfg_fail(L, w, "access_log",
                 "access_log: expected \"stdout\", a path, false or { path = ..., format = ... }");
    }
    lua_pop(L, 1);
    check_access_log(L, w, cfg->access_log);
}

static void walk_lua(lua_State *L, walk_t *w)
{
    mg_cfg_t *cfg = w->cfg;
    lua_getfield(L, -1, "lua");
    if (!lua_isnil(L, -1)) {
        expect_table(L, w, "lua", "lua");
        static const char *const lkeys[] = { "memory_limit", "max_instructions", NULL };
        check_keys(L, w, "lua", lkeys);
        cfg->lua_memory_limit = (size_t)opt_number(L, w, "lua", "memory_limit", 128u << 20, 1 << 20);
        cfg->lua_max_instructions = (long)opt_number(L, w, "lua", "max_instructions", 5e7, 1000);
    }
    lua_pop(L, 1);
}

/* The whole table, section by section: an error in one section is recorded
 * and the next section is still checked. */
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
                                        "lua", "busy_poll", "error_log", "trusted_proxies",
                                        "resolver", "shared", NULL };
    check_keys(L, w, "", keys);
    cfg->lua_memory_limit = 128u << 20;
    cfg->lua_max_instructions = 50000000;
    static const walk_step_t steps[] = { walk_workers, walk_listen,     walk_watch,
                                         walk_admin,   walk_limits,     walk_trusted,
                                         walk_resolver, walk_access_log,
                                         walk_error_log, walk_lua,      walk_shared,
                                         walk_upstreams,
                                         walk_routes };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        protect(L, w, steps[i]);
    if (w->nerr == 0)
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

int mg_cfg_locate_line(const char *file, const char *needle)
{
    return locate_line(file, needle, NULL);
}

/* Finds the line of `file` the error is about; 1 if none. `needle` is a
 * word, or "key\x01value": a line holding both (an option and its value). */
static int locate_line(const char *file, const char *needle, int *exact)
{
    if (exact)
        *exact = 0;
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
    if (exact)
        *exact = found != 0;
    return found ? found : loose ? loose : 1;
}

/* listdir(dir) -> { "name.lua", ... } or nil: for the runtime's "did you
 * mean" on a plugin name. Config time only (it reads a directory). */
static int l_listdir(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 1000)
        if (e->d_name[0] != '.') {
            lua_pushstring(L, e->d_name);
            lua_rawseti(L, -2, ++n);
        }
    closedir(d);
    return 1;
}

/* Asks the Lua runtime (lua/moongate/runtime.lua, in the registry as
 * "mg_runtime") to load every route's plugins, check their options against
 * their schemas and build the per-route chains. The config table is at
 * index `tab`. Every error it reports is recorded in w (with the line of
 * its config path); the chains are kept only if the whole config is good. */
static void build_chains(lua_State *L, walk_t *w, int tab)
{
    mg_cfg_t *cfg = w->cfg;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_runtime");
    if (!lua_istable(L, -1)) {
        lua_settop(L, top);
        return; /* no runtime loaded (unit tests): plain routes only */
    }
    lua_pushcfunction(L, l_listdir);
    lua_setfield(L, -2, "listdir");
    lua_getfield(L, -1, "build");
    lua_pushvalue(L, tab);
    lua_pushstring(L, cfg->file);
    if (lua_pcall(L, 2, 4, 0) != LUA_OK) {
        cfg_note(w, NULL, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error loading plugins");
        lua_settop(L, top);
        return;
    }
    if (!lua_istable(L, -4)) {
        /* every error: { message, path, needle } */
        if (lua_istable(L, -1)) {
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                lua_getfield(L, -1, "message");
                lua_getfield(L, -2, "path");
                lua_getfield(L, -3, "needle");
                const char *m = lua_tostring(L, -3), *path = lua_tostring(L, -2);
                cfg_note_at(w, path, lua_tostring(L, -1), m ? m : "invalid plugin configuration");
                lua_pop(L, 4);
            }
        } else {
            cfg_note(w, lua_tostring(L, -2), "%s",
                     lua_tostring(L, -3) ? lua_tostring(L, -3) : "invalid plugin configuration");
        }
        lua_settop(L, top);
        return;
    }
    lua_pop(L, 3);
    for (int i = 0; w->nerr == 0 && i < cfg->nroutes; i++) {
        lua_rawgeti(L, -1, i + 1);
        if (lua_istable(L, -1))
            cfg->routes[i].chain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    lua_settop(L, top);
}

static int err_cmp(const void *a, const void *b)
{
    const cfg_err_t *x = a, *y = b;
    return x->line != y->line ? x->line - y->line : x->seq - y->seq;
}

/* Every recorded error, by line, as "file:line: path: why" lines in err. */
static void format_errors(walk_t *w, char *err, size_t errlen)
{
    qsort(w->errs, (size_t)w->nerr, sizeof *w->errs, err_cmp);
    size_t off = 0;
    err[0] = '\0';
    for (int i = 0; i < w->nerr && off + 1 < errlen; i++) {
        int n = snprintf(err + off, errlen - off, "%s%s:%d: %s", i ? "\n" : "", w->cfg->file,
                         w->errs[i].line, w->errs[i].msg);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}

static void free_walk(walk_t *w)
{
    for (int i = 0; i < w->nerr; i++)
        free(w->errs[i].msg);
    free(w->errs);
    mg_cfg_src_free(w->src);
}

/* dofile/loadfile while the config runs: a relative path is relative to
 * the config file's folder (not the working directory), and the file is
 * recorded so `watch` reloads when it changes. Upvalues: the config, the
 * original function. */
static int cfg_loadwrap(lua_State *L)
{
    mg_cfg_t *cfg = lua_touserdata(L, lua_upvalueindex(1));
    if (lua_type(L, 1) == LUA_TSTRING) {
        char *full = cfg_relpath(cfg->file, lua_tostring(L, 1));
        char **files = full ? realloc(cfg->files, sizeof *files * ((size_t)cfg->nfiles + 1)) : NULL;
        if (files == NULL) {
            free(full);
            return luaL_error(L, "out of memory");
        }
        cfg->files = files;
        cfg->files[cfg->nfiles++] = full;
        lua_pushstring(L, full);
        lua_replace(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Swaps the globals `name` and the saved originals (install = 1 wraps them,
 * 0 restores them). */
static void cfg_wrap_loaders(lua_State *L, mg_cfg_t *cfg, int install)
{
    static const char *const names[] = { "dofile", "loadfile" };
    for (int i = 0; i < 2; i++) {
        lua_getglobal(L, names[i]);
        if (install) {
            lua_setfield(L, LUA_REGISTRYINDEX, names[i]); /* the original, until restored */
            lua_pushlightuserdata(L, cfg);
            lua_getfield(L, LUA_REGISTRYINDEX, names[i]);
            lua_pushcclosure(L, cfg_loadwrap, 2);
            lua_setglobal(L, names[i]);
        } else {
            lua_pop(L, 1);
            lua_getfield(L, LUA_REGISTRYINDEX, names[i]);
            if (!lua_isnil(L, -1))
                lua_setglobal(L, names[i]);
            else
                lua_pop(L, 1);
            lua_pushnil(L);
            lua_setfield(L, LUA_REGISTRYINDEX, names[i]);
        }
    }
}

mg_cfg_t *mg_cfg_load(lua_State *L, const char *file, char *err, size_t errlen)
{
    return mg_cfg_load_ex(L, file, err, errlen, NULL);
}

mg_cfg_t *mg_cfg_load_ex(lua_State *L, const char *file, char *err, size_t errlen,
                         mg_cfg_t **partial)
{
    if (partial)
        *partial = NULL;
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
    cfg_wrap_loaders(L, cfg, 1);
    int rc = lua_pcall(L, 0, 1, lua_isfunction(L, -2) ? -2 : 0);
    cfg_wrap_loaders(L, cfg, 0);
    if (rc != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", m ? m : "error running config");
        goto fail;
    }
    int tab = lua_gettop(L);
    w.src = mg_cfg_src_scan(file);
    lua_pushcfunction(L, walk_root);
    lua_pushlightuserdata(L, &w);
    lua_pushvalue(L, tab);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK && !w.raised)
        cfg_note_msg(&w, NULL, lua_tostring(L, -1) ? lua_tostring(L, -1) : "invalid config");
    lua_settop(L, tab);
    /* plugin errors too, when the routes could be read */
    if (lua_istable(L, tab)) {
        lua_pushstring(L, "routes");
        int t = lua_rawget(L, tab);
        lua_pop(L, 1);
        if (t == LUA_TNIL || t == LUA_TTABLE)
            build_chains(L, &w, tab);
    }
    if (w.nerr > 0) {
        format_errors(&w, err, errlen);
        free_walk(&w);
        lua_settop(L, top);
        if (partial)
            *partial = cfg; /* the walk ran: what it read is consistent */
        else
            mg_cfg_free(cfg);
        return NULL;
    }
    free_walk(&w);
    lua_settop(L, top);
    return cfg;
fail:
    free_walk(&w);
    lua_settop(L, top);
    mg_cfg_free(cfg);
    return NULL;
}

void mg_cfg_free(mg_cfg_t *cfg)
{
    if (cfg == NULL)
        return;
    for (int i = 0; i < cfg->nshared; i++)
        free(cfg->shared[i].name);
    free(cfg->shared);
    for (int i = 0; i < cfg->nlisten; i++) {
        free(cfg->listen[i].tls_cert);
        free(cfg->listen[i].tls_key);
    }
    free(cfg->listen);
    for (int i = 0; i < cfg->nupstreams; i++) {
        free(cfg->upstreams[i].name);
        for (int j = 0; j < cfg->upstreams[i].nservers; j++)
            free(cfg->upstreams[i].servers[j].name);
        free(cfg->upstreams[i].servers);
        free(cfg->upstreams[i].hash_key);
        free(cfg->upstreams[i].tls_server_name);
        free(cfg->upstreams[i].tls_ca);
        free(cfg->upstreams[i].health.path);
        free(cfg->upstreams[i].health.host);
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
        for (int j = 0; j < r->nupgrades; j++)
            free(r->upgrades[j]);
        free(r->upgrades);
        if (cfg->L) {
            luaL_unref(cfg->L, LUA_REGISTRYINDEX, r->match_ref);
            luaL_unref(cfg->L, LUA_REGISTRYINDEX, r->chain_ref);
        }
    }
    free(cfg->routes);
    free(cfg->order);
    free(cfg->access_log);
    free(cfg->trusted);
    free(cfg->resolver);
    free(cfg->error_log);
    for (int i = 0; i < cfg->nfiles; i++)
        free(cfg->files[i]);
    free(cfg->files);
    free(cfg->file);
    free(cfg);
}
