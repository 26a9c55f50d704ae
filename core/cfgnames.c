/* Redis host names of the loaded config (cfgnames.h). */
#include "cfgnames.h"
#include "dns.h"
#include "redis.h"

#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

static int redis_from(lua_State *L, const char *field, mg_cfgnames_redis_t *out, int max)
{
    int n = 0, top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "moongate.runtime");
    if (lua_istable(L, -1) && lua_getfield(L, -1, field) == LUA_TTABLE) {
        int t = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, t)) {
            if (n < max && lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
                if (lua_getfield(L, -1, "addr") == LUA_TSTRING) {
                    snprintf(out[n].name, sizeof out[n].name, "%s", lua_tostring(L, -3));
                    snprintf(out[n].addr, sizeof out[n].addr, "%s", lua_tostring(L, -1));
                    out[n].dns = NULL;
                    n++;
                }
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    return n;
}

int mg_cfgnames_redis(lua_State *L, mg_cfgnames_redis_t *out, int max)
{
    return redis_from(L, "redis_conf", out, max);
}

int mg_cfgnames_redis_read(lua_State *L, mg_cfgnames_redis_t *out, int max)
{
    return redis_from(L, "redis_conf_read", out, max);
}

int mg_cfgnames_hold_redis(lua_State *L, struct mg_dns *dns, mg_dns_name_t ***out)
{
    *out = NULL;
    if (L == NULL || dns == NULL)
        return 0;
    mg_cfgnames_redis_t *rc = calloc(MG_CFGNAMES_MAX, sizeof *rc);
    if (rc == NULL)
        return 0;
    int nr = mg_cfgnames_redis(L, rc, MG_CFGNAMES_MAX), k = 0;
    mg_dns_name_t **v = nr ? calloc((size_t)nr, sizeof *v) : NULL;
    for (int i = 0; v && i < nr; i++) {
        mg_rds_addr_t a;
        char err[256];
        if (mg_rds_parse_addr(rc[i].addr, &a, err, sizeof err) == 0 && a.is_name &&
            (v[k] = mg_dns_name(dns, a.host)) != NULL)
            k++;
    }
    free(rc);
    if (k == 0) {
        free(v);
        return 0;
    }
    *out = v;
    return k;
}
