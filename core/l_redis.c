/* moongate.redis: gw.redis([name | options]) and its :call, :pipeline and
 * :eval_cached methods (PRODUCT.md). Each waiting call follows STYLE.md b:
 * check, fast path (a pool that is down answers at once), arm the request's
 * wait slot with a heap ticket from core/redis.c, yield with a
 * continuation. The ticket's completion only schedules the coroutine
 * (mg_lrt_wake: it runs once hiredis's callback has returned), so no Lua
 * ever runs inside a hiredis callback; the wait
 * timer is the per-call timeout. A late reply lands in a detached ticket and
 * is discarded.
 *
 * State lives in the Lua registry (table "mg_rds"): pools by their settings
 * ("bykey", each a userdata whose __gc frees the pool) and, per config name,
 * the config table the pool was built from ("named"), so a reload that
 * changes a name's settings gets a new pool and retires the old one. */
#include "lrt.h"
#include "loop.h"
#include "redis.h"
#include "req.h"

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/evp.h>

#define POOL_MT "moongate.redis.pool"
#define HANDLE_MT "moongate.redis"
#define REG_KEY "mg_rds"

#define DEFAULT_POOL 16
#define DEFAULT_TIMEOUT 0.5

enum { MODE_CALL, MODE_PIPELINE };

typedef struct handle {
    int named; /* uservalue 1: the config name, or the pool userdata */
} handle_t;

/* --- pools ---------------------------------------------------------------- */

static int pool_gc(lua_State *L)
{
    mg_rds_pool_t **box = luaL_checkudata(L, 1, POOL_MT);
    /* Pools are anchored in the registry, so this runs only in lua_close,
     * which mg_loop_free calls after ev_loop_destroy: touch no watcher. */
    mg_rds_pool_free(*box, 0);
    *box = NULL;
    return 0;
}

/* Reads one option of a redis settings table at idx; `what` names the table
 * in errors ("redis.default" or "gw.redis"). May raise. */
static lua_Number opt_number(lua_State *L, int idx, const char *what, const char *k,
                             lua_Number dflt, int integer) MG_LJMP
{
    lua_Number v = dflt;
    int t = lua_getfield(L, idx, k);
    if (t != LUA_TNIL) {
        if (integer ? !lua_isinteger(L, -1) : t != LUA_TNUMBER)
            luaL_error(L, "%s.%s: must be %s", what, k, integer ? "an integer" : "a number");
        v = lua_tonumber(L, -1);
        if (!(v >= 0 && v <= 1e6)) /* also NaN; keeps the int casts defined */
            luaL_error(L, "%s.%s: out of range", what, k);
    }
    lua_pop(L, 1);
    return v;
}

/* Pushes the pool userdata for the settings table at idx, creating it (and
 * anchoring it by its settings) if needed. May raise on bad settings. */
