/* The Redis addresses of the config just loaded, read from the Lua
 * runtime's redis section (runtime.redis_conf), for the resolver: -t checks
 * them (netcheck.c), and each generation keeps their host names resolved
 * (loop.c). Below loop in the module map: no loop.h here. */
#ifndef MG_CFGNAMES_H
#define MG_CFGNAMES_H

typedef struct lua_State lua_State;
struct mg_dns;
struct mg_dns_name;

#define MG_CFGNAMES_MAX 64

typedef struct mg_cfgnames_redis {
    char name[64];           /* the config's name for it ("default") */
    char addr[256];          /* addr as written */
    struct mg_dns_name *dns; /* for the caller's use (netcheck) */
} mg_cfgnames_redis_t;

/* Fills out[0..max) with the redis section's entries; returns how many. */
int mg_cfgnames_redis(lua_State *L, mg_cfgnames_redis_t *out, int max);
/* The same from the last config read when it failed elsewhere but its
 * redis section was well-formed (runtime.redis_conf_read), for -t. */
int mg_cfgnames_redis_read(lua_State *L, mg_cfgnames_redis_t *out, int max);
/* A reference on the resolver's kept name for every Redis host name of the
 * config; *out is a new array of them (NULL when none). Returns the count. */
int mg_cfgnames_hold_redis(lua_State *L, struct mg_dns *dns, struct mg_dns_name ***out);

#endif
