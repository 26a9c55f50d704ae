/* moongate.http (gw.http): request{ method, url, headers, body, timeout,
 * max_body, tls_verify } -> { status, headers, headers_list,
 * repeated_headers, body } or
 * nil, err. http:// and https:// (verified against the system CA store
 * unless tls_verify = false).
 *
 * Every Lua-side step (argument checks, building the request head) happens
 * before any C resource exists, so a raise leaks nothing. The exchange then
 * runs in hclient; its completion resumes the coroutine and the
 * continuation turns the response into Lua values (STYLE.md b). The
 * per-worker client state (origins, pools, resolver) hangs off a userdata
 * anchored in the registry, freed by its __gc. */
#include "hclient.h"
#include "l_bindings.h"
#include "loop.h"
#include "lrt.h"
#include "req.h"

#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#define CTX_KEY "moongate.http.ctx"
#define DEFAULT_TIMEOUT 10.0

typedef struct url_parts {
    int tls;          /* https */
    const char *host;
    size_t host_len;
    int ipv6;         /* host was in brackets */
    int port;
    const char *target; /* path and query */
    size_t target_len;
} url_parts_t;

/* Splits an http:// or https:// URL. Returns NULL, or the error to return
 * to Lua. */
static const char *parse_url(const char *s, size_t n, url_parts_t *u)
{
    const char *end = s + n;
    int tls = n >= 8 && strncasecmp(s, "https://", 8) == 0;
    if (!tls && (n < 7 || strncasecmp(s, "http://", 7) != 0))
        return "invalid url (expected http[s]://host[:port]/path)";
    const char *p = s + (tls ? 8 : 7);
    const char *a_end = p;
    while (a_end < end && *a_end != '/' && *a_end != '?' && *a_end != '#')
        a_end++;
    memset(u, 0, sizeof *u);
    u->tls = tls;
    u->port = tls ? 443 : 80;
    const char *port_at = NULL;
    if (p < a_end && *p == '[') {
        const char *rb = memchr(p, ']', (size_t)(a_end - p));
        if (rb == NULL)
            return "invalid url";
        u->host = p + 1;
        u->host_len = (size_t)(rb - p - 1);
        u->ipv6 = 1;
        if (rb + 1 < a_end) {
            if (rb[1] != ':')
                return "invalid url";
            port_at = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(a_end - p));
        u->host = p;
        u->host_len = (size_t)((colon ? colon : a_end) - p);
        if (colon)
            port_at = colon + 1;
    }
    if (u->host_len == 0 || u->host_len > 253)
        return "invalid url";
    for (size_t i = 0; i < u->host_len; i++) {
        unsigned char c = (unsigned char)u->host[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || (u->ipv6 && (c == ':' || c == '%'));
        if (!ok)
            return "invalid url";
    }
    if (port_at) {
        if (port_at == a_end)
            return "invalid url";
        long port = 0;
        for (const char *q = port_at; q < a_end; q++) {
            if (*q < '0' || *q > '9' || port > 65535)
                return "invalid url";
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return "invalid url";
        u->port = (int)port;
    }
    const char *t = a_end, *t_end = memchr(a_end, '#', (size_t)(end - a_end));
    if (t_end == NULL)
        t_end = end;
    for (const char *q = t; q < t_end; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return "invalid url";
    u->target = t;
    u->target_len = (size_t)(t_end - t);
    return NULL;
}

/* Per-worker client state: the client context, and the buffer the request
 * head is written into. The buffer belongs to this userdata, not to the
 * call, so a raise while the arguments are checked leaks nothing; it is
 * reused by the next call. */
typedef struct {
    mg_hc_ctx_t *ctx;
    mg_buf_t head;
    int oom;
} http_state_t;

static void put(http_state_t *st, const char *s, size_t len)
{
    if (mg_buf_append(&st->head, s, len) != MG_OK)
        st->oom = 1;
}

static int header_value_ok(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    return t == LUA_TSTRING || t == LUA_TNUMBER;
}

/* may raise */
static void add_header(lua_State *L, http_state_t *st, const char *name, size_t nn, int vidx)
{
    lua_pushvalue(L, vidx); /* tolstring converts numbers in place: use a copy */
    size_t vn;
    const char *v = lua_tolstring(L, -1, &vn);
    for (size_t i = 0; i < vn; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == 0)
            luaL_error(L, "gw.http.request: header %s has a line break or NUL in its value", name);
    put(st, name, nn);
    put(st, ": ", 2);
    put(st, v, vn);
    put(st, "\r\n", 2);
    lua_pop(L, 1);
}

/* Adds the caller's headers (table at hidx). Framing headers are ours.
 * Returns whether a Host header was given. May raise. */
static int add_headers(lua_State *L, http_state_t *st, int hidx)
{
    int has_host = 0;
    lua_pushnil(L);
    while (lua_next(L, hidx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "gw.http.request: header names must be strings");
        size_t nn;
        const char *name = lua_tolstring(L, -2, &nn);
        if (!mg_h1_is_token(name, nn))
            luaL_error(L, "gw.http.request: invalid header name '%s'", name);
        if ((nn == 14 && strcasecmp(name, "content-length") == 0) ||
            (nn == 17 && strcasecmp(name, "transfer-encoding") == 0)) {
            lua_pop(L, 1);
            continue;
        }
        if (nn == 4 && strcasecmp(name, "host") == 0)
            has_host = 1;
        int vidx = lua_gettop(L);
        if (header_value_ok(L, vidx)) {
            add_header(L, st, name, nn, vidx);
        } else if (lua_type(L, vidx) == LUA_TTABLE) {
            lua_Integer len = luaL_len(L, vidx);
            for (lua_Integer i = 1; i <= len; i++) {
                lua_geti(L, vidx, i);
                if (!header_value_ok(L, -1))
                    luaL_error(L, "gw.http.request: header %s: values must be strings", name);
                add_header(L, st, name, nn, lua_gettop(L));
                lua_pop(L, 1);
            }
        } else {
            luaL_error(L, "gw.http.request: header %s: value must be a string", name);
        }
        lua_pop(L, 1);
    }
    return has_host;
}

static int is_idempotent(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "PUT") == 0 ||
           strcmp(m, "DELETE") == 0 || strcmp(m, "OPTIONS") == 0 || strcmp(m, "TRACE") == 0;
}

static int wants_length(const char *m)
{
    return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

/* headers_list is built on first use: most callers read `headers` only, and
 * a list of { name, value } pairs is two allocations per header. Until then
 * the response's metatable holds the head as one string of
 * "name\0value\0" pairs (names and values never contain NUL: llhttp
 * refuses them), and __index turns it into the list and stores it in the
 * response, so later reads are plain fields. */
static int response_index(lua_State *L)
{
    size_t kn;
    const char *k = lua_tolstring(L, 2, &kn);
    if (k == NULL || kn != 12 || memcmp(k, "headers_list", 12) != 0 || !lua_getmetatable(L, 1))
        return 0;
    size_t rn;
    lua_rawgeti(L, -1, 1);
    const char *raw = lua_tolstring(L, -1, &rn);
    if (raw == NULL)
        return 0;
    const char *p = raw, *end = raw + rn;
    lua_newtable(L);
    for (lua_Integer i = 1; p < end; i++) {
        lua_createtable(L, 2, 0);
        for (int part = 1; part <= 2; part++) {
            size_t len = strlen(p);
            lua_pushlstring(L, p, len);
            lua_rawseti(L, -2, part);
            p += len + 1;
        }
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "headers_list");
    return 1;
}

/* Pushes the response table for a finished exchange. May raise (OOM). */
static void push_response(lua_State *L, const mg_hc_t *hc)
{
    const mg_h1_head_t *h = mg_hc_head(hc);
    const mg_buf_t *body = mg_hc_body(hc);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, h->status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, h->nhdrs);
    luaL_Buffer raw;
    luaL_buffinit(L, &raw); /* takes a stack slot above the headers table */
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        luaL_addlstring(&raw, n.p, n.n);
        luaL_addchar(&raw, '\0');
        luaL_addlstring(&raw, v.p, v.n);
        luaL_addchar(&raw, '\0');
    }
    luaL_pushresult(&raw);
    /* headers[lower(name)], repeated ones joined with ", "; and for those,
     * repeated_headers[lower(name)] = { value1, value2, ... } (the field is
     * there only when some name repeats: most responses cost nothing) */
    int hi = lua_gettop(L) - 1, mi = hi + 2;
    lua_pushnil(L); /* repeated_headers, once needed */
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        char lower[128];
        if (n.n <= sizeof lower) {
            for (size_t k = 0; k < n.n; k++) {
                unsigned char c = (unsigned char)n.p[k];
                lower[k] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
            }
            lua_pushlstring(L, lower, n.n);
        } else { /* long names are rare */
            luaL_Buffer b;
            char *lp = luaL_buffinitsize(L, &b, n.n);
            for (size_t k = 0; k < n.n; k++) {
                unsigned char c = (unsigned char)n.p[k];
                lp[k] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
            }
            luaL_pushresultsize(&b, n.n);
        }
        lua_pushvalue(L, -1);
        if (lua_rawget(L, hi) == LUA_TSTRING) { /* stack: name, value so far */
            if (lua_isnil(L, mi)) {
                lua_newtable(L);
                lua_replace(L, mi);
            }
            lua_pushvalue(L, -2);
            if (lua_rawget(L, mi) != LUA_TTABLE) { /* the second field: the first is ours */
                lua_pop(L, 1);
                lua_createtable(L, 2, 0);
                lua_pushvalue(L, -2);
                lua_rawseti(L, -2, 1);
                lua_pushvalue(L, -3);
                lua_pushvalue(L, -2);
                lua_rawset(L, mi);
            }
            lua_pushlstring(L, v.p, v.n);
            lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
            lua_pop(L, 1);
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v.p, v.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v.p, v.n);
        }
        lua_rawset(L, hi);
    }
    if (lua_isnil(L, mi))
        lua_pop(L, 1);
    else
        lua_setfield(L, hi - 1, "repeated_headers");
    /* stack: res, headers, raw */
    lua_createtable(L, 1, 1); /* this response's metatable */
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_pushcfunction(L, response_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -3);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, body->len ? mg_buf_data(body) : "", body->len);
    lua_setfield(L, -2, "body");
}

