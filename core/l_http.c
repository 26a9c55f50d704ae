/* moongate.http (gw.http): request{ method, url, headers, forward, body,
 * timeout, max_body, tls_verify, lazy_headers } -> { status, headers,
 * headers_list, repeated_headers, body, :header(name) } or nil, err; and
 * template{ the same, forward_drop, forward_only }, whose :request{ method,
 * headers, forward, body, timeout } reuses what the template parsed once
 * (url, method, options, the forward filters as hashed name sets).
 * http:// and https:// (verified against the system CA store unless
 * tls_verify = false).
 *
 * Every Lua-side step (argument checks, building the request head) happens
 * before any C resource exists, so a raise leaks nothing. The exchange then
 * runs in hclient; its completion resumes the coroutine and the
 * continuation turns the response into Lua values (STYLE.md b). The
 * per-worker client state (origins, pools, resolver) hangs off a userdata
 * anchored in the registry, freed by its __gc. The response objects are
 * l_http_res.c's. */
#include "hclient.h"
#include "l_bindings.h"
#include "l_http.h"
#include "loop.h"
#include "lrt.h"
#include "req.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#define CTX_KEY "moongate.http.ctx"
#define TPL_MT "moongate.http.template"
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

/* Per-worker client state: the client context, the buffer the request
 * head is written into, and the names the current call's `headers` table
 * sets (a forwarded field of the same name gives way to them). The buffers
 * belong to this userdata, not to the call, so a raise while the arguments
 * are checked leaks nothing; the next call reuses them. */
typedef struct {
    mg_hc_ctx_t *ctx;
    mg_buf_t head;
    int oom;
    mg_str_t *given; /* names of the `headers` table (views into its keys) */
    int ngiven, given_cap;
} http_state_t;

/* A set of header names, compared case-insensitively: open addressing over
 * a power-of-two table, names stored lower-cased. */
typedef struct {
    struct nslot {
        char *name; /* NULL: free */
        size_t len;
        uint32_t hash;
    } *v;
    uint32_t mask; /* capacity - 1; v == NULL: the empty set */
} nameset_t;

static uint32_t hash_ci(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        h = (h ^ (uint32_t)(c >= 'A' && c <= 'Z' ? c | 0x20 : c)) * 16777619u;
    }
    return h;
}

static int nameset_has(const nameset_t *s, const char *p, size_t n)
{
    if (s->v == NULL)
        return 0;
    uint32_t h = hash_ci(p, n);
    for (uint32_t i = h & s->mask; s->v[i].name; i = (i + 1) & s->mask)
        if (s->v[i].hash == h && s->v[i].len == n && strncasecmp(s->v[i].name, p, n) == 0)
            return 1;
    return 0;
}

static void nameset_free(nameset_t *s)
{
    for (uint32_t i = 0; s->v && i <= s->mask; i++)
        free(s->v[i].name);
    free(s->v);
    s->v = NULL;
}

/* The list of names at idx (a Lua array of header-name strings) into s.
 * Raises on a bad item or OOM; whatever was allocated stays in s, freed by
 * the owner's __gc. */
static void nameset_fill(lua_State *L, nameset_t *s, int idx, const char *field)
{
    lua_Integer n = luaL_len(L, idx);
    uint32_t cap = 8;
    while (cap < 2 * (uint64_t)n + 2)
        cap *= 2;
    s->v = calloc(cap, sizeof *s->v);
    if (s->v == NULL)
        luaL_error(L, "out of memory");
    s->mask = cap - 1;
    for (lua_Integer k = 1; k <= n; k++) {
        size_t len;
        if (lua_geti(L, idx, k) != LUA_TSTRING)
            luaL_error(L, "gw.http.template: %s must be a list of header names", field);
        const char *name = lua_tolstring(L, -1, &len);
        if (!mg_h1_is_token(name, len))
            luaL_error(L, "gw.http.template: %s: invalid header name '%s'", field, name);
        if (!nameset_has(s, name, len)) {
            uint32_t h = hash_ci(name, len), i = h & s->mask;
            while (s->v[i].name)
                i = (i + 1) & s->mask;
            char *c = malloc(len + 1);
            if (c == NULL)
                luaL_error(L, "out of memory");
            for (size_t j = 0; j < len; j++)
                c[j] = (char)(name[j] >= 'A' && name[j] <= 'Z' ? name[j] | 0x20 : name[j]);
            c[len] = '\0';
            s->v[i] = (struct nslot){ c, len, h };
        }
        lua_pop(L, 1);
    }
}

