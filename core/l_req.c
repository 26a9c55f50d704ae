/* The req and res objects seen by plugins (PRODUCT.md "Plugin API"). Each is
 * a userdata holding the request pointer; the pointer is NULLed when the
 * request is freed, so a plugin that kept one gets "request finished"
 * instead of a use-after-free.
 *
 * The runtime's own operations (run the proxy, wait for the response to
 * end, ...) are not methods: they live in a separate table that only
 * lua/moongate/runtime.lua receives, once, at boot (mg_lreq_push_ops), and
 * each checks that it runs on its request's own coroutine. */
#include "log.h"
#include "lrt.h"
#include "proxy.h"
#include "req.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#define REQ_MT "moongate.req"
#define RES_MT "moongate.res"

/* --- helpers ---------------------------------------------------------- */

/* The req and res objects are full userdata holding one of these. `r`
 * comes first: the request NULLs it through a void ** when it ends. The tag
 * (the address of a read-only byte) identifies the kind: only C can write
 * userdata memory, so a Lua value cannot fake it, and comparing it costs a
 * fraction of luaL_checkudata's registry lookup on every req:method() call. */
typedef struct {
    mg_req_t *r;
    const char *tag;
} handle_t;

static const char req_tag = 'q', res_tag = 's';

/* may raise */
static mg_req_t *check_handle(lua_State *L, const char *tag, const char *tname)
{
    handle_t *h = lua_touserdata(L, 1);
    if (h == NULL || lua_type(L, 1) != LUA_TUSERDATA || lua_rawlen(L, 1) != sizeof *h ||
        h->tag != tag)
        luaL_typeerror(L, 1, tname);
    if (h->r == NULL)
        luaL_error(L, "request finished");
    return h->r;
}

static mg_req_t *check_req(lua_State *L)
{
    return check_handle(L, &req_tag, REQ_MT);
}

mg_req_t *mg_lreq_to(lua_State *L, int idx)
{
    handle_t *h = lua_touserdata(L, idx);
    if (h == NULL || lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) != sizeof *h ||
        h->tag != &req_tag)
        return NULL;
    if (h->r == NULL)
        luaL_error(L, "request finished");
    return h->r;
}

static void **new_handle(lua_State *L, mg_req_t *r, const char *tag, const char *mt, int nuv)
{
    handle_t *h = lua_newuserdatauv(L, sizeof *h, nuv);
    h->r = r;
    h->tag = tag;
    luaL_setmetatable(L, mt);
    return (void **)&h->r;
}
static mg_req_t *check_res(lua_State *L)
{
    return check_handle(L, &res_tag, RES_MT);
}

static int valid_value(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return 0;
    return 1;
}

static const char *check_name(lua_State *L, int idx, size_t *n)
{
    const char *s = luaL_checklstring(L, idx, n);
    luaL_argcheck(L, mg_h1_is_token(s, *n), idx, "invalid header name");
    return s;
}

static const char *check_value(lua_State *L, int idx, size_t *n)
{
    const char *s = luaL_checklstring(L, idx, n);
    luaL_argcheck(L, valid_value(s, *n), idx, "header value contains CR, LF or NUL");
    return s;
}

static void push_lower(lua_State *L, mg_str_t n)
{
    char small[256];
    luaL_Buffer b;
    char *buf = n.n <= sizeof small ? small : luaL_buffinitsize(L, &b, n.n);
    for (size_t j = 0; j < n.n; j++)
        buf[j] = (n.p[j] >= 'A' && n.p[j] <= 'Z') ? (char)(n.p[j] | 0x20) : n.p[j];
    if (buf == small)
        lua_pushlstring(L, buf, n.n);
    else
        luaL_pushresultsize(&b, n.n); /* a name past 256 bytes is lower-cased too */
}

/* Pushes { lower-case name = value } for a head with edits applied;
 * repeated headers are joined with ", ". */
