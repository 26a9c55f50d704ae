/* The config file: a Lua file returning a table (PRODUCT.md). Loaded once
 * per generation into plain C structs; read-only afterwards. Lua functions in
 * it (route match functions, handlers) stay in the Lua state as registry refs
 * owned by the generation. */
#ifndef MG_CONFIG_H
#define MG_CONFIG_H

/* Default of the `busy_poll` setting (s); see loop.c. */
#define MG_BUSY_POLL_DEFAULT 0.0

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct lua_State lua_State;
struct mg_cidr;

typedef struct mg_addr {
    struct sockaddr_storage sa;
    socklen_t len;
    char text[80];          /* as written: "127.0.0.1:8080" */
    char *name;             /* upstream servers: a host name resolved at run time (dns.h);
                             * sa is unset then. Owned by the config; NULL: numeric */
    int port;
    int line;               /* config line naming it (names only, for -t) */
} mg_addr_t;

typedef struct mg_cfg_listen {
    mg_addr_t addr;
    char *tls_cert, *tls_key;  /* TLS listener: PEM files, resolved against the config's directory */
    int tls_cert_line, tls_key_line; /* where the config names them, for error messages */
    int proxy_protocol;     /* every connection starts with a PROXY protocol v1/v2 header */
    int http2;              /* HTTP/2 too (h2c preface, ALPN h2); default on */
} mg_cfg_listen_t;

/* limits.underscore_headers: a request header whose name has "_" */
enum { MG_CFG_US_ALLOW, MG_CFG_US_DROP, MG_CFG_US_REJECT };

typedef struct mg_limits {
    size_t max_uri_bytes, max_header_bytes, max_body_bytes;
    double header_timeout, idle_timeout, drain_timeout;
    int underscore_headers;   /* MG_CFG_US_*; default drop, as nginx */
    double tunnel_idle_timeout; /* a tunnel with no byte either way this long closes */
    int h2_max_streams;       /* concurrent HTTP/2 streams per connection */
} mg_limits_t;

enum { MG_BAL_ROUND_ROBIN, MG_BAL_LEAST_CONN, MG_BAL_HASH };

/* An upstream's `health` table: active checks (health.c). */
typedef struct mg_cfg_health {
    int on;                 /* a health table was given */
    int tcp;                /* type = "tcp": a check only connects */
    char *path;             /* the GET's target (http type); default "/" */
    char *host;             /* its Host header; NULL: tls_server_name, else the server as written */
    double interval, timeout;
    int rise, fall;         /* successes that mark a server up, failures that mark it down */
    int status_lo, status_hi; /* the statuses that count as success */
} mg_cfg_health_t;

typedef struct mg_cfg_upstream {
    char *name;
    mg_addr_t *servers;
    int nservers;
    int balance;            /* MG_BAL_* */
    char *hash_key;         /* "remote_addr", "uri", "header:NAME" */
    int keepalive;          /* idle connections kept per upstream */
    double connect_timeout, read_timeout, idle_timeout;
    int retries;            /* further servers tried after a failed connect */
    int max_fails;          /* failed connects within fail_timeout that mark a server down; 0: never */
    double fail_timeout;    /* that window, and how long a server then stays down */
    int tls;                /* speak TLS to the servers */
    int tls_verify;         /* check their certificates (chain and name) */
    char *tls_server_name;  /* SNI and the name checked; NULL: each server's host */
    char *tls_ca;           /* PEM file of trusted CAs; NULL: the system store */
    int h2;                 /* protocol = "h2": HTTP/2 (prior knowledge, ALPN h2 with tls) */
    mg_cfg_health_t health;
} mg_cfg_upstream_t;

typedef struct mg_cfg_header_match {
    char *name, *value;
} mg_cfg_header_match_t;