/* gw.http.template: what a request needs that does not change per call,
 * parsed once. */
static const char tpl_tag = 't';

typedef struct {
    const char *tag;  /* &tpl_tag: only C writes userdata memory */
    char *url;        /* owned copy; u points into it */
    url_parts_t u;
    char method[33];  /* upper-cased */
    double timeout;
    size_t max_body;
    int tls_verify;
    int lazy;         /* lazy_headers */
    nameset_t drop, only;
} tpl_t;

/* One call's parameters. */
typedef struct {
    char m[33];       /* method, upper-cased */
    size_t mlen;
    const url_parts_t *u;
    int hidx;         /* stack index of the headers table, 0: none */
    mg_req_t *fwd;    /* forward this request's headers, or NULL */
    int ftab;         /* or a stand-in req's headers() table: its stack index */
    const char *body;
    size_t blen;
    double timeout;
    size_t max_body;
    int tls_verify;
    int lazy;
    const tpl_t *tpl; /* forward filters, or NULL */
} call_t;

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

/* "name: value\r\n", with one reservation. */
static void put_line(http_state_t *st, const char *n, size_t nn, const char *v, size_t vn)
{
    size_t need = nn + vn + 4;
    if (mg_buf_room(&st->head) < need && mg_buf_reserve(&st->head, need) != MG_OK) {
        st->oom = 1;
        return;
    }
    char *w = mg_buf_data(&st->head) + st->head.len;
    memcpy(w, n, nn);
    w += nn;
    *w++ = ':';
    *w++ = ' ';
    memcpy(w, v, vn);
    w += vn;
    *w++ = '\r';
    *w = '\n';
    st->head.len += need;
}

/* may raise */
static void add_header(lua_State *L, http_state_t *st, const char *name, size_t nn, int vidx)
{
    int copy = lua_type(L, vidx) == LUA_TNUMBER;
    if (copy) /* tolstring converts numbers in place: use a copy */
        lua_pushvalue(L, vidx);
    size_t vn;
    const char *v = lua_tolstring(L, copy ? -1 : vidx, &vn);
    for (size_t i = 0; i < vn; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= '\r' && (c == '\r' || c == '\n' || c == 0))
            luaL_error(L, "gw.http.request: header %s has a line break or NUL in its value", name);
    }
    put_line(st, name, nn, v, vn);
    if (copy)
        lua_pop(L, 1);
}

static void note_given(http_state_t *st, const char *name, size_t nn)
{
    if (st->ngiven == st->given_cap) {
        int cap = st->given_cap ? 2 * st->given_cap : 16;
        mg_str_t *g = realloc(st->given, (size_t)cap * sizeof *g);
        if (g == NULL) {
            st->oom = 1;
            return;
        }
        st->given = g;
        st->given_cap = cap;
    }
    st->given[st->ngiven++] = (mg_str_t){ name, nn };
}

/* One header of the caller's, its value at vidx (a string, a number or a
 * list of them). Framing headers are ours. Returns whether it was Host.
 * May raise. */