static mg_rds_pool_t *pool_for(lua_State *L, int idx, const char *what, int strict) MG_LJMP
{
    idx = lua_absindex(L, idx);
    int base = lua_gettop(L);
    if (strict) {
        static const char *const known[] = { "addr", "pool", "timeout", "connect_timeout",
                                              "password", "db", NULL };
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            int ok = 0;
            if (lua_type(L, -1) == LUA_TSTRING)
                for (int i = 0; known[i]; i++)
                    ok |= strcmp(lua_tostring(L, -1), known[i]) == 0;
            if (!ok)
                luaL_error(L, "%s: unknown option '%s'", what, luaL_tolstring(L, -1, NULL));
        }
    }
    mg_rds_opts_t o;
    o.dns = mg_lrt_loop(L)->dns;
    if (lua_getfield(L, idx, "addr") != LUA_TSTRING)
        luaL_error(L, "%s.addr: expected \"host:port\"", what);
    o.addr = lua_tostring(L, -1); /* kept on the stack until the pool exists */
    int ptype = lua_getfield(L, idx, "password");
    if (ptype != LUA_TNIL && ptype != LUA_TSTRING)
        luaL_error(L, "%s.password: must be a string", what);
    o.password = lua_tostring(L, -1);
    o.size = (int)opt_number(L, idx, what, "pool", DEFAULT_POOL, 1);
    o.db = (int)opt_number(L, idx, what, "db", 0, 1);
    o.timeout = opt_number(L, idx, what, "timeout", DEFAULT_TIMEOUT, 0);
    o.connect_timeout = opt_number(L, idx, what, "connect_timeout", o.timeout, 0);

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, o.addr);
    luaL_addchar(&b, '\n');
    if (o.password) {
        luaL_addchar(&b, 'p');
        luaL_addstring(&b, o.password);
    }
    lua_pushfstring(L, "\n%d\n%d\n%f\n%f", o.db, o.size, (lua_Number)o.timeout,
                    (lua_Number)o.connect_timeout);
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    int key = lua_gettop(L);

    lua_getfield(L, LUA_REGISTRYINDEX, REG_KEY);
    lua_getfield(L, -1, "bykey");
    int bykey = lua_gettop(L);
    lua_pushvalue(L, key);
    mg_rds_pool_t *p = NULL;
    if (lua_rawget(L, bykey) == LUA_TUSERDATA) {
        p = *(mg_rds_pool_t **)lua_touserdata(L, -1);
    } else {
        lua_pop(L, 1);
        mg_rds_pool_t **box = lua_newuserdatauv(L, sizeof *box, 0);
        *box = NULL;
        luaL_setmetatable(L, POOL_MT);
        char err[256];
        *box = mg_rds_pool_new(mg_lrt_loop(L)->ev, &o, err, sizeof err);
        if (*box == NULL)
            luaL_error(L, "%s: %s", what, err);
        lua_pushvalue(L, key);
        lua_pushvalue(L, -2);
        lua_rawset(L, bykey); /* bykey[key] = pool */
        p = *box;
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    return p;
}

/* The config table for name (runtime.redis_conf[name]) pushed, or nil. */
static int push_conf(lua_State *L, int name)
{
    name = lua_absindex(L, name);
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "moongate.runtime");
    int t = LUA_TNIL;
    lua_pushnil(L);
    if (lua_istable(L, -2) && lua_getfield(L, -2, "redis_conf") == LUA_TTABLE) {
        lua_pushvalue(L, name);
        t = lua_gettable(L, -2);
    }
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return t;
}

/* The pool of a named Redis in the current config. May raise (unknown
 * name, bad settings). Leaves the stack as it was. */
static mg_rds_pool_t *named_pool(lua_State *L, int name) MG_LJMP
{
    int top = lua_gettop(L);
    name = lua_absindex(L, name);
    if (push_conf(L, name) != LUA_TTABLE)
        luaL_error(L, "gw.redis: no redis named '%s' in the config's redis section",
                   lua_tostring(L, name));
    int conf = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_KEY);
    lua_getfield(L, -1, "named");
    int named = lua_gettop(L);
    lua_pushvalue(L, name);
    if (lua_rawget(L, named) == LUA_TTABLE) {
        lua_rawgeti(L, -1, 1);
        if (lua_rawequal(L, -1, conf)) {
            lua_rawgeti(L, -2, 2);
            mg_rds_pool_t *p = *(mg_rds_pool_t **)lua_touserdata(L, -1);
            lua_settop(L, top);
            return p;
        }
        lua_pop(L, 1);
    }
    int old = lua_gettop(L); /* the previous entry, or nil */
    lua_pushfstring(L, "redis.%s", lua_tostring(L, name));
    pool_for(L, conf, lua_tostring(L, -1), 0);
    /* the pool is on the top, above the `what` string */
    mg_rds_pool_t *p = *(mg_rds_pool_t **)lua_touserdata(L, -1);
    if (lua_istable(L, old)) {
        lua_rawgeti(L, old, 2);
        mg_rds_pool_t *prev = *(mg_rds_pool_t **)lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (prev != p && prev != NULL)
            mg_rds_pool_retire(prev);
    }
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, conf);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 2);
    lua_pushvalue(L, name);
    lua_insert(L, -2);
    lua_rawset(L, named);
    lua_settop(L, top);
    return p;
}

static mg_rds_pool_t *handle_pool(lua_State *L) MG_LJMP
{
    handle_t *h = luaL_checkudata(L, 1, HANDLE_MT);
    lua_getiuservalue(L, 1, 1);
    mg_rds_pool_t *p;
    if (h->named) {
        p = named_pool(L, -1);
    } else {
        p = *(mg_rds_pool_t **)lua_touserdata(L, -1);
    }
    lua_pop(L, 1);
    if (p == NULL)
        luaL_error(L, "gw.redis: pool closed");
    return p;
}