static void push_headers(lua_State *L, const mg_h1_head_t *h, const mg_edits_t *e)
{
    lua_createtable(L, 0, h ? h->nhdrs : 0);
    int t = lua_gettop(L);
    for (int i = 0; h && i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (e->n && mg_edits_find(e, n.p, n.n))
            continue;
        push_lower(L, n);
        lua_pushvalue(L, -1);
        lua_rawget(L, t);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v.p, v.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v.p, v.n);
        }
        lua_rawset(L, t);
    }
    for (int i = 0; i < e->n; i++) {
        if (e->v[i].value == NULL)
            continue;
        push_lower(L, (mg_str_t){ e->v[i].name, e->v[i].name_len });
        if (e->multi) { /* a header set to several values: joined too */
            lua_pushvalue(L, -1);
            if (lua_rawget(L, t) == LUA_TSTRING) {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, e->v[i].value, e->v[i].value_len);
                lua_concat(L, 3);
                lua_rawset(L, t);
                continue;
            }
            lua_pop(L, 1);
        }
        lua_pushlstring(L, e->v[i].value, e->v[i].value_len);
        lua_rawset(L, t);
    }
}

/* A list value for set_header at index 3 (one header field per item):
 * raises unless every item is a string or a number without CR, LF or NUL;
 * returns the length. */
static lua_Integer check_list(lua_State *L)
{
    lua_Integer len = (lua_Integer)lua_rawlen(L, 3);
    for (lua_Integer i = 1; i <= len; i++) {
        size_t vn;
        int t = lua_rawgeti(L, 3, i);
        const char *v = t == LUA_TNUMBER || t == LUA_TSTRING ? lua_tolstring(L, -1, &vn) : NULL;
        if (v == NULL)
            luaL_argerror(L, 3, "list items must be strings or numbers");
        luaL_argcheck(L, valid_value(v, vn), 3, "header value contains CR, LF or NUL");
        lua_pop(L, 1);
    }
    return len;
}

/* Sets header `n` to the checked list at index 3: one edit per item; an
 * empty list removes the header. 0 or MG_ENOMEM. */
static int set_list(lua_State *L, mg_edits_t *e, const char *n, size_t nn, lua_Integer len)
{
    int rc = len ? MG_OK : mg_edits_set(e, n, nn, NULL, 0);
    for (lua_Integer i = 1; i <= len && rc == MG_OK; i++) {
        size_t vn;
        lua_rawgeti(L, 3, i);
        const char *v = lua_tolstring(L, -1, &vn);
        rc = i == 1 ? mg_edits_set(e, n, nn, v, vn) : mg_edits_add(e, n, nn, v, vn);
        lua_pop(L, 1);
    }
    return rc;
}

/* Builds the body at idx: nil, a string, or a list of strings. */
static void push_body(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        lua_pushliteral(L, "");
    } else if (t == LUA_TTABLE) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        lua_Integer n = luaL_len(L, idx);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            if (!lua_isstring(L, -1))
                luaL_error(L, "body[%d] is a %s, not a string", (int)i, luaL_typename(L, -1));
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
    } else if (lua_isstring(L, idx)) {
        lua_pushvalue(L, idx);
    } else {
        luaL_error(L, "body must be a string or a list of strings, got %s", luaL_typename(L, idx));
    }
}

/* Where a generated response's headers go: nowhere (validation), HTTP/1
 * lines for mg_req_respond, or the held head of a staged response. */
typedef struct {
    mg_buf_t *lines;
    mg_h1_head_t *head;
    int has_ctype;
    int oom;
} hdr_sink_t;

/* One header of a Lua headers table. Framing headers are the gateway's.
 * With neither sink: validates only (may raise); otherwise adds (never
 * raises). */