static int request_k(lua_State *L, int status, lua_KContext kctx)
{
    (void)status;
    mg_hc_t *hc = (mg_hc_t *)kctx;
    mg_req_t *r = mg_lrt_current(L);
    const char *err = r->wait.err;
    r->wait.ticket = NULL;
    /* The free is deferred to the next loop iteration: the response stays
     * readable below, and is released even if pushing it raises. */
    mg_hc_free(hc);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_response(L, hc);
    return 1;
}

static void request_done(mg_hc_t *hc, void *ud, const char *err)
{
    (void)hc;
    mg_req_t *r = ud;
    r->wait.err = err;
    r->wait.status = err ? MG_EAGAIN : MG_OK;
    mg_lrt_resume(r, 0);
}

/* The request went away while waiting: close the connection (a half-read
 * response never goes back to the pool) and drop the exchange. */
static void request_cancel(mg_req_t *r)
{
    mg_hc_t *hc = r->wait.ticket;
    r->wait.ticket = NULL;
    mg_hc_free(hc);
}

static int opt_type(lua_State *L, const char *field, int type, const char *tname)
{
    int t = lua_getfield(L, 1, field);
    if (t != LUA_TNIL && t != type)
        luaL_error(L, "gw.http.request: %s must be a %s", field, tname);
    return t != LUA_TNIL;
}