/* gw.redis([name | options]) -> handle. A name is looked up in the config
 * at each call (so a handle made at plugin load follows reloads); options
 * make a pool right away. */
static int l_open(lua_State *L)
{
    int t = lua_type(L, 1);
    handle_t *h;
    if (t == LUA_TNONE || t == LUA_TNIL || t == LUA_TSTRING) {
        if (t != LUA_TSTRING) {
            lua_settop(L, 0);
            lua_pushliteral(L, "default");
        }
        /* In a request the config is settled: an unknown name is an error
         * now. At plugin load the new config is not published yet. */
        if (mg_lrt_current(L) != NULL) {
            if (push_conf(L, 1) != LUA_TTABLE)
                return luaL_error(L, "gw.redis: no redis named '%s' in the config's redis "
                                     "section", lua_tostring(L, 1));
            lua_pop(L, 1);
        }
        h = lua_newuserdatauv(L, sizeof *h, 1);
        h->named = 1;
        lua_pushvalue(L, 1);
    } else if (t == LUA_TTABLE) {
        pool_for(L, 1, "gw.redis", 1);
        h = lua_newuserdatauv(L, sizeof *h, 1);
        h->named = 0;
        lua_pushvalue(L, -2);
    } else {
        return luaL_typeerror(L, 1, "redis name or options table");
    }
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, HANDLE_MT);
    return 1;
}

static int l_tostring(lua_State *L)
{
    handle_t *h = luaL_checkudata(L, 1, HANDLE_MT);
    lua_getiuservalue(L, 1, 1);
    if (h->named)
        lua_pushfstring(L, "gw.redis(%s)", lua_tostring(L, -1));
    else
        lua_pushfstring(L, "gw.redis(%p)", lua_touserdata(L, -1));
    return 1;
}

/* --- argument checks ------------------------------------------------------ */

