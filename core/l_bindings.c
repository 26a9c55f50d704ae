/* Registers every binding module in package.preload, so plugins reach them
 * with require "moongate.<name>" (gw.lua assembles them into `gw`). */
#include "l_bindings.h"

#include <lauxlib.h>
#include <lua.h>

void mg_lbindings_preload(lua_State *L)
{
    static const luaL_Reg mods[] = {
        { "moongate.crypto", luaopen_moongate_crypto },
        { "moongate.base64", luaopen_moongate_base64 },
        { "moongate.redis", luaopen_moongate_redis },
        { "moongate.http", luaopen_moongate_http },
        { "moongate.shared", luaopen_moongate_shared },
        { NULL, NULL },
    };
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = mods; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
}
