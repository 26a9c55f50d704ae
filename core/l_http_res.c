/* gw.http responses (the Lua side of a finished exchange): a table with
 * status, headers, repeated_headers and body, whose per-response metatable
 * keeps the received head as one "name\0value\0" string for headers_list
 * (built on first use) and res:header(name); or, with lazy_headers, a
 * read-only userdata holding status, head and body in one block, every
 * table built on first use. */
#include "l_http.h"

#include <string.h>

#include <lauxlib.h>
#include <lua.h>

/* Scans a raw head string ("name\0value\0" pairs): the next pair from *p,
 * or 0 at the end. */
static int next_pair(const char **p, const char *end, mg_str_t *n, mg_str_t *v)
{
    if (*p >= end)
        return 0;
    size_t left = (size_t)(end - *p);
    n->p = *p;
    n->n = strnlen(*p, left);
    if (n->n >= left) /* not ours (a metatable someone edited): stop */
        return 0;
    v->p = n->p + n->n + 1;
    left -= n->n + 1;
    v->n = strnlen(v->p, left);
    if (v->n >= left)
        return 0;
    *p = v->p + v->n + 1;
    return 1;
}

/* With lazy_headers the response is a read-only userdata: status, body
 * and the head as "name\0value\0" pairs in one block, the Lua values
 * built from it on first use kept in its user values. */
static const char resp_tag = 'r';

typedef struct {
    const char *tag; /* &resp_tag */
    int status;
    size_t rawlen, bodylen;
    char data[];     /* raw head, then body */
} resp_t;

enum { UV_HEADERS = 1, UV_REPEATED, UV_LIST, UV_N = UV_LIST };

static resp_t *to_resp(lua_State *L, int idx)
{
    resp_t *u = lua_touserdata(L, idx);
    if (u == NULL || lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) < sizeof *u ||
        u->tag != &resp_tag)
        return NULL;
    return u;
}

/* The raw head of the response at idx (kept in its metatable, or in the
 * lazy response's block), or NULL. */
static const char *raw_head(lua_State *L, int idx, size_t *rn)
{
    const resp_t *u = to_resp(L, idx);
    if (u) {
        *rn = u->rawlen;
        return u->data;
    }
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return NULL;
    lua_rawgeti(L, -1, 1);
    const char *raw = lua_tolstring(L, -1, rn);
    lua_pop(L, 2); /* the metatable anchors the string */
    return raw;
}

/* Pushes the headers table and the repeated_headers table (nil when no
 * name came more than once) of a raw head. May raise (OOM). */