static int add_given(lua_State *L, http_state_t *st, const char *name, size_t nn, int vidx,
                     int note)
{
    if (!mg_h1_is_token(name, nn))
        luaL_error(L, "gw.http.request: invalid header name '%s'", name);
    if (note)
        note_given(st, name, nn);
    if ((nn == 14 && strcasecmp(name, "content-length") == 0) ||
        (nn == 17 && strcasecmp(name, "transfer-encoding") == 0))
        return 0;
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
    return nn == 4 && strcasecmp(name, "host") == 0;
}

/* Adds the caller's headers (table at hidx): { name = value }, or the list
 * { name1, value1, name2, value2, ... } (in that order; no hashing).
 * Returns whether a Host header was given. With `note`, remembers the
 * names (views into the table's keys, alive while it is on the stack).
 * May raise. */
static int add_headers(lua_State *L, http_state_t *st, int hidx, int note)
{
    int has_host = 0;
    lua_Integer n = (lua_Integer)lua_rawlen(L, hidx);
    if (n > 0) {
        for (lua_Integer i = 1; i <= n; i += 2) {
            if (lua_rawgeti(L, hidx, i) != LUA_TSTRING)
                luaL_error(L, "gw.http.request: header names must be strings");
            size_t nn;
            const char *name = lua_tolstring(L, -1, &nn);
            lua_rawgeti(L, hidx, i + 1);
            has_host |= add_given(L, st, name, nn, lua_gettop(L), note);
            lua_pop(L, 2); /* the name stays anchored by the table */
        }
        return has_host;
    }
    lua_pushnil(L);
    while (lua_next(L, hidx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "gw.http.request: header names must be strings");
        size_t nn;
        const char *name = lua_tolstring(L, -2, &nn);
        has_host |= add_given(L, st, name, nn, lua_gettop(L), note);
        lua_pop(L, 1);
    }
    return has_host;
}

/* Never forwarded: the hop-by-hop fields (RFC 9110 7.6.1) and the
 * framing, which is this exchange's own. */
static int hop_or_framing(mg_str_t n)
{
    switch (n.n) {
    case 2:
        return MG_STR_EQ_CI(n, "te");
    case 7:
        return MG_STR_EQ_CI(n, "trailer") || MG_STR_EQ_CI(n, "upgrade");
    case 10:
        return MG_STR_EQ_CI(n, "connection") || MG_STR_EQ_CI(n, "keep-alive");
    case 14:
        return MG_STR_EQ_CI(n, "content-length");
    case 16:
        return MG_STR_EQ_CI(n, "proxy-connection");
    case 17:
        return MG_STR_EQ_CI(n, "transfer-encoding");
    }
    return 0;
}

/* Whether the forwarded field `n` goes to the server. */
static int forwards(const http_state_t *st, const call_t *c, mg_str_t conn, mg_str_t n)
{
    if (hop_or_framing(n))
        return 0;
    if (c->tpl && (nameset_has(&c->tpl->drop, n.p, n.n) ||
                   (c->tpl->only.v && !nameset_has(&c->tpl->only, n.p, n.n))))
        return 0;
    if (conn.p && mg_h1_list_has(conn, n.p, n.n))
        return 0;
    for (int i = 0; i < st->ngiven; i++)
        if (mg_str_eq_ci(n, st->given[i].p, st->given[i].n))
            return 0;
    return 1;
}

static void forward_one(http_state_t *st, const call_t *c, mg_str_t conn, mg_str_t n, mg_str_t v,
                        int *has_host)
{
    if (!forwards(st, c, conn, n))
        return;
    if (MG_STR_EQ_CI(n, "host"))
        *has_host = 1;
    put_line(st, n.p, n.n, v.p, v.n);
}

/* The request's header fields as plugins see them (edits applied), each
 * field as its own line, filtered by forwards(). Values need no check:
 * llhttp refused CR, LF and NUL in the head, req:set_header in edits. */