static int ieq(const char *s, size_t n, const char *lit)
{
    size_t ln = strlen(lit);
    if (n != ln)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s[i];
        if (a >= 'a' && a <= 'z')
            a = (unsigned char)(a - 32);
        if (a != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* Commands that would change the shared connection for everyone on it, or
 * break the one-reply-per-command order hiredis relies on. */
static void check_command(lua_State *L, int idx, int next, int in_pipeline, int *multi,
                          int *watch) MG_LJMP
{
    static const char *const refused[] = {
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
        "SUNSUBSCRIBE", "MONITOR", "SELECT", "AUTH", "QUIT", "RESET", "HELLO", "SYNC",
        "PSYNC", NULL,
    };
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    for (int i = 0; refused[i]; i++)
        if (ieq(s, n, refused[i]))
            luaL_error(L, "gw.redis: %s is not allowed on pooled connections "
                          "(use the pool's password/db settings)", refused[i]);
    if (ieq(s, n, "CLIENT") && next) {
        size_t m;
        const char *sub = lua_tolstring(L, next, &m);
        if (ieq(sub, m, "REPLY"))
            luaL_error(L, "gw.redis: CLIENT REPLY is not allowed on pooled connections");
    }
    int is_multi = ieq(s, n, "MULTI"), is_end = ieq(s, n, "EXEC") || ieq(s, n, "DISCARD");
    int is_watch = ieq(s, n, "WATCH"), is_unwatch = ieq(s, n, "UNWATCH");
    if (!in_pipeline && (is_multi || is_end || is_watch || is_unwatch))
        luaL_error(L, "gw.redis: %s only inside :pipeline (a connection is shared)", s);
    if (is_multi)
        *multi = 1;
    if (is_end)
        *multi = *watch = 0;
    if (is_watch)
        *watch = 1;
    if (is_unwatch)
        *watch = 0;
}

/* Converts stack values first..last to strings in place (numbers), raising
 * for other types. */
static void check_args(lua_State *L, int first, int last, int argbase) MG_LJMP
{
    for (int i = first; i <= last; i++) {
        int t = lua_type(L, i);
        if (t == LUA_TNUMBER)
            lua_tolstring(L, i, NULL);
        else if (t != LUA_TSTRING)
            luaL_typeerror(L, argbase ? argbase + (i - first) : i, "string or number");
    }
}

static mg_req_t *request_of(lua_State *L) MG_LJMP
{
    mg_req_t *r = mg_lrt_current(L);
    if (r == NULL || r->co != L || !lua_isyieldable(L))
        luaL_error(L, "gw.redis needs a request coroutine (not the main thread, a user "
                      "coroutine or a metamethod)");
    return r;
}

/* --- waiting -------------------------------------------------------------- */

static void on_done(mg_rds_ticket_t *t, void *data)
{
    (void)t;
    mg_lrt_wake(data); /* resumed after hiredis returns: never run Lua inside it */
}

static void on_cancel(mg_req_t *r)
{
    mg_rds_ticket_t *t = r->wait.ticket;
    r->wait.ticket = NULL;
    if (t)
        mg_rds_detach(t);
}

/* Sends one command made of npre leading strings and the stack strings
 * first..last. Cannot raise. */
static mg_rds_ticket_t *send_one(lua_State *L, mg_rds_pool_t *p, mg_req_t *r, int npre,
                                 const char **pre, const size_t *prelen, int first, int last,
                                 const char **err)
{
    int n = npre + (last >= first ? last - first + 1 : 0);
    const char *sargv[16] = { 0 };
    size_t slen[16] = { 0 };
    const char **argv = sargv;
    size_t *lens = slen;
    if (n > 16) {
        argv = calloc((size_t)n, sizeof *argv);
        lens = calloc((size_t)n, sizeof *lens);
        if (argv == NULL || lens == NULL) {
            if (argv != sargv)
                free(argv);
            if (lens != slen)
                free(lens);
            *err = "out of memory";
            return NULL;
        }
    }
    int j = 0;
    for (; j < npre; j++) {
        argv[j] = pre[j];
        lens[j] = prelen[j];
    }
    for (int i = first; i <= last; i++, j++)
        argv[j] = lua_tolstring(L, i, &lens[j]);
    mg_rds_ticket_t *t = mg_rds_submit(p, 1, &n, argv, lens, on_done, r, err);
    if (argv != sargv) {
        free(argv);
        free(lens);
    }
    return t;
}

/* Arms the request's wait slot with t and its timeout. */
static void arm(mg_req_t *r, mg_rds_ticket_t *t, mg_rds_pool_t *p)
{
    mg_lrt_wait(r, MG_WAIT_EXT, on_cancel);
    r->wait.ticket = t;
    ev_timer_stop(r->loop->ev, &r->wait.timer);
    ev_now_update(r->loop->ev); /* ev_now is stale after a long callback (as gw.sleep) */
    ev_timer_set(&r->wait.timer, mg_rds_pool_timeout(p), 0.);
    ev_timer_start(r->loop->ev, &r->wait.timer);
}

/* --- replies to Lua ------------------------------------------------------- */

/* Pushes one reply. Inside arrays (and pipelines) a nil is false and an
 * error reply is { false, msg }, so tables have no holes. May raise (OOM). */
static void push_reply(lua_State *L, const redisReply *rp, int top) MG_LJMP
{
    luaL_checkstack(L, 4, "redis reply too deep");
    switch (rp->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, rp->str, (size_t)rp->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)rp->integer);
        break;
    case REDIS_REPLY_NIL:
        if (top)
            lua_pushnil(L);
        else
            lua_pushboolean(L, 0);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 2, 0);
        lua_pushboolean(L, 0);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, rp->str, (size_t)rp->len);
        lua_rawseti(L, -2, 2);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, rp->elements > 1u << 24 ? 0 : (int)rp->elements, 0);
        for (size_t i = 0; i < rp->elements; i++) {
            push_reply(L, rp->element[i], 0);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        luaL_error(L, "gw.redis: unsupported reply type %d", rp->type);
    }
}