static int add_header(lua_State *L, hdr_sink_t *o, const char *k, size_t kn, int vi)
{
    size_t vn;
    const char *v = lua_tolstring(L, vi, &vn);
    if (v == NULL)
        return luaL_error(L, "header '%s' must be a string", k);
    if (!mg_h1_is_token(k, kn) || !valid_value(v, vn))
        return luaL_error(L, "invalid header '%s'", k);
    if (strcasecmp(k, "content-length") == 0 || strcasecmp(k, "transfer-encoding") == 0 ||
        strcasecmp(k, "connection") == 0)
        return 0;
    if (strcasecmp(k, "content-type") == 0)
        o->has_ctype = 1;
    if (o->head) {
        if (mg_h1_head_add(o->head, k, kn, v, vn) != MG_OK)
            o->oom = 1;
    } else if (o->lines) {
        mg_buf_append(o->lines, k, kn);
        mg_buf_append(o->lines, ": ", 2);
        mg_buf_append(o->lines, v, vn);
        mg_buf_append(o->lines, "\r\n", 2); /* one check at the end (buf.h) */
    }
    return 0;
}

/* Every header of the table at hi (values may be lists for repeated
 * headers) into o. */
static void add_headers(lua_State *L, int hi, hdr_sink_t *o)
{
    if (!lua_istable(L, hi))
        return;
    lua_pushnil(L);
    while (lua_next(L, hi)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t kn;
            const char *k = lua_tolstring(L, -2, &kn);
            if (lua_istable(L, -1)) {
                lua_Integer n = luaL_len(L, -1);
                for (lua_Integer i = 1; i <= n; i++) {
                    lua_rawgeti(L, -1, i);
                    add_header(L, o, k, kn, lua_gettop(L));
                    lua_pop(L, 1);
                }
            } else {
                add_header(L, o, k, kn, lua_gettop(L));
            }
        }
        lua_pop(L, 1);
    }
}

/* req:respond / handler results: status at si, body at bi, headers at hi.
 * With response plugins on the route the answer is held for them: its
 * headers go straight into the held head (mg_req_stage_begin), never
 * through HTTP/1 text. */
static void respond(lua_State *L, mg_req_t *r, int si, int bi, int hi)
{
    lua_settop(L, hi > bi ? hi : bi); /* values we push go above the arguments */
    lua_Integer status = luaL_checkinteger(L, si);
    luaL_argcheck(L, status >= 100 && status <= 999, si, "status must be 100..999");
    push_body(L, bi);
    int body_idx = lua_gettop(L);
    if (!lua_isnoneornil(L, hi) && !lua_istable(L, hi))
        luaL_argerror(L, hi, "headers must be a table");
    /* validation first: it may raise, and allocates nothing */
    hdr_sink_t check = { 0 };
    add_headers(L, hi, &check);
    size_t bn;
    const char *body = lua_tolstring(L, body_idx, &bn);
    const char *ctype = check.has_ctype ? NULL : "text/plain; charset=utf-8";
    if (r->stage_replies) {
        hdr_sink_t held = { .head = mg_req_stage_begin(r, (int)status, ctype, bn) };
        if (held.head) {
            add_headers(L, hi, &held);
            if (!held.oom && mg_req_stage_end(r, body, bn) == MG_OK)
                return;
        }
        /* could not hold it (no client, no memory): it goes out as is */
    }
    mg_buf_t extra = { 0 };
    hdr_sink_t lines = { .lines = &extra };
    add_headers(L, hi, &lines);
    mg_buf_append(&extra, "", 1);
    if (extra.failed) {
        mg_buf_free(&extra);
        luaL_error(L, "out of memory");
    }
    mg_req_respond(r, (int)status, ctype, body, bn, extra.base);
    mg_buf_free(&extra);
}

/* --- req methods ---------------------------------------------------------- */

static int l_header(lua_State *L)
{
    mg_req_t *r = check_req(L);
    mg_str_t v = mg_req_header(r, luaL_checkstring(L, 2));
    if (v.p == NULL)
        lua_pushnil(L);
    else
        lua_pushlstring(L, v.p, v.n);
    return 1;
}

static int l_headers(lua_State *L)
{
    mg_req_t *r = check_req(L);
    push_headers(L, r->head, &r->edits);
    return 1;
}