static void add_forwarded(http_state_t *st, const call_t *c, int *has_host)
{
    const mg_req_t *r = c->fwd;
    const mg_h1_head_t *h = r->head;
    mg_str_t conn = mg_req_header(r, "connection");
    for (int i = 0; h && i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i);
        if (r->edits.n && mg_edits_find(&r->edits, n.p, n.n))
            continue;
        forward_one(st, c, conn, n, mg_h1_value(h, i), has_host);
    }
    for (int i = 0; i < r->edits.n; i++) {
        const mg_hdr_edit_t *e = &r->edits.v[i];
        if (e->value)
            forward_one(st, c, conn, (mg_str_t){ e->name, e->name_len },
                        (mg_str_t){ e->value, e->value_len }, has_host);
    }
}

/* The same from a stand-in req's headers() table (tests): { name = value
 * or list }. May raise on a bad name or value. */
static void add_forwarded_table(lua_State *L, http_state_t *st, const call_t *c, int *has_host)
{
    mg_str_t conn = { NULL, 0 };
    lua_pushnil(L);
    while (lua_next(L, c->ftab) != 0) {
        size_t nn;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nn) : NULL;
        if (name && MG_STR_EQ_CI(((mg_str_t){ name, nn }), "connection") &&
            lua_type(L, -1) == LUA_TSTRING)
            conn.p = lua_tolstring(L, -1, &conn.n); /* anchored by the table */
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, c->ftab) != 0) {
        size_t nn;
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "gw.http.request: header names must be strings");
        const char *name = lua_tolstring(L, -2, &nn);
        if (!mg_h1_is_token(name, nn))
            luaL_error(L, "gw.http.request: invalid header name '%s'", name);
        if (forwards(st, c, conn, (mg_str_t){ name, nn }))
            *has_host |= add_given(L, st, name, nn, lua_gettop(L), 0);
        lua_pop(L, 1);
    }
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

static int request_k(lua_State *L, int status, lua_KContext kctx)
{
    (void)status;
    mg_hc_t *hc = (mg_hc_t *)(kctx & ~(lua_KContext)1);
    int lazy = (int)(kctx & 1);
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
    mg_lhttp_push_response(L, mg_hc_head(hc), mg_hc_body(hc), lazy);
    return 1;
}

static void request_done(mg_hc_t *hc, void *ud, const char *err)
{
    (void)hc;
    mg_req_t *r = ud;
    r->wait.err = err;
    r->wait.status = err ? MG_EAGAIN : MG_OK;
    mg_req_resume(r, 0);
}

/* The request went away while waiting: close the connection (a half-read
 * response never goes back to the pool) and drop the exchange. */
static void request_cancel(mg_req_t *r)
{
    mg_hc_t *hc = r->wait.ticket;
    r->wait.ticket = NULL;
    mg_hc_free(hc);
}

static int opt_type(lua_State *L, int idx, const char *field, int type, const char *tname)
{
    int t = lua_getfield(L, idx, field);
    if (t != LUA_TNIL && t != type)
        luaL_error(L, "gw.http.request: %s must be a %s", field, tname);
    return t != LUA_TNIL;
}

/* The method at idx, checked and upper-cased into c->m. May raise. */
static void set_method(lua_State *L, call_t *c, const char *method)
{
    size_t mlen = strlen(method);
    if (!mg_h1_is_token(method, mlen) || mlen > 32)
        luaL_error(L, "gw.http.request: invalid method");
    for (size_t i = 0; i <= mlen; i++)
        c->m[i] = (char)((method[i] >= 'a' && method[i] <= 'z') ? method[i] - 32 : method[i]);
    c->mlen = mlen;
}

static double check_timeout(lua_State *L, int idx)
{
    double timeout = lua_tonumber(L, idx);
    if (!(timeout > 0 && timeout < 1e9))
        luaL_error(L, "gw.http.request: timeout must be a positive number of seconds");
    return timeout;
}

static size_t check_max_body(lua_State *L, int idx)
{
    if (!lua_isinteger(L, idx) || lua_tointeger(L, idx) < 0)
        luaL_error(L, "gw.http.request: max_body must be a non-negative integer");
    return (size_t)lua_tointeger(L, idx);
}