static void build_headers(lua_State *L, const char *raw, size_t rn)
{
    const char *p = raw, *end = raw + rn;
    mg_str_t n, v;
    int nh = 0;
    for (const char *q = raw; next_pair(&q, end, &n, &v);)
        nh++;
    lua_createtable(L, 0, nh);
    /* headers[lower(name)], repeated ones joined with ", "; and for those,
     * repeated_headers[lower(name)] = { value1, value2, ... } (the field is
     * there only when some name repeats: most responses cost nothing) */
    int hi = lua_gettop(L), mi = hi + 1;
    lua_pushnil(L); /* repeated_headers, once needed */
    while (next_pair(&p, end, &n, &v)) {
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
}

/* Sets res.headers (and res.repeated_headers, when some name came more
 * than once) for the response table at ri. May raise (OOM). */
static void set_headers(lua_State *L, int ri, const char *raw, size_t rn)
{
    build_headers(L, raw, rn);
    if (lua_isnil(L, -1))
        lua_pop(L, 1);
    else
        lua_setfield(L, ri, "repeated_headers");
    lua_setfield(L, ri, "headers");
}


/* res:header(name): the value of a response header as received (fields of
 * a repeated name joined with ", "), or nil; when the name came more than
 * once, also the list of its fields' values. Reads the raw head: no table
 * of headers is built. */
static int res_header(lua_State *L)
{
    size_t nn, rn;
    const char *name = luaL_checklstring(L, 2, &nn);
    const char *raw = raw_head(L, 1, &rn);
    if (raw == NULL)
        return luaL_error(L, "res:header: not a gw.http response");
    const char *p = raw, *end = raw + rn;
    mg_str_t n, v, first = { NULL, 0 };
    int count = 0;
    while (next_pair(&p, end, &n, &v))
        if (mg_str_eq_ci(n, name, nn) && count++ == 0)
            first = v;
    if (count == 0) {
        lua_pushnil(L);
        return 1;
    }
    if (count == 1) {
        lua_pushlstring(L, first.p, first.n);
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_createtable(L, count, 0); /* the list, under the buffer's slot */
    lua_insert(L, -2);
    int li = lua_gettop(L) - 1, k = 0;
    for (p = raw; next_pair(&p, end, &n, &v);) {
        if (!mg_str_eq_ci(n, name, nn))
            continue;
        lua_pushlstring(L, v.p, v.n);
        lua_rawseti(L, li, ++k);
        if (k > 1)
            luaL_addlstring(&b, ", ", 2);
        luaL_addlstring(&b, v.p, v.n);
    }
    luaL_pushresult(&b);
    lua_insert(L, li); /* value, list */
    return 2;
}

/* Pushes res.headers_list of a raw head. May raise (OOM). */
static void build_list(lua_State *L, const char *raw, size_t rn)
{
    const char *p = raw, *end = raw + rn;
    mg_str_t n, v;
    lua_newtable(L);
    for (lua_Integer i = 1; next_pair(&p, end, &n, &v); i++) {
        lua_createtable(L, 2, 0);
        lua_pushlstring(L, n.p, n.n);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, v.p, v.n);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i);
    }
}

/* The response's fields that are not stored in it: headers_list (built on
 * first use: most callers never read it, and a list of { name, value }
 * pairs is two allocations per header), headers and repeated_headers with
 * lazy_headers (built together on first use), and the header method. The
 * metatable, one per response, holds the head as one string of
 * "name\0value\0" pairs (names and values never contain NUL: llhttp
 * refuses them); what is built is stored in the response, so later reads
 * are plain fields. */
static int response_index(lua_State *L)
{
    size_t kn;
    const char *k = lua_tolstring(L, 2, &kn);
    if (k == NULL)
        return 0;
    if (kn == 6 && memcmp(k, "header", 6) == 0) {
        lua_pushcfunction(L, res_header);
        return 1;
    }
    int list = kn == 12 && memcmp(k, "headers_list", 12) == 0;
    int hdrs = (kn == 7 && memcmp(k, "headers", 7) == 0) ||
               (kn == 16 && memcmp(k, "repeated_headers", 16) == 0);
    if (!list && !hdrs)
        return 0;
    size_t rn;
    const char *raw = raw_head(L, 1, &rn);
    if (raw == NULL)
        return 0;
    if (hdrs) {
        lua_pushliteral(L, "headers");
        if (lua_rawget(L, 1) != LUA_TNIL) /* built: none repeated */
            return 0;
        lua_pop(L, 1);
        set_headers(L, 1, raw, rn);
        lua_pushvalue(L, 2);
        lua_rawget(L, 1);
        return 1;
    }
    build_list(L, raw, rn);
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "headers_list");
    return 1;
}