static int l_set_header(lua_State *L)
{
    mg_req_t *r = check_req(L);
    size_t nn, vn;
    const char *n = check_name(L, 2, &nn);
    int rc;
    if (lua_type(L, 3) == LUA_TTABLE) {
        rc = set_list(L, &r->edits, n, nn, check_list(L));
    } else {
        if (lua_type(L, 3) == LUA_TNUMBER) /* a numeric string is a string already */
            lua_tostring(L, 3);
        const char *v = check_value(L, 3, &vn);
        rc = mg_edits_set(&r->edits, n, nn, v, vn);
    }
    if (rc != MG_OK)
        return luaL_error(L, "out of memory");
    return 0;
}

static int l_remove_header(lua_State *L)
{
    mg_req_t *r = check_req(L);
    size_t nn;
    const char *n = check_name(L, 2, &nn);
    if (mg_edits_set(&r->edits, n, nn, NULL, 0) != MG_OK)
        return luaL_error(L, "out of memory");
    return 0;
}

/* Cookie pairs (RFC 6265 "name=value; name2=value2"): calls fn for each
 * pair with the trimmed name and value; stops when fn returns non-zero. */
typedef int (*cookie_fn)(void *ud, mg_str_t pair, mg_str_t name, mg_str_t value);

static int is_ows(char c) { return c == ' ' || c == '\t'; }

static mg_str_t trim(const char *p, const char *e)
{
    while (p < e && is_ows(*p))
        p++;
    while (e > p && is_ows(e[-1]))
        e--;
    return (mg_str_t){ p, (size_t)(e - p) };
}

static void each_cookie(mg_str_t h, cookie_fn fn, void *ud)
{
    const char *p = h.p, *end = h.p + h.n;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pe = semi ? semi : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        mg_str_t pair = trim(p, pe);
        if (eq && pair.n && fn(ud, pair, trim(p, eq), trim(eq + 1, pe)))
            return;
        p = pe + 1;
    }
}

typedef struct {
    const char *name;
    size_t nn;
    mg_str_t value;
    int found;
} cookie_find_t;

static int cookie_find(void *ud, mg_str_t pair, mg_str_t name, mg_str_t value)
{
    (void)pair;
    cookie_find_t *f = ud;
    if (name.n != f->nn || memcmp(name.p, f->name, f->nn) != 0)
        return 0;
    f->value = value;
    f->found = 1;
    return 1;
}

/* req:cookie(name) → the value of the first cookie called name (surrounding
 * whitespace and one pair of double quotes removed), or nil. */
static int l_cookie(lua_State *L)
{
    mg_req_t *r = check_req(L);
    cookie_find_t f = { 0 };
    f.name = luaL_checklstring(L, 2, &f.nn);
    mg_str_t h = mg_req_header(r, "cookie");
    if (h.p)
        each_cookie(h, cookie_find, &f);
    if (!f.found) {
        lua_pushnil(L);
        return 1;
    }
    mg_str_t v = f.value;
    if (v.n >= 2 && v.p[0] == '"' && v.p[v.n - 1] == '"') {
        v.p++;
        v.n -= 2;
    }
    lua_pushlstring(L, v.p, v.n);
    return 1;
}

typedef struct {
    const char *name;
    size_t nn;
    mg_buf_t out;
    int removed, oom;
} cookie_strip_t;

static int cookie_strip(void *ud, mg_str_t pair, mg_str_t name, mg_str_t value)
{
    (void)value;
    cookie_strip_t *s = ud;
    if (name.n == s->nn && memcmp(name.p, s->name, s->nn) == 0) {
        s->removed = 1;
        return 0;
    }
    if ((s->out.len && mg_buf_append(&s->out, "; ", 2) != MG_OK) ||
        mg_buf_append(&s->out, pair.p, pair.n) != MG_OK)
        s->oom = 1;
    return s->oom;
}

/* req:remove_cookie(name) → true if a cookie called name was removed from
 * the Cookie header (the header goes when no cookie is left), else false. */
