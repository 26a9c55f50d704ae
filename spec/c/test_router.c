/* Unit tests for core/router: mg_router_match over hand-built configs
 * (routes plus the match order mg_cfg_load would compute), then the real
 * order computed by mg_cfg_load from a config file. */
#include "router.h"
#include "cfgfile.h"
#include "mgtest.h"

#include <lauxlib.h>
#include <llhttp.h>
#include <strings.h>

#define BIT(m) ((uint64_t)1 << (m))

/* A route with no match function and no plugin chain, sending to upstream 0. */
#define ROUTE(...) { .match_ref = LUA_NOREF, .chain_ref = LUA_NOREF, .upstream = 0, __VA_ARGS__ }

/* A fake request: path, host, method and a few headers. */
typedef struct fake_req {
    const char *path, *host;
    int method;
    const char *hdrs[8][2];   /* name, value; NULL-terminated */
    int match_calls;          /* how often a Lua match function was asked */
    int match_answer;         /* what it answers */
} fake_req_t;

static mg_str_t fake_header(void *ud, const char *name)
{
    fake_req_t *fr = ud;
    for (int i = 0; i < 8 && fr->hdrs[i][0]; i++)
        if (strcasecmp(fr->hdrs[i][0], name) == 0)
            return (mg_str_t){ fr->hdrs[i][1], strlen(fr->hdrs[i][1]) };
    return (mg_str_t){ NULL, 0 };
}

static int fake_match(void *ud, int ref)
{
    fake_req_t *fr = ud;
    (void)ref;
    fr->match_calls++;
    return fr->match_answer;
}

static int match(const mg_cfg_t *cfg, fake_req_t *fr)
{
    mg_route_input_t in = {
        .path = { fr->path, strlen(fr->path) },
        .host = { fr->host ? fr->host : "", fr->host ? strlen(fr->host) : 0 },
        .method = fr->method,
        .header = fake_header,
        .call_match = fake_match,
        .ud = fr,
    };
    return mg_router_match(cfg, &in);
}

/* Route index for a GET of `path` with Host `host`. */
static int get(const mg_cfg_t *cfg, const char *path, const char *host)
{
    fake_req_t fr = { .path = path, .host = host, .method = HTTP_GET };
    return match(cfg, &fr);
}

/* Fills prefix_len and wraps routes + order into a config. */
static mg_cfg_t make_cfg(mg_cfg_route_t *routes, int n, int *order)
{
    for (int i = 0; i < n; i++)
        routes[i].prefix_len = routes[i].prefix ? strlen(routes[i].prefix) : 0;
    return (mg_cfg_t){ .routes = routes, .nroutes = n, .order = order };
}

/* --- hand-built configs ----------------------------------------------- */

static void test_exact_before_prefix(void)
{
    mg_cfg_route_t routes[] = {
        ROUTE(.prefix = "/api/"),       /* 0 */
        ROUTE(.path = "/api/health"),   /* 1 */
        ROUTE(.path = "/"),             /* 2 */
    };
    int order[] = { 1, 2, 0 }; /* exact paths first, then prefixes */
    mg_cfg_t cfg = make_cfg(routes, 3, order);
    CHECK_INT(get(&cfg, "/api/health", NULL), 1);
    CHECK_INT(get(&cfg, "/api/healthz", NULL), 0);
    CHECK_INT(get(&cfg, "/api/", NULL), 0);
    CHECK_INT(get(&cfg, "/", NULL), 2);
    CHECK_INT(get(&cfg, "/api", NULL), -1);   /* shorter than the prefix */
    CHECK_INT(get(&cfg, "/API/x", NULL), -1); /* paths are case-sensitive */
    CHECK_INT(get(&cfg, "/other", NULL), -1);
    CHECK_INT(get(&cfg, "", NULL), -1);
}

static void test_longest_prefix(void)
{
    /* config order short, long, middle; the order array is by length */
    mg_cfg_route_t routes[] = {
        ROUTE(.prefix = "/"),          /* 0 */
        ROUTE(.prefix = "/a/b/c/"),    /* 1 */
        ROUTE(.prefix = "/a/"),        /* 2 */
    };
    int order[] = { 1, 2, 0 };
    mg_cfg_t cfg = make_cfg(routes, 3, order);
    CHECK_INT(get(&cfg, "/a/b/c/d", NULL), 1);
    CHECK_INT(get(&cfg, "/a/b/c/", NULL), 1);
    CHECK_INT(get(&cfg, "/a/b/c", NULL), 2);
    CHECK_INT(get(&cfg, "/a/x", NULL), 2);
    CHECK_INT(get(&cfg, "/b", NULL), 0);
    CHECK_INT(get(&cfg, "/", NULL), 0);
}

