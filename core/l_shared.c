/* moongate.shared: gw.shared(name), the Lua face of core/shdict.c. Return
 * values follow OpenResty's ngx.shared.DICT (without flags). Nothing here
 * raises while a dictionary's lock is held: shdict.c copies out under the
 * lock into this module's buffers, Lua values are pushed after. */
#include "config.h"
#include "l_bindings.h"
#include "log.h"
#include "loop.h"
#include "lrt.h"
#include "shdict.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#define DICT_MT "moongate.shared.dict"

/* Grow-only copy buffers (one process, one thread). */
static char *vbuf;
static size_t vcap;
static char *kbuf;
static size_t klen_used, kcap;
static int kfail;

/* A handle: bound to a dictionary, or (d == NULL) to a name, resolved at
 * each call against the current config (one taken while a config or a
 * plugin module loads, before the config says what it declares). */
typedef struct handle {
    mg_shd_t *d;
    char name[MG_SHD_NAME_MAX];
} handle_t;

static mg_shd_t *resolve(lua_State *L, const char *name);

static mg_shd_t *check_dict(lua_State *L)
{
    handle_t *h = luaL_checkudata(L, 1, DICT_MT);
    if (h->d)
        return h->d;
    mg_shd_t *d = resolve(L, h->name);
    if (d == NULL)
        luaL_error(L, "gw.shared: the config declares no dictionary %s", h->name);
    return d;
}

/* The key at arg 2, as OpenResty: numbers become strings; nil, empty or
 * too long gives nil + a message (returns NULL, pushed 2 values). */
static const char *check_key(lua_State *L, size_t *len, int *nret)
{
    *nret = 0;
    int t = lua_type(L, 2);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        lua_pushnil(L);
        lua_pushliteral(L, "nil key");
        *nret = 2;
        return NULL;
    }
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_argerror(L, 2, "expected a string key");
    const char *k = lua_tolstring(L, 2, len);
    if (*len == 0 || *len > MG_SHD_KEY_MAX) {
        lua_pushnil(L);
        if (*len == 0)
            lua_pushliteral(L, "empty key");
        else
            lua_pushliteral(L, "key too long");
        *nret = 2;
        return NULL;
    }
    return k;
}

static double opt_ttl(lua_State *L, int arg)
{
    if (lua_isnoneornil(L, arg))
        return 0;
    double t = luaL_checknumber(L, arg);
    luaL_argcheck(L, t >= 0, arg, "ttl must not be negative");
    return t;
}

static void to_val(lua_State *L, int arg, mg_shd_val_t *v)
{
    memset(v, 0, sizeof *v);
    switch (lua_type(L, arg)) {
    case LUA_TNIL:
    case LUA_TNONE:
        v->type = MG_SHD_NONE;
        break;
    case LUA_TSTRING:
        v->type = MG_SHD_STR;
        v->s = lua_tolstring(L, arg, &v->len);
        break;
    case LUA_TBOOLEAN:
        v->type = MG_SHD_BOOL;
        v->i = lua_toboolean(L, arg);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, arg)) {
            v->type = MG_SHD_INT;
            v->i = lua_tointeger(L, arg);
        } else {
            v->type = MG_SHD_NUM;
            v->n = lua_tonumber(L, arg);
        }
        break;
    default:
        luaL_argerror(L, arg, lua_pushfstring(L, "bad value type %s (expected a string, "
                                                 "number, boolean or nil)",
                                              luaL_typename(L, arg)));
    }
}

static void push_val(lua_State *L, const mg_shd_val_t *v)
{
    switch (v->type) {
    case MG_SHD_STR:
        lua_pushlstring(L, v->s, v->len);
        break;
    case MG_SHD_BOOL:
        lua_pushboolean(L, v->i != 0);
        break;
    case MG_SHD_INT:
        lua_pushinteger(L, v->i);
        break;
    default:
        lua_pushnumber(L, v->n);
        break;
    }
}

/* A number argument; a numeric string counts as its number (OpenResty). */
static void check_num(lua_State *L, int arg, mg_shd_val_t *v)
{
    luaL_checknumber(L, arg);
    if (lua_type(L, arg) == LUA_TSTRING) {
        lua_stringtonumber(L, lua_tostring(L, arg));
        lua_replace(L, arg);
    }
    to_val(L, arg, v);
}

static const char *errstr(int rc)
{
    switch (rc) {
    case MG_SHD_NOTFOUND:
        return "not found";
    case MG_SHD_EXISTS:
        return "exists";
    case MG_SHD_NOMEM:
        return "no memory";
    default:
        return "not a number";
    }
}

static int l_get(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    mg_shd_val_t v;
    int rc = mg_shd_get(d, k, klen, &v, &vbuf, &vcap);
    if (rc == MG_SHD_NOTFOUND) {
        lua_pushnil(L);
        return 1;
    }
    if (rc != MG_SHD_OK)
        return luaL_error(L, "out of memory");
    push_val(L, &v);
    return 1;
}

