/* Startup and -t resolution of the config's host names (netcheck.h). Runs
 * the loop until the resolver answered (nothing is served yet), so it may
 * wait; never on a request path. Redis host names are held by each
 * generation (cfgnames.c), so settling here covers them too and the pool
 * made at the first gw.redis call finds its address. */
#include "netcheck.h"
#include "cfgnames.h"
#include "config.h"
#include "dns.h"
#include "loop.h"
#include "redis.h"
#include "upstream.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

int mg_netcheck(mg_loop_t *loop, int report, double timeout, FILE *out)
{
    const mg_cfg_t *cfg = loop->gen->cfg;
    mg_cfgnames_redis_t *rc = NULL;
    int nr = 0, bad = 0;
    if (loop->L && (rc = calloc(MG_CFGNAMES_MAX, sizeof *rc)) != NULL) {
        nr = mg_cfgnames_redis(loop->L, rc, MG_CFGNAMES_MAX);
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

int mg_netcheck_partial(mg_loop_t *loop, const mg_cfg_t *cfg, double timeout, FILE *out)
{
    if (loop->dns == NULL || cfg == NULL)
        return 0;
    int n = 0, bad = 0;
    for (int u = 0; u < cfg->nupstreams; u++)
        n += cfg->upstreams[u].nservers;
    mg_dns_name_t **dn = calloc((size_t)n + 1, sizeof *dn);
    if (dn == NULL)
        return 0;
    mg_dns_configure(loop->dns, cfg->resolver, cfg->resolver_valid); /* its name servers */
    int k = 0;
    for (int u = 0; u < cfg->nupstreams; u++)
        for (int s = 0; s < cfg->upstreams[u].nservers; s++, k++)
            if (cfg->upstreams[u].servers[s].name)
                dn[k] = mg_dns_name(loop->dns, cfg->upstreams[u].servers[s].name);
    /* Redis host names, when the redis section itself was well-formed */
    mg_cfgnames_redis_t *rc = loop->L ? calloc(MG_CFGNAMES_MAX, sizeof *rc) : NULL;
    int nr = rc ? mg_cfgnames_redis_read(loop->L, rc, MG_CFGNAMES_MAX) : 0;
    for (int i = 0; i < nr; i++) {
        mg_rds_addr_t a;
        char err[256];
        if (mg_rds_parse_addr(rc[i].addr, &a, err, sizeof err) == 0 && a.is_name)
            rc[i].dns = mg_dns_name(loop->dns, a.host);
    }
    mg_dns_settle(loop->dns, timeout);
    k = 0;
    for (int u = 0; u < cfg->nupstreams; u++) {
        const mg_cfg_upstream_t *up = &cfg->upstreams[u];
        for (int s = 0; s < up->nservers; s++, k++) {
            struct sockaddr_storage ss;
            socklen_t sl;
            const char *err = NULL;
            if (dn[k] == NULL || mg_dns_name_addr(dn[k], up->servers[s].port, &ss, &sl, &err) == 0)
                continue;
            bad++;
            fprintf(out, "%s:%d: upstreams.%s.servers[%d]: %s\n", cfg->file, up->servers[s].line,
                    up->name, s + 1, err ? err : "cannot resolve");
        }
    }
    for (int i = 0; i < nr; i++) {
        struct sockaddr_storage ss;
        socklen_t sl;
        const char *err = NULL;
        if (rc[i].dns == NULL)
            continue;
        if (mg_dns_name_addr(rc[i].dns, 1, &ss, &sl, &err) != 0) {
            char needle[300];
            snprintf(needle, sizeof needle, "addr\x01%s", rc[i].addr);
            fprintf(out, "%s:%d: redis.%s.addr: %s\n", cfg->file,
                    mg_cfg_locate_line(cfg->file, needle), rc[i].name, err);
            bad++;
        }
        mg_dns_name_unref(rc[i].dns);
    }
    free(rc);
    for (int i = 0; i < n; i++)
        mg_dns_name_unref(dn[i]);
    free(dn);
    return bad;
}