typedef struct mg_cfg_route {
    char *name;             /* "route N" when unnamed */
    char *host;             /* exact, case-insensitive; "*.example.com" wildcard */
    char *path;             /* exact path */
    char *prefix;
    size_t prefix_len;
    uint64_t methods;       /* bit per llhttp method; 0 = any */
    mg_cfg_header_match_t *headers;
    int nheaders;
    int match_ref;          /* Lua match function, or LUA_NOREF */
    int chain_ref;          /* Lua plugin chain (+ handler), or LUA_NOREF for plain proxying */
    int has_handler;
    int has_plugins;
    int upstream;           /* index into upstreams, or -1 */
    char **upgrades;        /* protocols tunneled (lower case); default { "websocket" } */
    int nupgrades;
} mg_cfg_route_t;

/* One gw.shared dictionary (core/shdict.h). */
typedef struct mg_cfg_shared {
    char *name;
    size_t size;            /* bytes */
} mg_cfg_shared_t;

typedef struct mg_cfg {
    char *file;
    int workers;            /* 0 = "auto" */
    int watch;              /* dev mode: reload when files change */
    double busy_poll;       /* s to keep polling after activity before sleeping; 0 = off */
    mg_cfg_listen_t *listen;
    int nlisten;
    int has_admin;
    mg_addr_t admin;
    mg_limits_t limits;
    int access_log_format;  /* MG_ALOG_TEXT or MG_ALOG_JSON (accesslog.h) */
    char *resolver;         /* name servers "ip:port,..." (c-ares csv), or NULL: resolv.conf */
    double resolver_valid;  /* s between re-resolutions of upstream/Redis host names */
    struct mg_cidr *trusted;/* trusted_proxies (realip.h), ntrusted of them */
    int ntrusted;
    char *access_log;       /* "stdout", "stderr", a path (resolved against the config's folder), or NULL for off */
    char *error_log;        /* "stderr", "stdout" or a path (resolved); NULL: stderr */
    int error_log_level;    /* MG_LOG_*, or -1 when the config sets none */
    char **files;           /* files the config dofile'd/loadfile'd (resolved), for watch */
    int nfiles;
    mg_cfg_upstream_t *upstreams;
    int nupstreams;
    mg_cfg_route_t *routes;
    int nroutes;
    int *order;             /* route indexes in match order: exact, prefix by length, rest */
    lua_State *L;           /* the state holding the refs (borrowed) */
    size_t lua_memory_limit;     /* bytes of Lua heap per worker */
    long lua_max_instructions;   /* per resume, before a plugin is stopped */
    mg_cfg_shared_t *shared;     /* `shared = { name = bytes }` */
    int nshared;
} mg_cfg_t;

/* Loads and checks FILE in L. Returns a new config, or NULL with
 * "file:line: reason" in err. Never raises. */
mg_cfg_t *mg_cfg_load(lua_State *L, const char *file, char *err, size_t errlen);
/* The same; when FILE ran but has errors and `partial` is not NULL,
 * *partial gets what could be read of it (`moongate -t` still checks its
 * host names; the caller frees it with mg_cfg_free), else NULL. */
mg_cfg_t *mg_cfg_load_ex(lua_State *L, const char *file, char *err, size_t errlen,
                         mg_cfg_t **partial);
/* Releases the config and its Lua refs. NULL-tolerant. */
void mg_cfg_free(mg_cfg_t *cfg);
/* Parses "host:port", "[v6]:port", ":port" or "port" (resolving names, so
 * config time only). 0, or -1 with a reason in err. */
int mg_cfg_parse_addr(const char *text, mg_addr_t *out, char *err, size_t errlen);
/* Like mg_cfg_parse_addr for an upstream server, without any lookup: a
 * numeric host (or localhost) fills sa; a host name is kept in out->name
 * for the resolver. 0, or -1 with a reason in err. */
int mg_cfg_parse_server(const char *text, mg_addr_t *out, char *err, size_t errlen);
/* The line of `file` that names `needle` ("key" or "key\x01value"); 1 if none. */
int mg_cfg_locate_line(const char *file, const char *needle);
int mg_cfg_upstream_index(const mg_cfg_t *cfg, const char *name);
/* The listener configured with address text `addr`, or NULL. */
const mg_cfg_listen_t *mg_cfg_listener(const mg_cfg_t *cfg, const char *addr);

#endif