static int do_set(lua_State *L, int add)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL) {
        lua_pushboolean(L, 0);
        lua_replace(L, -3);
        lua_pushboolean(L, 0);
        return 3;
    }
    mg_shd_val_t v;
    to_val(L, 3, &v);
    double ttl = opt_ttl(L, 4);
    int forcible = 0;
    int rc = mg_shd_set(d, k, klen, &v, ttl, add, &forcible);
    lua_pushboolean(L, rc == MG_SHD_OK);
    if (rc == MG_SHD_OK)
        lua_pushnil(L);
    else
        lua_pushstring(L, errstr(rc));
    lua_pushboolean(L, forcible);
    return 3;
}

static int l_set(lua_State *L)
{
    return do_set(L, 0);
}

static int l_add(lua_State *L)
{
    return do_set(L, 1);
}

static int l_incr(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    mg_shd_val_t n, init, out;
    check_num(L, 3, &n);
    int has_init = !lua_isnoneornil(L, 4);
    if (has_init)
        check_num(L, 4, &init);
    double init_ttl = opt_ttl(L, 5);
    int forcible = 0;
    int rc = mg_shd_incr(d, k, klen, &n, has_init, &init, init_ttl, &out, &forcible);
    if (rc != MG_SHD_OK) {
        lua_pushnil(L);
        lua_pushstring(L, errstr(rc));
        lua_pushboolean(L, 0);
        return 3;
    }
    push_val(L, &out);
    lua_pushnil(L);
    lua_pushboolean(L, forcible);
    return 3;
}

static int l_delete(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    mg_shd_delete(d, k, klen);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_ttl(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    double ttl;
    if (mg_shd_ttl(d, k, klen, &ttl) != MG_SHD_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    if (ttl == 0)
        lua_pushinteger(L, 0); /* never expires */
    else
        lua_pushnumber(L, ttl);
    return 1;
}

static int l_expire(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    luaL_checknumber(L, 3);
    double ttl = opt_ttl(L, 3);
    if (mg_shd_expire(d, k, klen, ttl) != MG_SHD_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Under the lock: append len + bytes to kbuf. */
static void collect_key(void *ud, const char *k, size_t n)
{
    (void)ud;
    if (kfail)
        return;
    size_t need = klen_used + sizeof(size_t) + n;
    if (need > kcap) {
        size_t c = kcap ? kcap : 4096;
        while (c < need)
            c *= 2;
        char *nb = realloc(kbuf, c);
        if (nb == NULL) {
            kfail = 1;
            return;
        }
        kbuf = nb;
        kcap = c;
    }
    memcpy(kbuf + klen_used, &n, sizeof n);
    memcpy(kbuf + klen_used + sizeof n, k, n);
    klen_used = need;
}

static int l_keys(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    lua_Integer max = luaL_optinteger(L, 2, 1024);
    luaL_argcheck(L, max >= 0, 2, "must not be negative");
    klen_used = 0;
    kfail = 0;
    mg_shd_keys(d, max > 0x7fffffff ? 0x7fffffff : (int)max, collect_key, NULL);
    if (kfail)
        return luaL_error(L, "out of memory");
    lua_newtable(L);
    lua_Integer i = 1;
    for (size_t off = 0; off < klen_used;) {
        size_t n;
        memcpy(&n, kbuf + off, sizeof n);
        lua_pushlstring(L, kbuf + off + sizeof n, n);
        lua_rawseti(L, -2, i++);
        off += sizeof n + n;
    }
    return 1;
}

static int l_free_space(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)mg_shd_free_space(check_dict(L)));
    return 1;
}

static int l_capacity(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)mg_shd_capacity(check_dict(L)));
    return 1;
}

static int l_flush_all(lua_State *L)
{
    mg_shd_flush_all(check_dict(L));
    return 0;
}

/* dict:take(key, rate, burst[, n]) -> allowed, tokens left, retry_after */
static int l_take(lua_State *L)
{
    mg_shd_t *d = check_dict(L);
    size_t klen;
    int nret;
    const char *k = check_key(L, &klen, &nret);
    if (k == NULL)
        return nret;
    double rate = luaL_checknumber(L, 3);
    double burst = luaL_checknumber(L, 4);
    double n = luaL_optnumber(L, 5, 1);
    luaL_argcheck(L, rate > 0, 3, "rate must be positive");
    luaL_argcheck(L, burst > 0, 4, "burst must be positive");
    luaL_argcheck(L, n >= 0, 5, "must not be negative");
    int allowed, forcible;
    double tokens, retry;
    int rc = mg_shd_take(d, k, klen, rate, burst, n, &allowed, &tokens, &retry, &forcible);
    if (rc != MG_SHD_OK) {
        lua_pushnil(L);
        lua_pushstring(L, rc == MG_SHD_NOTNUM ? "not a bucket" : errstr(rc));
        return 2;
    }
    lua_pushboolean(L, allowed);
    lua_pushnumber(L, tokens);
    lua_pushnumber(L, retry);
    return 3;
}