static int l_remove_cookie(lua_State *L)
{
    mg_req_t *r = check_req(L);
    cookie_strip_t s = { 0 };
    s.name = luaL_checklstring(L, 2, &s.nn);
    mg_str_t h = mg_req_header(r, "cookie");
    if (h.p == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    each_cookie(h, cookie_strip, &s);
    int rc = s.oom ? MG_ENOMEM : MG_OK;
    if (s.removed && rc == MG_OK)
        rc = mg_edits_set(&r->edits, "cookie", 6, s.out.len ? mg_buf_data(&s.out) : NULL,
                          s.out.len);
    mg_buf_free(&s.out);
    if (rc != MG_OK)
        return luaL_error(L, "out of memory");
    lua_pushboolean(L, s.removed);
    return 1;
}

static int body_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mg_req_t *r = (mg_req_t *)ctx;
    if (!r->body_done) {
        lua_pushnil(L);
        lua_pushstring(L, r->done ? "request finished" : "body not complete");
        return 2;
    }
    lua_pushlstring(L, r->body_buf.len ? mg_buf_data(&r->body_buf) : "", r->body_buf.len);
    return 1;
}

static void body_cancel(mg_req_t *r)
{
    r->want_body = 0;
}

static int l_body(lua_State *L)
{
    mg_req_t *r = check_req(L);
    if (r->up || r->uhead.len)
        return luaL_error(L, "req:body() after the request went upstream");
    if (r->body_done || r->done)
        return body_k(L, LUA_OK, (lua_KContext)r);
    mg_lrt_check_yield(L, r, "req:body()");
    r->want_body = 1;
    mg_lrt_wait(r, MG_WAIT_BODY, body_cancel);
    mg_req_pause_body(r, 0);
    return lua_yieldk(L, 0, (lua_KContext)r, body_k);
}