/* Protected: (ticket, mode) -> the call's results. */
static int convert(lua_State *L)
{
    const mg_rds_ticket_t *t = lua_touserdata(L, 1);
    int mode = (int)lua_tointeger(L, 2);
    int n = mg_rds_ticket_count(t);
    for (int i = 0; i < n; i++) {
        if (mg_rds_ticket_reply(t, i) == NULL) {
            const char *e = mg_rds_ticket_err(t);
            lua_pushnil(L);
            lua_pushstring(L, e ? e : "connection closed");
            return 2;
        }
    }
    if (mode == MODE_CALL) {
        const redisReply *rp = mg_rds_ticket_reply(t, 0);
        if (rp->type == REDIS_REPLY_ERROR) {
            lua_pushnil(L);
            lua_pushlstring(L, rp->str, (size_t)rp->len);
            return 2;
        }
        push_reply(L, rp, 1);
        return 1;
    }
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        push_reply(L, mg_rds_ticket_reply(t, i), 0);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* Converts and frees t; results are pushed on L. Re-raises conversion
 * errors once t is freed. */
static int finish(lua_State *L, mg_rds_ticket_t *t, int mode) MG_LJMP
{
    int top = lua_gettop(L);
    lua_pushcfunction(L, convert);
    lua_pushlightuserdata(L, t);
    lua_pushinteger(L, mode);
    int rc = lua_pcall(L, 2, LUA_MULTRET, 0);
    mg_rds_ticket_free(t);
    if (rc != LUA_OK)
        return lua_error(L);
    return lua_gettop(L) - top;
}

/* Common start of a continuation: the ticket, or nil, "timeout" pushed. */
static mg_rds_ticket_t *resumed(lua_State *L, lua_KContext ctx)
{
    mg_rds_ticket_t *t = (mg_rds_ticket_t *)ctx;
    mg_req_t *r = mg_lrt_current(L);
    if (r)
        r->wait.ticket = NULL;
    if (!mg_rds_ticket_ready(t)) {
        mg_rds_timeout(t); /* the late reply is discarded when it comes */
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return NULL;
    }
    return t;
}

static int call_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mg_rds_ticket_t *t = resumed(L, ctx);
    return t ? finish(L, t, MODE_CALL) : 2;
}

static int pipeline_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mg_rds_ticket_t *t = resumed(L, ctx);
    return t ? finish(L, t, MODE_PIPELINE) : 2;
}