static void test_methods(void)
{
    mg_cfg_route_t routes[] = {
        ROUTE(.path = "/m", .methods = BIT(HTTP_GET) | BIT(HTTP_HEAD)), /* 0 */
        ROUTE(.path = "/m", .methods = BIT(HTTP_POST)),                 /* 1 */
        ROUTE(.prefix = "/"),                                           /* 2: any method */
    };
    int order[] = { 0, 1, 2 };
    mg_cfg_t cfg = make_cfg(routes, 3, order);
    fake_req_t fr = { .path = "/m" };
    fr.method = HTTP_GET;
    CHECK_INT(match(&cfg, &fr), 0);
    fr.method = HTTP_HEAD;
    CHECK_INT(match(&cfg, &fr), 0);
    fr.method = HTTP_POST;
    CHECK_INT(match(&cfg, &fr), 1);
    fr.method = HTTP_DELETE;
    CHECK_INT(match(&cfg, &fr), 2);
    fr.method = -1; /* out of range never matches a method list */
    CHECK_INT(match(&cfg, &fr), 2);
    fr.method = 64;
    CHECK_INT(match(&cfg, &fr), 2);
}

static void test_host(void)
{
    CHECK(mg_router_host_match("example.com", MG_STR("example.com")));
    CHECK(mg_router_host_match("example.com", MG_STR("EXAMPLE.Com")));
    CHECK(mg_router_host_match("Example.COM", MG_STR("example.com")));
    CHECK(!mg_router_host_match("example.com", MG_STR("www.example.com")));
    CHECK(!mg_router_host_match("example.com", MG_STR("example.co")));
    CHECK(!mg_router_host_match("example.com", MG_STR("")));
    CHECK(mg_router_host_match("*.example.com", MG_STR("a.example.com")));
    CHECK(mg_router_host_match("*.example.com", MG_STR("A.B.EXAMPLE.COM")));
    CHECK(mg_router_host_match("*.EXAMPLE.com", MG_STR("x.example.COM")));
    CHECK(!mg_router_host_match("*.example.com", MG_STR("example.com")));
    CHECK(!mg_router_host_match("*.example.com", MG_STR(".example.com")));
    CHECK(!mg_router_host_match("*.example.com", MG_STR("badexample.com")));
    CHECK(!mg_router_host_match("*.example.com", MG_STR("a.example.com.evil")));
    CHECK(!mg_router_host_match("*.example.com", MG_STR("")));

    mg_cfg_route_t routes[] = {
        ROUTE(.prefix = "/", .host = "api.example.com"), /* 0 */
        ROUTE(.prefix = "/", .host = "*.example.com"),   /* 1 */
        ROUTE(.host = "example.com"),                    /* 2: no path */
    };
    int order[] = { 0, 1, 2 }; /* prefixes (same length, config order), then no path */
    mg_cfg_t cfg = make_cfg(routes, 3, order);
    CHECK_INT(get(&cfg, "/x", "api.example.com"), 0);
    CHECK_INT(get(&cfg, "/x", "API.EXAMPLE.COM"), 0);
    CHECK_INT(get(&cfg, "/x", "www.example.com"), 1);
    CHECK_INT(get(&cfg, "/x", "example.com"), 2);
    CHECK_INT(get(&cfg, "/x", "example.org"), -1);
    CHECK_INT(get(&cfg, "/x", NULL), -1);
}

static void test_headers(void)
{
    static mg_cfg_header_match_t canary[] = { { "x-canary", "1" } };
    static mg_cfg_header_match_t two[] = { { "x-a", "1" }, { "X-B", "yes" } };
    static mg_cfg_header_match_t empty[] = { { "x-empty", "" } };
    mg_cfg_route_t routes[] = {
        ROUTE(.prefix = "/", .headers = two, .nheaders = 2),    /* 0 */
        ROUTE(.prefix = "/", .headers = canary, .nheaders = 1), /* 1 */
        ROUTE(.prefix = "/", .headers = empty, .nheaders = 1),  /* 2 */
        ROUTE(.prefix = "/"),                                   /* 3 */
    };
    int order[] = { 0, 1, 2, 3 };
    mg_cfg_t cfg = make_cfg(routes, 4, order);
    fake_req_t fr = { .path = "/", .method = HTTP_GET };
    CHECK_INT(match(&cfg, &fr), 3);
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET, .hdrs = { { "X-Canary", "1" } } };
    CHECK_INT(match(&cfg, &fr), 1);
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET, .hdrs = { { "X-Canary", "10" } } };
    CHECK_INT(match(&cfg, &fr), 3); /* values compare exactly */
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET, .hdrs = { { "x-a", "1" } } };
    CHECK_INT(match(&cfg, &fr), 3); /* every listed header must match */
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET,
                       .hdrs = { { "x-b", "yes" }, { "x-a", "1" }, { "x-canary", "1" } } };
    CHECK_INT(match(&cfg, &fr), 0);
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET, .hdrs = { { "x-b", "YES" }, { "x-a", "1" } } };
    CHECK_INT(match(&cfg, &fr), 3);
    fr = (fake_req_t){ .path = "/", .method = HTTP_GET, .hdrs = { { "x-empty", "" } } };
    CHECK_INT(match(&cfg, &fr), 2); /* present and empty */

    /* no header callback at all: header routes never match */
    mg_route_input_t in = { .path = MG_STR("/"), .method = HTTP_GET };
    CHECK_INT(mg_router_match(&cfg, &in), 3);
}