static int l_set_path(lua_State *L)
{
    mg_req_t *r = check_req(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    luaL_argcheck(L, n > 0 && p[0] == '/', 2, "path must start with /");
    for (size_t i = 0; i < n; i++)
        luaL_argcheck(L, (unsigned char)p[i] > ' ' && p[i] != 127 && p[i] != '?', 2,
                      "path contains a space, control character or '?'");
    char *s = malloc(n + 1);
    if (s == NULL)
        return luaL_error(L, "out of memory");
    memcpy(s, p, n);
    s[n] = '\0';
    free(r->path_override);
    r->path_override = s;
    return 0;
}

/* req:set_request_id(id): the id the access log shows for this request
 * (its request_id field; the request_id plugin sets it). 1 to 128 visible
 * ASCII characters, so a text line keeps one field per space; the last
 * call wins. */
static int l_set_request_id(lua_State *L)
{
    mg_req_t *r = check_req(L);
    size_t n;
    const char *id = luaL_checklstring(L, 2, &n);
    luaL_argcheck(L, n > 0 && n <= 128, 2, "request id must be 1 to 128 bytes");
    for (size_t i = 0; i < n; i++)
        luaL_argcheck(L, (unsigned char)id[i] > ' ' && (unsigned char)id[i] < 127, 2,
                      "request id contains a space, control or non-ASCII character");
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return luaL_error(L, "out of memory");
    memcpy(copy, id, n);
    copy[n] = '\0';
    free(r->request_id);
    r->request_id = copy;
    return 0;
}

static int l_set_upstream(lua_State *L)
{
    mg_req_t *r = check_req(L);
    const char *name = luaL_checkstring(L, 2);
    int i = mg_cfg_upstream_index(r->gen->cfg, name);
    if (i < 0)
        return luaL_error(L, "unknown upstream '%s'", name);
    r->upstream = i;
    return 0;
}

static int l_respond(lua_State *L)
{
    mg_req_t *r = check_req(L);
    if (r->done || mg_rs_sent(r)) {
        lua_pushnil(L);
        lua_pushliteral(L, "response already sent");
        return 2;
    }
    respond(L, r, 2, 3, 4);
    lua_pushboolean(L, 1);
    return 1;
}

/* --- the runtime's private operations --------------------------------------- */

/* The request of a runtime operation: op(req, ...) where req is the request
 * whose coroutine runs now. The runtime only ever calls them that way; the
 * check keeps a stray call (a kept req, another coroutine) from reaching
 * request state it has no business with. may raise */
static mg_req_t *check_own(lua_State *L, const char *what)
{
    mg_req_t *r = check_req(L);
    if (mg_lrt_current(L) != r || r->co != L)
        luaL_error(L, "%s: runtime operation outside its request's coroutine", what);
    return r;
}

/* An answer is decided: sent, or held for the response phase. */
static int op_done(lua_State *L)
{
    mg_req_t *r = check_own(L, "done");
    lua_pushboolean(L, r->done || mg_rs_decided(r));
    return 1;
}

static void push_res(lua_State *L, mg_req_t *r, int req_idx);

/* From here on, req:respond and handler answers are held (mg_req_stage_begin) so
 * the route's response plugins see them, as they see upstream answers. */
static int op_stage_replies(lua_State *L)
{
    mg_req_t *r = check_own(L, "stage_replies");
    r->stage_replies = 1;
    return 0;
}

static int staged(lua_State *L, mg_req_t *r)
{
    if (!mg_rs_held(r) || r->done)
        return 0;
    push_res(L, r, 1);
    return 1;
}

/* The held answer's res object, or nothing. */
static int op_staged(lua_State *L)
{
    return staged(L, check_own(L, "staged"));
}

/* The handler's results (status, body, headers) become the answer. */
static int op_reply(lua_State *L)
{
    mg_req_t *r = check_own(L, "reply");
    if (r->done || mg_rs_sent(r))
        return 0;
    if (mg_rs_held(r)) { /* the handler answered with req:respond: its return is ignored */
        lua_settop(L, 1);
        return staged(L, r);
    }
    if (!lua_isinteger(L, 2))
        return luaL_error(L, "handler must return a status code, got %s", luaL_typename(L, 2));
    respond(L, r, 2, 3, 4);
    lua_settop(L, 1);
    return staged(L, r);
}

static void push_res(lua_State *L, mg_req_t *r, int req_idx)
{
    lua_getiuservalue(L, req_idx, 2);
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    r->res_handle = new_handle(L, r, &res_tag, RES_MT, 0);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, req_idx, 2);
}

static int proxy_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mg_req_t *r = (mg_req_t *)ctx;
    if (!mg_rs_held(r))
        return 0; /* the exchange failed and was answered */
    push_res(L, r, 1);
    return 1;
}

/* proxy(req, hold, keep_head): starts the upstream exchange; with `hold`,
 * waits for the response head and returns its res object (nothing if the
 * exchange failed and was answered). */
static int op_proxy(lua_State *L)
{
    mg_req_t *r = check_own(L, "proxy");
    if (r->done || mg_rs_decided(r) || r->up)
        return 0;
    int hold = lua_toboolean(L, 2);
    if (hold)
        mg_lrt_check_yield(L, r, "proxy");
    mg_rs_proxy(r, hold);
    r->keep_res_head = lua_toboolean(L, 3);
    mg_proxy_run(r);
    if (!hold || r->done)
        return 0;
    if (mg_rs_held(r))
        return proxy_k(L, LUA_OK, (lua_KContext)r);
    mg_lrt_wait(r, MG_WAIT_HEAD, NULL);
    return lua_yieldk(L, 0, (lua_KContext)r, proxy_k);
}

static int op_send_head(lua_State *L)
{
    mg_req_t *r = check_own(L, "send_head");
    if (!mg_req_grpc_send_held(r))
        mg_proxy_send_held(r);
    return 0;
}

static int done_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)L;
    (void)status;
    (void)ctx;
    return 0;
}

/* Waits until the response has gone out (or the client went away). Only
 * once the answer is on its way: waiting before would wait for ever. */