/* h:call(cmd, ...) -> value | nil, err */
static int l_call(lua_State *L)
{
    mg_rds_pool_t *p = handle_pool(L);
    int top = lua_gettop(L);
    luaL_argcheck(L, top >= 2, 2, "redis command expected");
    check_args(L, 2, top, 0);
    int multi = 0, watch = 0;
    check_command(L, 2, top >= 3 ? 3 : 0, 0, &multi, &watch);
    mg_req_t *r = request_of(L);
    const char *err = NULL;
    mg_rds_ticket_t *t = send_one(L, p, r, 0, NULL, NULL, 2, top, &err);
    if (t == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    arm(r, t, p);
    return lua_yieldk(L, 0, (lua_KContext)t, call_k);
}

/* h:pipeline({ {cmd, ...}, ... }) -> { reply, ... } | nil, err */
static int l_pipeline(lua_State *L)
{
    mg_rds_pool_t *p = handle_pool(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_Integer ncmds = luaL_len(L, 2);
    if (ncmds == 0) {
        lua_newtable(L);
        return 1;
    }
    luaL_argcheck(L, ncmds < (1 << 20), 2, "pipeline too long");
    int multi = 0, watch = 0;
    int total = 0;
    /* Push every argument (as a string) above the table: they must live
     * until the commands are formatted. */
    for (lua_Integer i = 1; i <= ncmds; i++) {
        if (lua_rawgeti(L, 2, i) != LUA_TTABLE)
            luaL_error(L, "bad argument #1 to 'pipeline' (command %d is not a table)", (int)i);
        int cmd = lua_gettop(L);
        lua_Integer argc = luaL_len(L, cmd);
        if (argc < 1)
            luaL_error(L, "bad argument #1 to 'pipeline' (command %d is empty)", (int)i);
        luaL_checkstack(L, (int)argc + 2, "pipeline too long");
        for (lua_Integer a = 1; a <= argc; a++) {
            int ty = lua_rawgeti(L, cmd, a);
            if (ty == LUA_TNUMBER)
                lua_tolstring(L, -1, NULL);
            else if (ty != LUA_TSTRING)
                luaL_error(L, "bad argument #1 to 'pipeline' (command %d, argument %d: "
                              "string or number expected, got %s)",
                           (int)i, (int)a, luaL_typename(L, -1));
        }
        check_command(L, cmd + 1, argc >= 2 ? cmd + 2 : 0, 1, &multi, &watch);
        lua_remove(L, cmd);
        total += (int)argc;
    }
    if (multi || watch)
        luaL_error(L, "gw.redis: a pipeline must not leave a MULTI or WATCH open "
                      "(end it with EXEC, DISCARD or UNWATCH)");
    mg_req_t *r = request_of(L);

    int *argc = malloc((size_t)ncmds * sizeof *argc);
    const char **argv = malloc((size_t)total * sizeof *argv);
    size_t *lens = malloc((size_t)total * sizeof *lens);
    const char *err = "out of memory";
    mg_rds_ticket_t *t = NULL;
    if (argc && argv && lens) {
        int k = 3;
        for (lua_Integer i = 1; i <= ncmds; i++) {
            lua_rawgeti(L, 2, i);
            argc[i - 1] = (int)lua_rawlen(L, -1);
            lua_pop(L, 1);
        }
        for (int j = 0; j < total; j++, k++)
            argv[j] = lua_tolstring(L, k, &lens[j]);
        t = mg_rds_submit(p, (int)ncmds, argc, argv, lens, on_done, r, &err);
    }
    free(argc);
    free(argv);
    free(lens);
    lua_settop(L, 2);
    if (t == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    arm(r, t, p);
    return lua_yieldk(L, 0, (lua_KContext)t, pipeline_k);
}

/* --- EVALSHA with EVAL fallback -------------------------------------------- */

static int sha1_hex(const char *s, size_t n, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = 0;
    return 0;
}

static int eval_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mg_rds_ticket_t *t = resumed(L, ctx);
    if (t == NULL)
        return 2;
    const redisReply *rp = mg_rds_ticket_reply(t, 0);
    if (rp == NULL || rp->type != REDIS_REPLY_ERROR || strncmp(rp->str, "NOSCRIPT", 8) != 0)
        return finish(L, t, MODE_CALL);
    /* Not cached on this server (yet, or any more): send the script. */
    mg_rds_ticket_free(t);
    mg_rds_pool_t *p = handle_pool(L);
    mg_req_t *r = request_of(L);
    const char *pre[] = { "EVAL" };
    size_t prelen[] = { 4 };
    const char *err = NULL;
    t = send_one(L, p, r, 1, pre, prelen, 2, lua_gettop(L), &err);
    if (t == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    arm(r, t, p);
    return lua_yieldk(L, 0, (lua_KContext)t, call_k);
}

/* h:eval_cached(script, nkeys, ...) -> as :call("EVAL", script, nkeys, ...),
 * sent as EVALSHA first so the script body crosses the wire only when the
 * server does not have it cached. */
static int l_eval_cached(lua_State *L)
{
    mg_rds_pool_t *p = handle_pool(L);
    size_t n;
    const char *script = luaL_checklstring(L, 2, &n);
    lua_Integer nkeys = luaL_checkinteger(L, 3);
    luaL_argcheck(L, nkeys >= 0, 3, "negative key count");
    int top = lua_gettop(L);
    check_args(L, 3, top, 0);
    mg_req_t *r = request_of(L);
    char sha[41];
    if (sha1_hex(script, n, sha) != 0)
        return luaL_error(L, "gw.redis: SHA-1 unavailable");
    const char *pre[] = { "EVALSHA", sha };
    size_t prelen[] = { 7, 40 };
    const char *err = NULL;
    mg_rds_ticket_t *t = send_one(L, p, r, 2, pre, prelen, 3, top, &err);
    if (t == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    arm(r, t, p);
    return lua_yieldk(L, 0, (lua_KContext)t, eval_k);
}

int luaopen_moongate_redis(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "call", l_call },
        { "pipeline", l_pipeline },
        { "eval_cached", l_eval_cached },
        { NULL, NULL },
    };
    if (luaL_newmetatable(L, POOL_MT)) {
        lua_pushcfunction(L, pool_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "redis pool");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, HANDLE_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "gw.redis");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, REG_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_newtable(L);
        lua_setfield(L, -2, "bykey");
        lua_newtable(L);
        lua_setfield(L, -2, "named");
        lua_setfield(L, LUA_REGISTRYINDEX, REG_KEY);
    } else {
        lua_pop(L, 1);
    }
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    return 1;
}
