/* Entry points of the Lua binding modules that need no request context
 * (crypto, base64). The runtime registers them in package.preload as
 * "moongate.crypto" and "moongate.base64"; plugins reach them as gw.crypto
 * and gw.base64. Each returns a fresh table of functions. */
#ifndef MG_L_BINDINGS_H
#define MG_L_BINDINGS_H

typedef struct lua_State lua_State;

/* HMAC, digests, signature verification, AES-256-GCM/CBC, random bytes,
 * constant-time comparison (core/l_crypto.c). May raise (OOM only). */
int luaopen_moongate_crypto(lua_State *L);

/* Standard and URL-safe base64 (core/l_base64.c). May raise (OOM only). */
int luaopen_moongate_base64(lua_State *L);

/* gw.redis: pooled, nonblocking Redis (core/l_redis.c). */
int luaopen_moongate_redis(lua_State *L);

/* gw.http.request: nonblocking HTTP/1.1 client (core/l_http.c). */
int luaopen_moongate_http(lua_State *L);

/* gw.shared: dictionaries in shared memory (core/l_shared.c). */
int luaopen_moongate_shared(lua_State *L);

/* Puts every module above in package.preload. */
void mg_lbindings_preload(lua_State *L);

#endif