static int op_wait_done(lua_State *L)
{
    mg_req_t *r = check_own(L, "wait_done");
    if (r->done)
        return 0;
    if (!mg_rs_sent(r) && r->up == NULL)
        return luaL_error(L, "wait_done: the response has not been started");
    mg_lrt_check_yield(L, r, "wait_done");
    mg_lrt_wait(r, MG_WAIT_DONE, NULL);
    return lua_yieldk(L, 0, (lua_KContext)r, done_k);
}

static int op_res(lua_State *L)
{
    mg_req_t *r = check_own(L, "res");
    push_res(L, r, 1);
    return 1;
}

/* The req fields, by name; 0: not a field. */
enum { RF_METHOD = 1, RF_PATH, RF_QUERY, RF_REMOTE, RF_SCHEME, RF_CTX, RF_VERSION, RF_UPGRADE, RF_ROUTE };

static int field_of(const char *k, size_t n)
{
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(k, lit, n) == 0)
    switch (n) {
    case 3:
        return IS("ctx") ? RF_CTX : 0;
    case 4:
        return IS("path") ? RF_PATH : 0;
    case 5:
        return IS("query") ? RF_QUERY : IS("route") ? RF_ROUTE : 0;
    case 6:
        return IS("method") ? RF_METHOD : IS("scheme") ? RF_SCHEME : 0;
    case 7:
        return IS("upgrade") ? RF_UPGRADE : 0;
    case 11:
        return IS("remote_addr") ? RF_REMOTE : 0;
    case 12:
        return IS("http_version") ? RF_VERSION : 0;
    }
    return 0;
#undef IS
}

/* Fields are told apart by length and bytes first (the common reads cost
 * no method-table lookup), then the methods. */
static int req_index(lua_State *L)
{
    size_t n;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    int f = k ? field_of(k, n) : 0;
    if (f == 0) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
            return 1;
        check_req(L);
        lua_pushnil(L);
        return 1;
    }
    mg_req_t *r = check_req(L);
    switch (f) {
    case RF_METHOD:
        lua_pushstring(L, llhttp_method_name(r->head->method));
        break;
    case RF_PATH:
        if (r->path_override)
            lua_pushstring(L, r->path_override);
        else
            lua_pushlstring(L, r->path.p, r->path.n);
        break;
    case RF_QUERY:
        lua_pushlstring(L, r->query.p, r->query.n);
        break;
    case RF_REMOTE:
        lua_pushstring(L, r->remote);
        break;
    case RF_SCHEME:
        if (r->https)
            lua_pushliteral(L, "https");
        else
            lua_pushliteral(L, "http");
        break;
    case RF_CTX:
        if (lua_getiuservalue(L, 1, 1) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setiuservalue(L, 1, 1);
        }
        break;
    case RF_VERSION:
        if (r->head->http_major == 2)
            lua_pushliteral(L, "2");
        else
            lua_pushfstring(L, "%d.%d", r->head->http_major, r->head->http_minor);
        break;
    case RF_UPGRADE: {
        mg_str_t u = mg_req_upgrade(r);
        if (u.p)
            push_lower(L, u);
        else
            lua_pushnil(L);
        break;
    }
    case RF_ROUTE:
        lua_pushstring(L, r->route >= 0 ? r->gen->cfg->routes[r->route].name : "");
        break;
    }
    return 1;
}

static int req_tostring(lua_State *L)
{
    void **ud = luaL_checkudata(L, 1, REQ_MT);
    mg_req_t *r = *ud;
    if (r == NULL)
        lua_pushliteral(L, "req (finished)");
    else
        lua_pushfstring(L, "req %s %s", llhttp_method_name(r->head->method), r->remote);
    return 1;
}

/* --- res ------------------------------------------------------------------ */