/* The exchange's options in the table at 1, shared by gw.http.request and
 * gw.http.template: timeout, max_body, tls_verify and lazy_headers, in
 * that order, each field's value left on the stack (four slots). May
 * raise. */
static void exchange_opts(lua_State *L, call_t *c)
{
    c->timeout = opt_type(L, 1, "timeout", LUA_TNUMBER, "number") ? check_timeout(L, -1)
                                                                  : DEFAULT_TIMEOUT;
    c->max_body = MG_HC_MAX_BODY;
    if (opt_type(L, 1, "max_body", LUA_TNUMBER, "number"))
        c->max_body = check_max_body(L, -1);
    c->tls_verify = 1;
    if (opt_type(L, 1, "tls_verify", LUA_TBOOLEAN, "boolean"))
        c->tls_verify = lua_toboolean(L, -1);
    c->lazy = 0;
    if (opt_type(L, 1, "lazy_headers", LUA_TBOOLEAN, "boolean"))
        c->lazy = lua_toboolean(L, -1);
}

/* The `forward` option at idx: a req object, or a stand-in with a
 * headers() method (plugin tests), whose table is pushed and its index
 * kept in c->ftab. May raise. */
static void check_forward(lua_State *L, int idx, call_t *c)
{
    idx = lua_absindex(L, idx);
    c->fwd = mg_lreq_to(L, idx);
    if (c->fwd)
        return;
    if (lua_type(L, idx) != LUA_TTABLE || lua_getfield(L, idx, "headers") != LUA_TFUNCTION)
        luaL_error(L, "gw.http.request: forward must be a req object");
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "gw.http.request: forward: headers() must return a table");
    c->ftab = lua_gettop(L);
}

/* Writes the head, starts the exchange and yields; or returns nil, err.
 * May raise while the head is built (the headers table), never after. */