static void test_match_function(void)
{
    mg_cfg_route_t routes[] = {
        ROUTE(.path = "/x"),             /* 0 */
        { .match_ref = 7, .chain_ref = LUA_NOREF }, /* 1: a Lua match function */
    };
    int order[] = { 0, 1 };
    mg_cfg_t cfg = make_cfg(routes, 2, order);
    fake_req_t fr = { .path = "/x", .method = HTTP_GET, .match_answer = 1 };
    CHECK_INT(match(&cfg, &fr), 0);
    CHECK_INT(fr.match_calls, 0); /* an earlier route matched: not asked */
    fr.path = "/y";
    CHECK_INT(match(&cfg, &fr), 1);
    CHECK_INT(fr.match_calls, 1);
    fr.match_answer = 0;
    CHECK_INT(match(&cfg, &fr), -1);
    mg_route_input_t in = { .path = MG_STR("/y"), .method = HTTP_GET }; /* no call_match */
    CHECK_INT(mg_router_match(&cfg, &in), -1);
}

static void test_no_routes(void)
{
    mg_cfg_t cfg = { 0 };
    CHECK_INT(get(&cfg, "/", "example.com"), -1);
}

/* --- the order mg_cfg_load computes ----------------------------------- */

static lua_State *cur_L;

/* Calls the route's real Lua match function with { path = ... }. */
static int lua_match(void *ud, int ref)
{
    fake_req_t *fr = ud;
    lua_rawgeti(cur_L, LUA_REGISTRYINDEX, ref);
    lua_createtable(cur_L, 0, 1);
    lua_pushstring(cur_L, fr->path);
    lua_setfield(cur_L, -2, "path");
    if (lua_pcall(cur_L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "match function failed: %s\n", lua_tostring(cur_L, -1));
        lua_pop(cur_L, 1);
        return 0;
    }
    int ok = lua_toboolean(cur_L, -1);
    lua_pop(cur_L, 1);
    return ok;
}

static int lmatch(const mg_cfg_t *cfg, const char *method, const char *path, const char *host)
{
    fake_req_t fr = { .path = path, .host = host, .method = HTTP_GET };
    if (strcmp(method, "DELETE") == 0)
        fr.method = HTTP_DELETE;
    mg_route_input_t in = {
        .path = { path, strlen(path) },
        .host = { host ? host : "", host ? strlen(host) : 0 },
        .method = fr.method,
        .header = fake_header,
        .call_match = lua_match,
        .ud = &fr,
    };
    return mg_router_match(cfg, &in);
}

static const char *route_name(const mg_cfg_t *cfg, int idx)
{
    return idx < 0 ? "(none)" : cfg->routes[idx].name;
}

