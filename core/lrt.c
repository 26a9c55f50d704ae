#include "lrt.h"
#include "conn.h"
#include "log.h"
#include "loop.h"
#include "req.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define REQ_MT "moongate.req"

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int panic(lua_State *L)
{
    mg_log_error("Lua panic: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    abort();
}

/* --- the req object seen by Lua: a userdata holding the request pointer,
 * NULLed when the call returns so a kept reference cannot reach freed
 * memory. */

static mg_req_t *check_req(lua_State *L)
{
    mg_req_t **ud = luaL_checkudata(L, 1, REQ_MT);
    if (*ud == NULL)
        luaL_error(L, "request finished");
    return *ud;
}

static int l_req_header(lua_State *L)
{
    mg_req_t *r = check_req(L);
    mg_str_t v = mg_req_header(r, luaL_checkstring(L, 2));
    if (v.p == NULL)
        lua_pushnil(L);
    else
        lua_pushlstring(L, v.p, v.n);
    return 1;
}

static int l_req_headers(lua_State *L)
{
    mg_req_t *r = check_req(L);
    lua_createtable(L, 0, r->head->nhdrs);
    for (int i = 0; i < r->head->nhdrs; i++) {
        mg_str_t n = mg_h1_name(r->head, i), v = mg_h1_value(r->head, i);
        char lower[256];
        size_t k = n.n < sizeof lower ? n.n : sizeof lower;
        for (size_t j = 0; j < k; j++)
            lower[j] = (n.p[j] >= 'A' && n.p[j] <= 'Z') ? (char)(n.p[j] | 0x20) : n.p[j];
        lua_pushlstring(L, lower, k);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) { /* repeated header: join with ", " */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v.p, v.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v.p, v.n);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_req_index(lua_State *L)
{
    mg_req_t *r = check_req(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "method") == 0)
        lua_pushstring(L, llhttp_method_name(r->head->method));
    else if (strcmp(k, "path") == 0)
        lua_pushlstring(L, r->path.p, r->path.n);
    else if (strcmp(k, "query") == 0)
        lua_pushlstring(L, r->query.p, r->query.n);
    else if (strcmp(k, "remote_addr") == 0)
        lua_pushstring(L, r->conn ? r->conn->remote : "");
    else if (strcmp(k, "header") == 0)
        lua_pushcfunction(L, l_req_header);
    else if (strcmp(k, "headers") == 0)
        lua_pushcfunction(L, l_req_headers);
    else
        lua_pushnil(L);
    return 1;
}

lua_State *mg_lrt_new(mg_loop_t *loop)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    lua_atpanic(L, panic);
    luaL_openlibs(L);
    *(mg_loop_t **)lua_getextraspace(L) = loop;
    lua_pushcfunction(L, traceback);
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_traceback");
    luaL_newmetatable(L, REQ_MT);
    lua_pushcfunction(L, l_req_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    return L;
}

void mg_lrt_close(lua_State *L)
{
    if (L)
        lua_close(L);
}

/* Pushes the traceback handler and fn(req); returns the handler's index. */
static int push_call(lua_State *L, mg_req_t *r, int ref, mg_req_t ***slot)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_traceback");
    int h = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    *slot = lua_newuserdatauv(L, sizeof(mg_req_t *), 0);
    **slot = r;
    luaL_setmetatable(L, REQ_MT);
    return h;
}

static void lua_failed(mg_req_t *r, lua_State *L, const char *what)
{
    mg_log_error("%s failed: %s", what, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    mg_req_error(r, 500, "internal error");
}

int mg_lrt_match(mg_req_t *r, int ref)
{
    lua_State *L = r->loop->L;
    int top = lua_gettop(L);
    mg_req_t **slot;
    int h = push_call(L, r, ref, &slot);
    int rc = lua_pcall(L, 1, 1, h);
    *slot = NULL;
    int ok = 0;
    if (rc != LUA_OK)
        lua_failed(r, L, "route match function");
    else
        ok = lua_toboolean(L, -1);
    lua_settop(L, top);
    return ok;
}

/* Builds "Name: value\r\n" lines from a Lua table of headers. */
static void collect_headers(lua_State *L, int idx, mg_buf_t *out)
{
    if (!lua_istable(L, idx))
        return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING && (lua_isstring(L, -1))) {
            size_t kn, vn;
            const char *k = lua_tolstring(L, -2, &kn);
            const char *v = lua_tolstring(L, -1, &vn);
            if (!memchr(k, '\n', kn) && !memchr(k, '\r', kn) && !memchr(v, '\n', vn) &&
                !memchr(v, '\r', vn) && strcasecmp(k, "content-length") != 0 &&
                strcasecmp(k, "connection") != 0 && strcasecmp(k, "transfer-encoding") != 0) {
                mg_buf_append(out, k, kn);
                mg_buf_append(out, ": ", 2);
                mg_buf_append(out, v, vn);
                mg_buf_append(out, "\r\n", 2);
            }
        }
        lua_pop(L, 1);
    }
}

void mg_lrt_handle(mg_req_t *r, int ref)
{
    lua_State *L = r->loop->L;
    int top = lua_gettop(L);
    mg_req_t **slot;
    int h = push_call(L, r, ref, &slot);
    int rc = lua_pcall(L, 1, 3, h);
    *slot = NULL;
    if (rc != LUA_OK) {
        lua_failed(r, L, "handler");
        lua_settop(L, top);
        return;
    }
    int base = top + 1; /* status, body, headers */
    int status = (int)lua_tointeger(L, base + 1);
    if (status < 100 || status > 999) {
        lua_pushstring(L, "handler must return a status code");
        lua_failed(r, L, "handler");
        lua_settop(L, top);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int bi = base + 2;
    if (lua_type(L, bi) == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, bi);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, bi, i);
            luaL_addvalue(&b);
        }
    } else if (lua_isstring(L, bi)) {
        lua_pushvalue(L, bi);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t blen;
    const char *body = lua_tolstring(L, -1, &blen);
    mg_buf_t extra = { 0 };
    collect_headers(L, base + 3, &extra);
    int has_ctype = 0;
    if (extra.len) {
        mg_buf_append(&extra, "", 1);
        has_ctype = strcasestr(extra.base, "content-type:") != NULL;
    }
    mg_req_respond(r, status, has_ctype ? NULL : "text/plain; charset=utf-8", body, blen,
                   extra.len ? extra.base : NULL);
    mg_buf_free(&extra);
    lua_settop(L, top);
}
