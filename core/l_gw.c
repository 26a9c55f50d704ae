/* moongate.core: the C half of the gw module — sleep, now, log. The rest of
 * gw (json, cache, base64, crypto, redis, http) is assembled in
 * lua/moongate/gw.lua. */
#include "log.h"
#include "loop.h"
#include "lrt.h"
#include "req.h"

#include <string.h>

#include <lauxlib.h>
#include <lua.h>

static int sleep_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    lua_pushboolean(L, 1);
    return 1;
}

/* gw.sleep(s): arms the request's wait timer and yields; the timer's
 * callback resumes the coroutine. Checks come before any side effect. */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0, 1, "negative delay");
    mg_req_t *r = mg_lrt_check_yield(L, NULL, "gw.sleep");
    mg_lrt_wait(r, MG_WAIT_SLEEP, NULL);
    /* the loop time is stale after a long stretch of Lua: count from now */
    ev_now_update(r->loop->ev);
    ev_timer_set(&r->wait.timer, s, 0.);
    ev_timer_start(r->loop->ev, &r->wait.timer);
    return lua_yieldk(L, 0, (lua_KContext)r, sleep_k);
}

static int l_now(lua_State *L)
{
    mg_loop_t *loop = mg_lrt_loop(L);
    lua_pushnumber(L, ev_now(loop->ev));
    return 1;
}

static int level_of(const char *s)
{
    if (strcmp(s, "error") == 0 || strcmp(s, "err") == 0)
        return MG_LOG_ERROR;
    if (strcmp(s, "warn") == 0 || strcmp(s, "warning") == 0)
        return MG_LOG_WARN;
    if (strcmp(s, "info") == 0 || strcmp(s, "notice") == 0)
        return MG_LOG_INFO;
    if (strcmp(s, "debug") == 0)
        return MG_LOG_DEBUG;
    return -1;
}

/* gw.log(level, ...): the values are concatenated (tostring), as ngx.log. */
static int l_log(lua_State *L)
{
    int level = level_of(luaL_checkstring(L, 1));
    luaL_argcheck(L, level >= 0, 1, "level must be error, warn, info or debug");
    if (!mg_log_enabled(level))
        return 0;
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    mg_req_t *r = mg_lrt_current(L);
    if (r && r->route >= 0)
        mg_log(level, "[lua] route %s: %s", r->gen->cfg->routes[r->route].name,
               lua_tostring(L, -1));
    else
        mg_log(level, "[lua] %s", lua_tostring(L, -1));
    return 0;
}

static int l_memory(lua_State *L)
{
    mg_loop_t *loop = mg_lrt_loop(L);
    lua_pushinteger(L, (lua_Integer)loop->lua_mem);
    return 1;
}

int luaopen_moongate_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "sleep", l_sleep },
        { "now", l_now },
        { "log", l_log },
        { "memory", l_memory },
        { NULL, NULL },
    };
    luaL_newlib(L, fns);
    return 1;
}
