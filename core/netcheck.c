/* Startup and -t resolution of the config's host names (netcheck.h). Runs
 * the loop until the resolver answered (nothing is served yet), so it may
 * wait; never on a request path. Redis names are resolved here too, so
 * the pools made at the first gw.redis call find them in the resolver's
 * cache (kept names linger a while after their last user). */
#include "netcheck.h"
#include "config.h"
#include "dns.h"
#include "loop.h"
#include "redis.h"
#include "upstream.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>

#define MAX_REDIS 64

typedef struct rcheck {
    char name[64];
    char addr[256];
    char host[256];
    mg_dns_name_t *dns;
} rcheck_t;

/* The config's redis section (runtime.redis_conf): name and addr of each
 * entry, at most MAX_REDIS. */
static int redis_entries(lua_State *L, rcheck_t *out)
{
    int n = 0, top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "moongate.runtime");
    if (lua_istable(L, -1) && lua_getfield(L, -1, "redis_conf") == LUA_TTABLE) {
        int t = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, t)) {
            if (n < MAX_REDIS && lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
                if (lua_getfield(L, -1, "addr") == LUA_TSTRING) {
                    snprintf(out[n].name, sizeof out[n].name, "%s", lua_tostring(L, -3));
                    snprintf(out[n].addr, sizeof out[n].addr, "%s", lua_tostring(L, -1));
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

int mg_netcheck(mg_loop_t *loop, int report, double timeout, FILE *out)
{
    const mg_cfg_t *cfg = loop->gen->cfg;
    rcheck_t *rc = NULL;
    int nr = 0, bad = 0;
    if (loop->L && (rc = calloc(MAX_REDIS, sizeof *rc)) != NULL) {
        nr = redis_entries(loop->L, rc);
        for (int i = 0; i < nr; i++) {
            mg_rds_addr_t a;
            char err[256];
            if (mg_rds_parse_addr(rc[i].addr, &a, err, sizeof err) != 0) {
                if (!report)
                    continue;
                char needle[300];
                snprintf(needle, sizeof needle, "addr\x01%s", rc[i].addr);
                fprintf(out, "%s:%d: redis.%s.addr: %s\n", cfg->file,
                        mg_cfg_locate_line(cfg->file, needle), rc[i].name, err);
                bad++;
            } else if (a.unix_path[0] && report) {
                struct stat st;
                if (stat(a.unix_path, &st) != 0 || !S_ISSOCK(st.st_mode)) {
                    char needle[300];
                    snprintf(needle, sizeof needle, "addr\x01%s", rc[i].addr);
                    fprintf(out, "%s:%d: redis.%s.addr: \"%s\" is not a unix socket\n", cfg->file,
                            mg_cfg_locate_line(cfg->file, needle), rc[i].name, a.unix_path);
                    bad++;
                }
            } else if (a.is_name && loop->dns) {
                snprintf(rc[i].host, sizeof rc[i].host, "%s", a.host);
                rc[i].dns = mg_dns_name(loop->dns, a.host);
            }
        }
    }
    if (loop->dns)
        mg_dns_settle(loop->dns, timeout);
    for (int u = 0; u < cfg->nupstreams; u++) {
        const mg_cfg_upstream_t *up = &cfg->upstreams[u];
        for (int s = 0; s < up->nservers; s++) {
            mg_dns_name_t *dn = loop->gen->ups[u].servers[s].dns;
            struct sockaddr_storage ss;
            socklen_t sl;
            const char *err = NULL;
            if (up->servers[s].name == NULL)
                continue;
            if (dn && mg_dns_name_addr(dn, up->servers[s].port, &ss, &sl, &err) == 0)
                continue;
            bad++;
            if (report)
                fprintf(out, "%s:%d: upstreams.%s.servers[%d]: %s\n", cfg->file,
                        up->servers[s].line, up->name, s + 1,
                        err ? err : "cannot resolve");
        }
    }
    for (int i = 0; i < nr; i++) {
        struct sockaddr_storage ss;
        socklen_t sl;
        const char *err = NULL;
        if (rc[i].dns == NULL)
            continue;
        if (mg_dns_name_addr(rc[i].dns, 1, &ss, &sl, &err) != 0 && report) {
            char needle[300];
            snprintf(needle, sizeof needle, "addr\x01%s", rc[i].addr);
            fprintf(out, "%s:%d: redis.%s.addr: %s\n", cfg->file,
                    mg_cfg_locate_line(cfg->file, needle), rc[i].name, err);
            bad++;
        }
        mg_dns_name_unref(rc[i].dns);
    }
    free(rc);
    return bad;
}