/* gw.http.request(opts): may raise on misuse; yields. */
static int l_request(lua_State *L)
{
    http_state_t *st = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);

    const char *method = "GET";
    if (opt_type(L, "method", LUA_TSTRING, "string")) /* 2 */
        method = lua_tostring(L, 2);
    size_t mlen = strlen(method);
    if (!mg_h1_is_token(method, mlen) || mlen > 32)
        return luaL_error(L, "gw.http.request: invalid method");
    char m[33];
    for (size_t i = 0; i <= mlen; i++)
        m[i] = (char)((method[i] >= 'a' && method[i] <= 'z') ? method[i] - 32 : method[i]);

    if (lua_getfield(L, 1, "url") != LUA_TSTRING) /* 3 */
        return luaL_error(L, "gw.http.request: url must be a string");
    size_t ulen;
    const char *url = lua_tolstring(L, 3, &ulen);
    int has_headers = opt_type(L, "headers", LUA_TTABLE, "table"); /* 4 */
    size_t blen = 0;
    const char *body = NULL;
    if (opt_type(L, "body", LUA_TSTRING, "string")) /* 5 */
        body = lua_tolstring(L, 5, &blen);
    double timeout = DEFAULT_TIMEOUT;
    if (opt_type(L, "timeout", LUA_TNUMBER, "number")) /* 6 */
        timeout = lua_tonumber(L, 6);
    if (!(timeout > 0 && timeout < 1e9))
        return luaL_error(L, "gw.http.request: timeout must be a positive number of seconds");
    lua_Integer max_body = MG_HC_MAX_BODY;
    if (opt_type(L, "max_body", LUA_TNUMBER, "number")) { /* 7 */
        if (!lua_isinteger(L, 7) || lua_tointeger(L, 7) < 0)
            return luaL_error(L, "gw.http.request: max_body must be a non-negative integer");
        max_body = lua_tointeger(L, 7);
    }
    int tls_verify = 1;
    if (opt_type(L, "tls_verify", LUA_TBOOLEAN, "boolean")) /* 8 */
        tls_verify = lua_toboolean(L, 8);
    lua_settop(L, 8);

    mg_req_t *r = mg_lrt_current(L);
    if (r == NULL || r->co != L || !lua_isyieldable(L))
        return luaL_error(L, "gw.http.request needs a request coroutine (not the main thread, "
                             "a user coroutine or a metamethod)");
    if (st->ctx == NULL)
        return luaL_error(L, "gw.http.request: the http client is shut down");

    url_parts_t u;
    const char *uerr = parse_url(url, ulen, &u);
    if (uerr) {
        lua_pushnil(L);
        lua_pushstring(L, uerr);
        return 2;
    }

    /* The head goes into st->head: raising here leaks nothing. */
    mg_buf_reset(&st->head);
    st->oom = 0;
    put(st, m, mlen);
    put(st, " ", 1);
    if (u.target_len == 0 || u.target[0] != '/')
        put(st, "/", 1);
    put(st, u.target, u.target_len);
    put(st, " HTTP/1.1\r\n", 11);
    int has_host = has_headers ? add_headers(L, st, 4) : 0;
    if (!has_host) {
        put(st, "Host: ", 6);
        if (u.ipv6)
            put(st, "[", 1);
        put(st, u.host, u.host_len);
        if (u.ipv6)
            put(st, "]", 1);
        if (u.port != (u.tls ? 443 : 80)) {
            put(st, ":", 1);
            if (mg_buf_putu(&st->head, (unsigned long long)u.port) != MG_OK)
                st->oom = 1;
        }
        put(st, "\r\n", 2);
    }
    if (body || wants_length(m)) {
        put(st, "Content-Length: ", 16);
        if (mg_buf_putu(&st->head, (unsigned long long)blen) != MG_OK)
            st->oom = 1;
        put(st, "\r\n", 2);
    }
    put(st, "\r\n", 2);
    if (st->oom) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    const char *head = mg_buf_data(&st->head);
    size_t hlen = st->head.len;

    /* C resources from here on: nothing below raises. */
    mg_hc_t *hc = mg_hc_new(st->ctx);
    if (hc == NULL || mg_buf_append(mg_hc_request(hc), head, hlen) != MG_OK ||
        (blen && mg_buf_append(mg_hc_request(hc), body, blen) != MG_OK)) {
        mg_hc_free(hc);
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    mg_hc_opts_t o = {
        .host = u.host,
        .host_len = u.host_len,
        .port = u.port,
        .head = strcmp(m, "HEAD") == 0,
        .idempotent = is_idempotent(m),
        .timeout = timeout,
        .max_body = (size_t)max_body,
        .tls = u.tls,
        .tls_verify = tls_verify,
    };
    const char *err = mg_hc_start(hc, r, &o, request_done, r);
    if (err) {
        mg_hc_free(hc);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    mg_lrt_wait(r, MG_WAIT_EXT, request_cancel);
    r->wait.ticket = hc;
    return lua_yieldk(L, 0, (lua_KContext)hc, request_k);
}

static int ctx_gc(lua_State *L)
{
    http_state_t *st = lua_touserdata(L, 1);
    mg_hc_ctx_free(st->ctx);
    st->ctx = NULL;
    mg_buf_free(&st->head);
    return 0;
}

int luaopen_moongate_http(lua_State *L)
{
    /* One client state per Lua state (= per worker), kept in the registry. */
    if (lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY) != LUA_TUSERDATA) {
        lua_pop(L, 1);
        http_state_t *st = lua_newuserdatauv(L, sizeof *st, 0);
        memset(st, 0, sizeof *st);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, ctx_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        st->ctx = mg_hc_ctx_new(mg_lrt_loop(L));
        if (st->ctx == NULL)
            return luaL_error(L, "moongate.http: out of memory");
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY);
    }
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, l_request, 1);
    lua_setfield(L, -2, "request");
    return 1;
}