static void test_loaded_order(void)
{
    cfgfile_t f;
    mg_cfg_t *cfg = cfgfile_load(
        &f, "return {\n"
            "  listen = { \"127.0.0.1:8080\" },\n"
            "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
            "  routes = {\n"
            "    { name = \"fn\", match = function(req) return req.path == \"/fn\" end,\n"
            "      upstream = \"app\" },\n"
            "    { name = \"short\", match = { prefix = \"/a/\" }, upstream = \"app\" },\n"
            "    { name = \"host\", match = { host = \"*.example.com\" }, upstream = \"app\" },\n"
            "    { name = \"exact1\", match = { path = \"/a/b/c\" }, upstream = \"app\" },\n"
            "    { name = \"long\", match = { prefix = \"/a/b/\" }, upstream = \"app\" },\n"
            "    { name = \"del\", match = { methods = { \"DELETE\" } }, upstream = \"app\" },\n"
            "    { name = \"short2\", match = { prefix = \"/x/\" }, upstream = \"app\" },\n"
            "    { name = \"exact2\", match = { path = \"/\" }, upstream = \"app\" },\n"
            "    { name = \"root\", match = { prefix = \"/\" }, upstream = \"app\" },\n"
            "  },\n"
            "}\n");
    if (!CHECK(cfg != NULL)) {
        fprintf(stderr, "     %s\n", f.err);
        cfgfile_close(&f);
        return;
    }
    cur_L = f.L;
    /* exact paths in config order; prefixes longest first, equal lengths
     * in config order; routes without a path; match functions last */
    static const char *const want[] = { "exact1", "exact2", "long", "short", "short2",
                                        "root", "host", "del", "fn" };
    CHECK_INT(cfg->nroutes, 9);
    char got[256] = "", exp[256] = "";
    for (int k = 0; k < cfg->nroutes && k < 9; k++) {
        strcat(got, route_name(cfg, cfg->order[k]));
        strcat(got, " ");
        strcat(exp, want[k]);
        strcat(exp, " ");
    }
    CHECK_STR(got, exp);

    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/a/b/c", NULL)), "exact1");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/a/b/c/d", NULL)), "long");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/a/b", NULL)), "short");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/x/1", NULL)), "short2");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/", NULL)), "exact2");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/fn", "www.example.com")), "root");
    cfgfile_close(&f);

    /* Without a catch-all prefix the later groups are reached. */
    cfg = cfgfile_load(
        &f, "return {\n"
            "  listen = { \"127.0.0.1:8080\" },\n"
            "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
            "  routes = {\n"
            "    { name = \"fn\", match = function(req) return req.path == \"/fn\" end,\n"
            "      upstream = \"app\" },\n"
            "    { name = \"host\", match = { host = \"*.example.com\" }, upstream = \"app\" },\n"
            "    { name = \"del\", match = { methods = { \"DELETE\" } }, upstream = \"app\" },\n"
            "    { name = \"api\", match = { prefix = \"/api/\" }, upstream = \"app\" },\n"
            "  },\n"
            "}\n");
    if (!CHECK(cfg != NULL)) {
        fprintf(stderr, "     %s\n", f.err);
        cfgfile_close(&f);
        return;
    }
    cur_L = f.L;
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/api/v1", "www.example.com")), "api");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/fn", "www.example.com")), "host");
    CHECK_STR(route_name(cfg, lmatch(cfg, "DELETE", "/fn", "example.org")), "del");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/fn", "example.org")), "fn");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/nope", "example.org")), "(none)");
    CHECK_STR(route_name(cfg, lmatch(cfg, "GET", "/fn", "example.com")), "fn"); /* bare domain */
    cfgfile_close(&f);
}

/* n: the normalized path ("=" for "already normal", NULL for refused) */
static void norm(const char *in, const char *want)
{
    char out[256];
    size_t n = 0;
    int rc = mg_router_normalize(in, strlen(in), out, &n);
    if (want == NULL) {
        CHECK_INT(rc, -1);
    } else if (strcmp(want, "=") == 0) {
        CHECK_INT(rc, 0);
    } else {
        CHECK_INT(rc, 1);
        out[rc == 1 ? n : 0] = '\0';
        CHECK_STR(out, want);
    }
}

static void test_normalize(void)
{
    norm("/", "=");
    norm("/api/v1/users", "=");
    norm("/a.b/c..d/.e", "/a.b/c..d/.e");
    norm("/a.b/c..d", "=");
    norm("*", "=");
    norm("/.well-known/x", "/.well-known/x");
    norm("//admin/x", "/admin/x");
    norm("/a//b///c", "/a/b/c");
    norm("/./admin/x", "/admin/x");
    norm("/public/../admin/x", "/admin/x");
    norm("/a/b/../../admin", "/admin");
    norm("/a/..", "/");
    norm("/a/.", "/a/");
    norm("/a/b/..", "/a/");
    norm("/a/", "=");
    norm("//", "/");
    norm("/.", "/");
    norm("/..", NULL);
    norm("/a/../..", NULL);
    norm("/../x", NULL);
    norm("/%61dmin/x", "/admin/x");
    norm("/%2e%2e/x", NULL);
    norm("/x/%2E%2E/admin", "/admin");
    norm("/admin%2fx", "/admin/x");
    norm("/a%20b", "/a b");
    norm("/a%", NULL);
    norm("/a%4", NULL);
    norm("/a%zz", NULL);
    norm("/a%00b", NULL);
    norm("/%2F%2Fa", "/a");
}

int main(void)
{
    RUN(test_exact_before_prefix);
    RUN(test_longest_prefix);
    RUN(test_methods);
    RUN(test_host);
    RUN(test_headers);
    RUN(test_match_function);
    RUN(test_no_routes);
    RUN(test_loaded_order);
    RUN(test_normalize);
    return mgt_done("router");
}