/* __index of the lazy response. */
static int lazy_index(lua_State *L)
{
    resp_t *u = to_resp(L, 1);
    size_t kn;
    const char *k = lua_tolstring(L, 2, &kn);
    if (u == NULL || k == NULL)
        return 0;
    switch (kn) {
    case 4:
        if (memcmp(k, "body", 4) == 0) {
            lua_pushlstring(L, u->data + u->rawlen, u->bodylen);
            return 1;
        }
        break;
    case 6:
        if (memcmp(k, "status", 6) == 0) {
            lua_pushinteger(L, u->status);
            return 1;
        }
        if (memcmp(k, "header", 6) == 0) {
            lua_pushcfunction(L, res_header);
            return 1;
        }
        break;
    case 7:
    case 16:
        if (kn == 7 ? memcmp(k, "headers", 7) == 0 : memcmp(k, "repeated_headers", 16) == 0) {
            int slot = kn == 7 ? UV_HEADERS : UV_REPEATED;
            if (lua_getiuservalue(L, 1, slot) != LUA_TNIL) {
                if (lua_type(L, -1) == LUA_TBOOLEAN) /* built: none repeated */
                    lua_pushnil(L);
                return 1;
            }
            build_headers(L, u->data, u->rawlen);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushboolean(L, 0);
            }
            lua_setiuservalue(L, 1, UV_REPEATED);
            lua_setiuservalue(L, 1, UV_HEADERS);
            return lazy_index(L); /* now stored */
        }
        break;
    case 12:
        if (memcmp(k, "headers_list", 12) == 0) {
            if (lua_getiuservalue(L, 1, UV_LIST) == LUA_TNIL) {
                build_list(L, u->data, u->rawlen);
                lua_pushvalue(L, -1);
                lua_setiuservalue(L, 1, UV_LIST);
            }
            return 1;
        }
        break;
    }
    return 0;
}

/* The size of a head as "name\0value\0" pairs. */
static size_t raw_size(const mg_h1_head_t *h)
{
    size_t rn = 0;
    for (int i = 0; i < h->nhdrs; i++)
        rn += mg_h1_name(h, i).n + mg_h1_value(h, i).n + 2;
    return rn;
}

/* Writes the head as "name\0value\0" pairs at w (raw_size(h) bytes). */
static void pack_raw(const mg_h1_head_t *h, char *w)
{
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        memcpy(w, n.p, n.n);
        w += n.n;
        *w++ = '\0';
        memcpy(w, v.p, v.n);
        w += v.n;
        *w++ = '\0';
    }
}

/* Pushes the lazy response for a finished exchange. May raise (OOM). */
static void push_lazy(lua_State *L, const mg_h1_head_t *h, const mg_buf_t *body)
{
    size_t rn = raw_size(h);
    resp_t *u = lua_newuserdatauv(L, sizeof *u + rn + body->len, UV_N);
    u->tag = &resp_tag;
    u->status = h->status;
    u->rawlen = rn;
    u->bodylen = body->len;
    pack_raw(h, u->data);
    if (body->len)
        memcpy(u->data + rn, mg_buf_data(body), body->len);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &resp_tag);
    lua_setmetatable(L, -2);
}

void mg_lhttp_push_response(lua_State *L, const mg_h1_head_t *h, const mg_buf_t *body, int lazy)
{
    if (lazy) {
        push_lazy(L, h, body);
        return;
    }
    lua_createtable(L, 0, 4);
    int ri = lua_gettop(L);
    lua_pushinteger(L, h->status);
    lua_setfield(L, ri, "status");
    lua_pushlstring(L, body->len ? mg_buf_data(body) : "", body->len);
    lua_setfield(L, ri, "body");
    size_t rn = raw_size(h);
    luaL_Buffer raw;
    pack_raw(h, luaL_buffinitsize(L, &raw, rn));
    luaL_pushresultsize(&raw, rn);
    lua_createtable(L, 1, 1); /* this response's metatable */
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_pushcfunction(L, response_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, ri);
    size_t n;
    lua_getmetatable(L, ri);
    lua_rawgeti(L, -1, 1);
    const char *r = lua_tolstring(L, -1, &n);
    set_headers(L, ri, r, n);
    lua_pop(L, 2);
}

void mg_lhttp_res_register(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &resp_tag) == LUA_TNIL) {
        lua_createtable(L, 0, 2);
        lua_pushcfunction(L, lazy_index);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "gw.http response");
        lua_setfield(L, -2, "__metatable");
        lua_rawsetp(L, LUA_REGISTRYINDEX, &resp_tag);
    }
    lua_pop(L, 1);
}