static int l_res_header(lua_State *L)
{
    mg_req_t *r = check_res(L);
    size_t nn;
    const char *n = luaL_checklstring(L, 2, &nn);
    const mg_hdr_edit_t *e = mg_edits_find(&r->res_edits, n, nn);
    if (e) {
        if (e->value)
            lua_pushlstring(L, e->value, e->value_len);
        else
            lua_pushnil(L);
        return 1;
    }
    int i = r->res_head ? mg_h1_find(r->res_head, n, nn, 0) : -1;
    if (i < 0) {
        lua_pushnil(L);
        return 1;
    }
    mg_str_t v = mg_h1_value(r->res_head, i);
    lua_pushlstring(L, v.p, v.n);
    return 1;
}

static int l_res_headers(lua_State *L)
{
    mg_req_t *r = check_res(L);
    push_headers(L, r->res_head, &r->res_edits);
    return 1;
}

static int res_edit(lua_State *L, int set)
{
    mg_req_t *r = check_res(L);
    size_t nn, vn = 0;
    const char *n = check_name(L, 2, &nn);
    const char *v = NULL;
    lua_Integer list = -1;
    if (set && lua_type(L, 3) == LUA_TTABLE) {
        list = check_list(L);
    } else if (set) {
        if (lua_isnumber(L, 3))
            lua_tostring(L, 3);
        v = check_value(L, 3, &vn);
    }
    if (!mg_rs_held(r)) {
        lua_pushnil(L);
        lua_pushliteral(L, "response headers already sent");
        return 2;
    }
    int rc = list >= 0 ? set_list(L, &r->res_edits, n, nn, list)
                       : mg_edits_set(&r->res_edits, n, nn, v, vn);
    if (rc != MG_OK)
        return luaL_error(L, "out of memory");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_res_set_header(lua_State *L) { return res_edit(L, 1); }
static int l_res_remove_header(lua_State *L) { return res_edit(L, 0); }

static int res_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    mg_req_t *r = check_res(L);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "status") == 0)
        lua_pushinteger(L, r->aborted ? 499 : r->status);
    else
        lua_pushnil(L);
    return 1;
}

static int res_newindex(lua_State *L)
{
    mg_req_t *r = check_res(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "status") != 0)
        return luaL_error(L, "res.%s cannot be set", k);
    lua_Integer s = luaL_checkinteger(L, 3);
    luaL_argcheck(L, s >= 200 && s <= 999, 3, "status must be 200..999");
    if (!mg_rs_held(r))
        return luaL_error(L, "response status already sent");
    r->status = (int)s;
    return 0;
}

void mg_lreq_register(lua_State *L)
{
    static const luaL_Reg req_methods[] = {
        { "header", l_header },
        { "headers", l_headers },
        { "set_header", l_set_header },
        { "remove_header", l_remove_header },
        { "cookie", l_cookie },
        { "remove_cookie", l_remove_cookie },
        { "body", l_body },
        { "set_path", l_set_path },
        { "set_upstream", l_set_upstream },
        { "set_request_id", l_set_request_id },
        { "respond", l_respond },
        { NULL, NULL },
    };
    static const luaL_Reg res_methods[] = {
        { "header", l_res_header },
        { "headers", l_res_headers },
        { "set_header", l_res_set_header },
        { "remove_header", l_res_remove_header },
        { NULL, NULL },
    };
    luaL_newmetatable(L, REQ_MT);
    luaL_newlib(L, req_methods);
    lua_pushcclosure(L, req_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, req_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "req");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newmetatable(L, RES_MT);
    luaL_newlib(L, res_methods);
    lua_pushcclosure(L, res_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, res_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pop(L, 1);
}

void mg_lreq_push(lua_State *co, mg_req_t *r)
{
    r->lua_handle = new_handle(co, r, &req_tag, REQ_MT, 2);
}

void mg_lreq_push_ops(lua_State *L)
{
    static const luaL_Reg ops[] = {
        { "done", op_done },
        { "reply", op_reply },
        { "stage_replies", op_stage_replies },
        { "staged", op_staged },
        { "proxy", op_proxy },
        { "send_head", op_send_head },
        { "wait_done", op_wait_done },
        { "res", op_res },
        { NULL, NULL },
    };
    luaL_newlib(L, ops);
}