static int run(lua_State *L, http_state_t *st, call_t *c)
{
    mg_req_t *r = mg_lrt_check_yield(L, NULL, "gw.http.request");
    if (st->ctx == NULL)
        return luaL_error(L, "gw.http.request: the http client is shut down");
    const url_parts_t *u = c->u;

    /* The head goes into st->head: raising here leaks nothing. */
    mg_buf_reset(&st->head);
    st->oom = 0;
    st->ngiven = 0;
    put(st, c->m, c->mlen);
    put(st, " ", 1);
    if (u->target_len == 0 || u->target[0] != '/')
        put(st, "/", 1);
    put(st, u->target, u->target_len);
    put(st, " HTTP/1.1\r\n", 11);
    int has_host = c->hidx ? add_headers(L, st, c->hidx, c->fwd || c->ftab) : 0;
    if (c->fwd)
        add_forwarded(st, c, &has_host);
    else if (c->ftab)
        add_forwarded_table(L, st, c, &has_host);
    if (!has_host) {
        put(st, "Host: ", 6);
        if (u->ipv6)
            put(st, "[", 1);
        put(st, u->host, u->host_len);
        if (u->ipv6)
            put(st, "]", 1);
        if (u->port != (u->tls ? 443 : 80)) {
            put(st, ":", 1);
            if (mg_buf_putu(&st->head, (unsigned long long)u->port) != MG_OK)
                st->oom = 1;
        }
        put(st, "\r\n", 2);
    }
    if (c->body || wants_length(c->m)) {
        put(st, "Content-Length: ", 16);
        if (mg_buf_putu(&st->head, (unsigned long long)c->blen) != MG_OK)
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
        (c->blen && mg_buf_append(mg_hc_request(hc), c->body, c->blen) != MG_OK)) {
        mg_hc_free(hc);
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    mg_hc_opts_t o = {
        .host = u->host,
        .host_len = u->host_len,
        .port = u->port,
        .head = strcmp(c->m, "HEAD") == 0,
        .idempotent = is_idempotent(c->m),
        .timeout = c->timeout,
        .max_body = c->max_body,
        .tls = u->tls,
        .tls_verify = c->tls_verify,
    };
    const char *err = mg_hc_start(hc, &o, request_done, r);
    if (err) {
        mg_hc_free(hc);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    mg_lrt_wait(r, MG_WAIT_EXT, request_cancel);
    r->wait.ticket = hc;
    return lua_yieldk(L, 0, (lua_KContext)hc | (c->lazy ? 1 : 0), request_k);
}

/* gw.http.request(opts): may raise on misuse; yields. */
static int l_request(lua_State *L)
{
    http_state_t *st = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    call_t c;
    memset(&c, 0, sizeof c);

    set_method(L, &c, opt_type(L, 1, "method", LUA_TSTRING, "string") ? lua_tostring(L, 2)
                                                                      : "GET"); /* 2 */
    if (lua_getfield(L, 1, "url") != LUA_TSTRING) /* 3 */
        return luaL_error(L, "gw.http.request: url must be a string");
    size_t ulen;
    const char *url = lua_tolstring(L, 3, &ulen);
    if (opt_type(L, 1, "headers", LUA_TTABLE, "table")) /* 4 */
        c.hidx = 4;
    if (opt_type(L, 1, "body", LUA_TSTRING, "string")) /* 5 */
        c.body = lua_tolstring(L, 5, &c.blen);
    exchange_opts(L, &c); /* 6..9 */
    if (lua_getfield(L, 1, "forward") != LUA_TNIL) /* 10, a stand-in's table 11 */
        check_forward(L, 10, &c);

    url_parts_t u;
    const char *uerr = parse_url(url, ulen, &u);
    if (uerr) {
        mg_lrt_check_yield(L, NULL, "gw.http.request");
        lua_pushnil(L);
        lua_pushstring(L, uerr);
        return 2;
    }
    c.u = &u;
    return run(L, st, &c);
}

/* --- templates ------------------------------------------------------------ */

static int tpl_gc(lua_State *L)
{
    tpl_t *t = lua_touserdata(L, 1);
    free(t->url);
    t->url = NULL;
    nameset_free(&t->drop);
    nameset_free(&t->only);
    return 0;
}

static tpl_t *check_tpl(lua_State *L)
{
    tpl_t *t = lua_touserdata(L, 1);
    if (t == NULL || lua_type(L, 1) != LUA_TUSERDATA || lua_rawlen(L, 1) != sizeof *t ||
        t->tag != &tpl_tag)
        luaL_typeerror(L, 1, "gw.http template");
    if (t->url == NULL)
        luaL_error(L, "gw.http template: not usable");
    return t;
}

/* gw.http.template(opts): a userdata; may raise on misuse. */
static int l_template(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    tpl_t *t = lua_newuserdatauv(L, sizeof *t, 0); /* 2 */
    memset(t, 0, sizeof *t);
    luaL_setmetatable(L, TPL_MT);
    t->tag = &tpl_tag; /* from here on its __gc frees what it holds */

    call_t c;
    memset(&c, 0, sizeof c);
    set_method(L, &c, opt_type(L, 1, "method", LUA_TSTRING, "string") ? lua_tostring(L, 3)
                                                                      : "GET");
    memcpy(t->method, c.m, c.mlen + 1);
    lua_settop(L, 2);
    if (lua_getfield(L, 1, "url") != LUA_TSTRING)
        return luaL_error(L, "gw.http.template: url must be a string");
    size_t ulen;
    const char *url = lua_tolstring(L, -1, &ulen);
    exchange_opts(L, &c);
    t->timeout = c.timeout;
    t->max_body = c.max_body;
    t->tls_verify = c.tls_verify;
    t->lazy = c.lazy;
    if (opt_type(L, 1, "forward_drop", LUA_TTABLE, "table"))
        nameset_fill(L, &t->drop, lua_gettop(L), "forward_drop");
    if (opt_type(L, 1, "forward_only", LUA_TTABLE, "table"))
        nameset_fill(L, &t->only, lua_gettop(L), "forward_only");
    const char *uerr = parse_url(url, ulen, &t->u);
    if (uerr)
        return luaL_error(L, "gw.http.template: %s", uerr);
    t->url = malloc(ulen + 1);
    if (t->url == NULL)
        return luaL_error(L, "out of memory");
    memcpy(t->url, url, ulen + 1);
    parse_url(t->url, ulen, &t->u); /* the same parts, now pointing into the copy */
    lua_settop(L, 2);
    return 1;
}

/* tpl:request([opts]): the template's request with this call's method,
 * headers, forward, body and timeout. May raise on misuse; yields. */
static int tpl_request(lua_State *L)
{
    http_state_t *st = lua_touserdata(L, lua_upvalueindex(1));
    const tpl_t *t = check_tpl(L);
    call_t c;
    memset(&c, 0, sizeof c);
    c.mlen = strlen(t->method);
    memcpy(c.m, t->method, c.mlen + 1);
    c.u = &t->u;
    c.timeout = t->timeout;
    c.max_body = t->max_body;
    c.tls_verify = t->tls_verify;
    c.lazy = t->lazy;
    c.tpl = t;
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        return run(L, st, &c);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    /* only the fields given: one pass over the table, no lookups of absent ones */
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
        size_t kn;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        int vt = lua_type(L, -1);
        if (k && kn == 7 && memcmp(k, "headers", 7) == 0 && vt == LUA_TTABLE) {
            c.hidx = lua_gettop(L); /* kept on the stack: the key below is lost */
            lua_pushvalue(L, -2);
            continue;
        }
        if (k && kn == 7 && memcmp(k, "forward", 7) == 0 && c.ftab == 0) {
            check_forward(L, -1, &c);
            if (c.ftab) { /* its table stays on the stack, under a copy of the key */
                lua_pushvalue(L, -3);
                continue;
            }
        } else if (k && kn == 4 && memcmp(k, "body", 4) == 0 && vt == LUA_TSTRING) {
            c.body = lua_tolstring(L, -1, &c.blen);
            lua_pushvalue(L, -2); /* the body string stays on the stack */
            continue;
        } else if (k && kn == 6 && memcmp(k, "method", 6) == 0 && vt == LUA_TSTRING) {
            set_method(L, &c, lua_tostring(L, -1));
        } else if (k && kn == 7 && memcmp(k, "timeout", 7) == 0 && vt == LUA_TNUMBER) {
            c.timeout = check_timeout(L, -1);
        } else {
            return luaL_error(L, "gw.http template request: unknown option or wrong type: '%s'",
                              k ? k : luaL_typename(L, -2));
        }
        lua_pop(L, 1);
    }
    return run(L, st, &c);
}

static int ctx_gc(lua_State *L)
{
    http_state_t *st = lua_touserdata(L, 1);
    mg_hc_ctx_free(st->ctx);
    st->ctx = NULL;
    mg_buf_free(&st->head);
    free(st->given);
    st->given = NULL;
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
    int sti = lua_gettop(L);
    if (luaL_newmetatable(L, TPL_MT)) { /* templates: __index = { request } */
        lua_pushcfunction(L, tpl_gc);
        lua_setfield(L, -2, "__gc");
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, sti);
        lua_pushcclosure(L, tpl_request, 1);
        lua_setfield(L, -2, "request");
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "gw.http template");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    mg_lhttp_res_register(L);
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, sti);
    lua_pushcclosure(L, l_request, 1);
    lua_setfield(L, -2, "request");
    lua_pushcfunction(L, l_template);
    lua_setfield(L, -2, "template");
    return 1;
}