static int l_tostring(lua_State *L)
{
    check_dict(L);
    handle_t *h = lua_touserdata(L, 1);
    lua_pushfstring(L, "gw.shared dict: %s", h->d ? "bound" : h->name);
    return 1;
}

/* Pushes the (cached) handle of d. */
static void push_dict(lua_State *L, mg_shd_t *d)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    if (lua_rawgetp(L, -1, d) == LUA_TNIL) {
        lua_pop(L, 1);
        handle_t *h = lua_newuserdatauv(L, sizeof *h, 0);
        memset(h, 0, sizeof *h);
        h->d = d;
        luaL_setmetatable(L, DICT_MT);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, -3, d);
    }
    lua_remove(L, -2);
}

/* The dictionary the current config declares as `name` (or rate_limit's),
 * mapping it in a single process at first use; NULL if none. */
static mg_shd_t *resolve(lua_State *L, const char *name)
{
    mg_loop_t *loop = mg_lrt_loop(L);
    const mg_cfg_t *cfg = loop && loop->gen ? loop->gen->cfg : NULL;
    size_t size = 0;
    for (int i = 0; cfg && i < cfg->nshared; i++)
        if (strcmp(cfg->shared[i].name, name) == 0)
            size = cfg->shared[i].size;
    if (size == 0 && strcmp(name, MG_SHD_RATE_LIMIT) == 0)
        size = MG_SHD_RATE_LIMIT_SIZE;
    if (size == 0)
        return cfg ? NULL : mg_shd_find(name, 0); /* --script: define() */
    mg_shd_t *d = mg_shd_find(name, size);
    if (d)
        return d;
    /* one process (workers = 1, --script): mapped at first use */
    char err[256];
    if (mg_shd_ensure(name, size, err, sizeof err) >= 0)
        return mg_shd_find(name, size);
    /* (a worker whose reload read a file newer than the master's) said
     * once per name, not per call */
    lua_pushfstring(L, "moongate.shared missing %s", name);
    lua_pushvalue(L, -1);
    int said = lua_rawget(L, LUA_REGISTRYINDEX) != LUA_TNIL;
    lua_pop(L, 1);
    if (!said) {
        mg_log_error("gw.shared: %s", err);
        lua_pushboolean(L, 1);
        lua_rawset(L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(L, 1);
    }
    return NULL;
}

/* gw.shared(name): the dictionary the config declares under that name,
 * nil if there is none. Outside a request (a config file or plugin module
 * loading) it gives a handle resolved at each call instead, because the
 * config that declares the name is not known yet. */
static int l_open(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (mg_lrt_current(L) == NULL && mg_lrt_loop(L)) {
        luaL_argcheck(L, strlen(name) < MG_SHD_NAME_MAX, 1, "name too long");
        handle_t *h = lua_newuserdatauv(L, sizeof *h, 0);
        memset(h, 0, sizeof *h);
        memcpy(h->name, name, strlen(name));
        luaL_setmetatable(L, DICT_MT);
        return 1;
    }
    mg_shd_t *d = resolve(L, name);
    if (d == NULL)
        return 0;
    push_dict(L, d);
    return 1;
}

/* define(name, size): creates a dictionary outside the config (for
 * --script tools and tests; refused in a forked worker). */
static int l_define(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Integer size = luaL_checkinteger(L, 2);
    luaL_argcheck(L, size >= (lua_Integer)MG_SHD_MIN_SIZE, 2, "too small");
    char err[256];
    if (mg_shd_ensure(name, (size_t)size, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    push_dict(L, mg_shd_find(name, (size_t)size));
    return 1;
}

int luaopen_moongate_shared(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "get", l_get },
        { "set", l_set },
        { "add", l_add },
        { "incr", l_incr },
        { "delete", l_delete },
        { "ttl", l_ttl },
        { "expire", l_expire },
        { "keys", l_keys },
        { "get_keys", l_keys },
        { "free_space", l_free_space },
        { "capacity", l_capacity },
        { "flush_all", l_flush_all },
        { "take", l_take },
        { NULL, NULL },
    };
    if (luaL_newmetatable(L, DICT_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "gw.shared dict");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_newtable(L); /* cache: dict -> userdata */
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_open, 1);
    lua_setfield(L, -3, "open");
    lua_pushcclosure(L, l_define, 1);
    lua_setfield(L, -2, "define");
    lua_pushliteral(L, MG_SHD_RATE_LIMIT);
    lua_setfield(L, -2, "RATE_LIMIT");
    return 1;
}
