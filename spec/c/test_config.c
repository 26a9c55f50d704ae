/* Unit tests for core/config: mg_cfg_load errors ("FILE:LINE: reason"),
 * defaults of a valid config, and mg_cfg_parse_addr. */
#include "config.h"
#include "cfgfile.h"
#include "mg.h"
#include "mgtest.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <sys/wait.h>

/* The line number in "FILE:LINE: reason", or -1 if err does not start with
 * this file's name. */
static int err_line(const cfgfile_t *f)
{
    size_t n = strlen(f->path);
    if (strncmp(f->err, f->path, n) != 0 || f->err[n] != ':')
        return -1;
    char *end;
    long line = strtol(f->err + n + 1, &end, 10);
    return *end == ':' ? (int)line : -1;
}

/* `text` must fail to load, at `line`, with `reason` in the message. */
static void expect_fail(int srcline, const char *text, int line, const char *reason)
{
    cfgfile_t f;
    mg_cfg_t *cfg = cfgfile_load(&f, text);
    mgt_report(cfg == NULL, __FILE__, srcline, "config refused");
    if (!mgt_report(err_line(&f) == line, __FILE__, srcline, "error names FILE:LINE"))
        fprintf(stderr, "     want line %d in: %s\n", line, f.err);
    if (!mgt_report(strstr(f.err, reason) != NULL, __FILE__, srcline, "error gives the reason"))
        fprintf(stderr, "     want \"%s\" in: %s\n", reason, f.err);
    cfgfile_close(&f);
}
#define EXPECT_FAIL(text, line, reason) expect_fail(__LINE__, (text), (line), (reason))

/* --- errors ----------------------------------------------------------- */

static void test_unknown_keys(void)
{
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  listne = 5,\n"
                "}\n",
                3, "listne: unknown option (did you mean 'listen'?)");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                "  routes = {\n"
                "    { match = { path = \"/\" }, upstream = \"app\" },\n"
                "    { match = { path = \"/x\" },\n"
                "      upstrem = \"app\" },\n"
                "  },\n"
                "}\n",
                7, "routes[2].upstrem: unknown option (did you mean 'upstream'?)");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                "  routes = {\n"
                "    { match = { path = \"/\",\n"
                "                methdos = { \"GET\" } }, upstream = \"app\" },\n"
                "  },\n"
                "}\n",
                6, "routes[1].match.methdos: unknown option (did you mean 'methods'?)");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  limits = { max_body = 10 },\n"
                "}\n",
                3, "limits.max_body: unknown option");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  limits = {\n"
                "    underscore_headers = \"ignore\" },\n"
                "}\n",
                4, "limits.underscore_headers: expected \"drop\", \"allow\" or \"reject\"");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  limits = { underscore_headers = true },\n"
                "}\n",
                3, "limits.underscore_headers: expected \"drop\", \"allow\" or \"reject\"");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" },\n"
                "                        keep_alive = 4 } },\n"
                "}\n",
                4, "upstreams.app.keep_alive: unknown option (did you mean 'keepalive'?)");
}

static void test_unknown_upstream(void)
{
    /* the line is the one where the unknown name is written */
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                "  routes = {\n"
                "    { match = { prefix = \"/a/\" },\n"
                "      upstream = \"nowhere\" },\n"
                "  },\n"
                "}\n",
                6, "routes[1].upstream: unknown upstream 'nowhere'");

    /* The line is found by searching the file for the first line holding
     * the name as a substring. Known bug: a name that also appears earlier
     * (as the route's name, or inside another word) is reported there. */
    cfgfile_t f;
    cfgfile_load(&f, "return {\n"
                     "  listen = { \"127.0.0.1:8080\" },\n"
                     "  upstreams = { bill = { servers = { \"127.0.0.1:9000\" } } },\n"
                     "  routes = {\n"
                     "    { name = \"billing\",\n"
                     "      match = { prefix = \"/billing/\" },\n"
                     "      upstream = \"billing\" },\n"
                     "  },\n"
                     "}\n");
    CHECK(f.cfg == NULL);
    CHECK_CONTAINS(f.err, "unknown upstream 'billing'");
    CHECK_KNOWN_FIXED(err_line(&f) == 7, "config.c locate_line(): unknown upstream reported on the "
                                 "first line containing its name (the route's name line)");
    cfgfile_close(&f);

    cfgfile_load(&f, "return {\n"
                     "  listen = { \"127.0.0.1:8080\" },\n"
                     "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                     "  routes = {\n"
                     "    { match = { prefix = \"/a/\" }, upstream = \"ap\" },\n"
                     "  },\n"
                     "}\n");
    CHECK(f.cfg == NULL);
    CHECK_CONTAINS(f.err, "unknown upstream 'ap'");
    CHECK_KNOWN_FIXED(err_line(&f) == 5, "config.c locate_line(): unknown upstream \"ap\" reported on "
                                 "the line of upstream \"app\" (substring match)");
    cfgfile_close(&f);
}

static void test_wrong_types(void)
{
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  workers = \"two\",\n"
                "}\n",
                3, "workers: expected a number from 1 to 256 or \"auto\"");
    EXPECT_FAIL("return {\n"
                "  listen = \"127.0.0.1:8080\",\n"
                "}\n",
                2, "listen: expected a table, got string");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  limits = {\n"
                "    max_body_bytes = \"1m\",\n"
                "  },\n"
                "}\n",
                4, "limits.max_body_bytes: expected a number, got string");
    /* Below the minimum: refused on the right line, but known bug: the
     * message is built with "%g", which lua_pushfstring does not know, so
     * the reason is replaced by Lua's "invalid option '%g'" complaint. */
    cfgfile_t f;
    cfgfile_load(&f, "return {\n"
                     "  listen = { \"127.0.0.1:8080\" },\n"
                     "  limits = { idle_timeout = 0 },\n"
                     "}\n");
    CHECK(f.cfg == NULL);
    CHECK_INT(err_line(&f), 3);
    CHECK_KNOWN_FIXED(strstr(f.err, "limits.idle_timeout: must be at least") != NULL,
              "config.c opt_number(): \"%g\" in cfg_fail() is not a lua_pushfstring format; "
              "the error reads \"invalid option '%g' to 'lua_pushfstring'\"");
    cfgfile_close(&f);
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = \"127.0.0.1:9000\" } },\n"
                "}\n",
                3, "upstreams.app.servers: expected a list");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" },\n"
                "                        balance = \"random\" } },\n"
                "}\n",
                4, "upstreams.app.balance: expected round_robin, least_conn or hash");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                "  routes = {\n"
                "    { match = { path = 5 }, upstream = \"app\" },\n"
                "  },\n"
                "}\n",
                5, "routes[1].match.path: expected a string, got number");

    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  routes = {\n"
                "    { match = { path = \"/\" }, handler = \"not a function\" },\n"
                "  },\n"
                "}\n",
                4, "routes[1].handler: expected a function");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  routes = {\n"
                "    { match = { path = \"/\" }, handler = function() end,\n"
                "      plugins = \"jwt\" },\n"
                "  },\n"
                "}\n",
                5, "routes[1].plugins: expected a list of plugins");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                "  routes = {\n"
                "    { match = { path = \"/\" }, upstream = \"app\",\n"
                "      handler = function() end },\n"
                "  },\n"
                "}\n",
                6, "routes[1].handler: a route has an upstream or a handler, not both");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  routes = {\n"
                "    { name = \"lonely\", match = { path = \"/\" } },\n"
                "  },\n"
                "}\n",
                4, "routes[1]: a route needs an upstream or a handler");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  routes = {\n"
                "    { match = { path = \"api\" }, handler = function() end },\n"
                "  },\n"
                "}\n",
                4, "routes[1].match.path: must start with /");
    EXPECT_FAIL("return {\n"
                "  listen = { \"nonsense\" },\n"
                "}\n",
                2, "listen[1]: invalid address 'nonsense'");
    EXPECT_FAIL("return 42\n", 1, "the config file must return a table, got number");
}

/* Loads `text` in a child process, so a crash in the loader is seen as
 * such. Returns 1 if the child died of a signal; else err holds the
 * loader's message ("" when the config loaded). */
static int load_in_child(const char *text, char *err, size_t errlen)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        cfgfile_t f;
        cfgfile_load(&f, text);
        ssize_t w = write(fds[1], f.err, strlen(f.err));
        cfgfile_close(&f);
        _exit(w < 0);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], err, errlen - 1);
    err[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) ? 1 : 0;
}

static void test_unknown_method(void)
{
    /* A method name llhttp does not know must be a config error. Known
     * bug: method_bit() calls llhttp_method_name() for every number below
     * 64, and llhttp 8.1 abort()s on numbers it has no method for, so the
     * whole process dies (at startup, or a worker on reload). */
    char err[512];
    int crashed = load_in_child("return {\n"
                                "  listen = { \"127.0.0.1:8080\" },\n"
                                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                                "  routes = {\n"
                                "    { match = { path = \"/\", methods = { \"GET\", \"FETCH\" } },\n"
                                "      upstream = \"app\" },\n"
                                "  },\n"
                                "}\n",
                                err, sizeof err);
    CHECK_KNOWN_FIXED(!crashed && strstr(err, ":5: routes[1].match.methods[2]: unknown method 'FETCH'"),
              "config.c method_bit(): an unknown method name abort()s inside "
              "llhttp_method_name(46)");
    /* known names in any case are fine, and do not reach the abort */
    crashed = load_in_child("return {\n"
                            "  listen = { \"127.0.0.1:8080\" },\n"
                            "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n"
                            "  routes = {\n"
                            "    { match = { path = \"/\", methods = { \"get\", \"Delete\", \"PATCH\" } },\n"
                            "      upstream = \"app\" },\n"
                            "  },\n"
                            "}\n",
                            err, sizeof err);
    CHECK(!crashed);
    CHECK_STR(err, "");
}

static void test_lua_errors(void)
{
    /* syntax error: the line comes from Lua */
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" },\n"
                "  workers = = 2,\n"
                "}\n",
                3, "unexpected symbol near '='");
    EXPECT_FAIL("return {\n"
                "  listen = { \"127.0.0.1:8080\" }\n"
                "  workers = 2,\n"
                "}\n",
                3, "'}' expected (to close '{' at line 1) near 'workers'");
    /* runtime error while running the file */
    EXPECT_FAIL("local x = 1\n"
                "error(\"boom\")\n"
                "return {}\n",
                2, "boom");
    /* a file that is not there */
    char err[512];
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    CHECK(mg_cfg_load(L, "/nonexistent/moongate.lua", err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "/nonexistent/moongate.lua:0: cannot open");
    CHECK_INT(lua_gettop(L), 0); /* stack left as it was */
    lua_close(L);
}

static void test_missing_listen(void)
{
    EXPECT_FAIL("return {\n"
                "  workers = 1,\n"
                "}\n",
                1, "listen: at least one listener is required");
    EXPECT_FAIL("return {\n"
                "  workers = 1,\n"
                "  listen = {},\n"
                "}\n",
                3, "listen: at least one listener is required");
}

/* --- a valid config --------------------------------------------------- */

static void test_defaults(void)
{
    cfgfile_t f;
    mg_cfg_t *cfg = cfgfile_load(&f, "return {\n"
                                     "  listen = { \"127.0.0.1:8080\" },\n"
                                     "  upstreams = { app = { servers = { \"127.0.0.1:9000\",\n"
                                     "                                   \"127.0.0.1:9001\" } } },\n"
                                     "  routes = { { match = { prefix = \"/\" }, upstream = \"app\" } },\n"
                                     "}\n");
    if (!CHECK(cfg != NULL)) {
        fprintf(stderr, "     %s\n", f.err);
        cfgfile_close(&f);
        return;
    }
    CHECK_STR(cfg->file, f.path);
    CHECK_INT(cfg->workers, 1);
    CHECK_INT(cfg->nlisten, 1);
    CHECK_STR(cfg->listen[0].addr.text, "127.0.0.1:8080");
    CHECK(cfg->listen[0].tls_cert == NULL);
    CHECK_INT(cfg->has_admin, 0);
    CHECK_STR(cfg->access_log, "stdout");
    CHECK_INT(cfg->lua_memory_limit, 128 << 20);
    CHECK_INT(cfg->lua_max_instructions, 50000000);
    CHECK_INT(cfg->limits.max_uri_bytes, 8192);
    CHECK_INT(cfg->limits.max_header_bytes, 16384);
    CHECK_INT(cfg->limits.max_body_bytes, 1048576);
    CHECK(cfg->limits.header_timeout == 10);
    CHECK(cfg->limits.idle_timeout == 60);
    CHECK(cfg->limits.drain_timeout == 30);
    CHECK_INT(cfg->limits.underscore_headers, MG_CFG_US_DROP);
    CHECK_INT(cfg->nupstreams, 1);
    const mg_cfg_upstream_t *u = &cfg->upstreams[0];
    CHECK_STR(u->name, "app");
    CHECK_INT(u->nservers, 2);
    CHECK_STR(u->servers[1].text, "127.0.0.1:9001");
    CHECK_INT(u->balance, MG_BAL_ROUND_ROBIN);
    CHECK_INT(u->keepalive, 64);
    CHECK_INT(u->retries, 1);
    CHECK_STR(u->hash_key, "remote_addr");
    CHECK(u->connect_timeout == 5);
    CHECK(u->read_timeout == 60);
    CHECK(u->idle_timeout == 60);
    CHECK_INT(cfg->nroutes, 1);
    CHECK_INT(cfg->routes[0].upstream, 0);
    CHECK_INT(cfg->routes[0].chain_ref, LUA_NOREF);
    CHECK_INT(cfg->routes[0].has_handler, 0);
    CHECK_INT(cfg->routes[0].has_plugins, 0);
    CHECK_INT(cfg->routes[0].match_ref, LUA_NOREF);
    CHECK_INT(cfg->routes[0].methods, 0);
    CHECK_INT(cfg->routes[0].prefix_len, 1);
    CHECK_INT(lua_gettop(f.L), 0);
    cfgfile_close(&f);
}

static void test_full_config(void)
{
    cfgfile_t f;
    mg_cfg_t *cfg = cfgfile_load(
        &f, "return {\n"
            "  workers = \"auto\",\n"
            "  listen = { { addr = \"127.0.0.1:8080\" }, \":8081\" },\n"
            "  admin = { addr = \"127.0.0.1:9901\" },\n"
            "  access_log = false,\n"
            "  lua = { memory_limit = 2097152 },\n"
            "  limits = { max_uri_bytes = 100, max_header_bytes = 1000, max_body_bytes = 0,\n"
            "             header_timeout = 1.5, idle_timeout = 2, drain_timeout = 0,\n"
            "             underscore_headers = \"reject\" },\n"
            "  upstreams = {\n"
            "    lc = { servers = { \"127.0.0.1:9000\" }, balance = \"least_conn\",\n"
            "           keepalive = 0, retries = 3, connect_timeout = 0.25 },\n"
            "    h = { servers = { \"[::1]:9000\" }, balance = \"hash\", hash_key = \"uri\" },\n"
            "  },\n"
            "  routes = {\n"
            "    { name = \"r\", match = { path = \"/x\", methods = { \"get\", \"POST\" },\n"
            "                          host = \"*.example.com\", headers = { [\"x-a\"] = \"1\" } },\n"
            "      upstream = \"h\" },\n"
            "    { handler = function(req) return 200, \"hi\" end },\n"
            "  },\n"
            "}\n");
    if (!CHECK(cfg != NULL)) {
        fprintf(stderr, "     %s\n", f.err);
        cfgfile_close(&f);
        return;
    }
    CHECK_INT(cfg->workers, 0);
    CHECK_INT(cfg->nlisten, 2);
    CHECK_STR(cfg->listen[1].addr.text, ":8081");
    CHECK_INT(cfg->has_admin, 1);
    CHECK(cfg->access_log == NULL);
    CHECK_INT(cfg->limits.max_uri_bytes, 100);
    CHECK_INT(cfg->limits.max_header_bytes, 1000);
    CHECK_INT(cfg->limits.max_body_bytes, 0);
    CHECK(cfg->limits.header_timeout == 1.5);
    CHECK(cfg->limits.drain_timeout == 0);
    CHECK_INT(cfg->limits.underscore_headers, MG_CFG_US_REJECT);
    int lc = mg_cfg_upstream_index(cfg, "lc"), h = mg_cfg_upstream_index(cfg, "h");
    CHECK(lc >= 0 && h >= 0 && lc != h);
    CHECK_INT(mg_cfg_upstream_index(cfg, "nope"), -1);
    CHECK_INT(cfg->upstreams[lc].balance, MG_BAL_LEAST_CONN);
    CHECK_INT(cfg->upstreams[lc].keepalive, 0);
    CHECK_INT(cfg->upstreams[lc].retries, 3);
    CHECK(cfg->upstreams[lc].connect_timeout == 0.25);
    CHECK_INT(cfg->upstreams[h].balance, MG_BAL_HASH);
    CHECK_STR(cfg->upstreams[h].hash_key, "uri");
    CHECK_INT(cfg->upstreams[h].servers[0].sa.ss_family, AF_INET6);
    const mg_cfg_route_t *r = &cfg->routes[0];
    CHECK_STR(r->name, "r");
    CHECK_STR(r->path, "/x");
    CHECK_STR(r->host, "*.example.com");
    CHECK_INT(r->methods, ((uint64_t)1 << HTTP_GET) | ((uint64_t)1 << HTTP_POST));
    CHECK_INT(r->nheaders, 1);
    CHECK_STR(r->headers[0].name, "x-a");
    CHECK_STR(r->headers[0].value, "1");
    CHECK_INT(r->upstream, h);
    CHECK_INT(cfg->routes[1].has_handler, 1);
    CHECK_INT(cfg->routes[1].upstream, -1);
    /* chains are built by the Lua runtime, which a bare state lacks */
    CHECK_INT(cfg->routes[1].chain_ref, LUA_NOREF);
    CHECK_INT(cfg->lua_memory_limit, 2 << 20);
    cfgfile_close(&f);
}

/* --- mg_cfg_parse_addr ------------------------------------------------ */

static int port_of(const mg_addr_t *a)
{
    if (a->sa.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
    if (a->sa.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
    return -1;
}

static void expect_addr(int srcline, const char *text, int family, const char *ip, int port)
{
    mg_addr_t a;
    char err[256] = "", buf[INET6_ADDRSTRLEN] = "";
    int rc = mg_cfg_parse_addr(text, &a, err, sizeof err);
    if (!mgt_report(rc == 0, __FILE__, srcline, "address parses")) {
        fprintf(stderr, "     %s: %s\n", text, err);
        return;
    }
    mgt_report(a.sa.ss_family == family, __FILE__, srcline, "address family");
    if (family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&a.sa)->sin_addr, buf, sizeof buf);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a.sa)->sin6_addr, buf, sizeof buf);
    if (!mgt_report(strcmp(buf, ip) == 0 && port_of(&a) == port, __FILE__, srcline,
                    "address and port"))
        fprintf(stderr, "     %s gave %s port %d\n", text, buf, port_of(&a));
    mgt_report(strcmp(a.text, text) == 0, __FILE__, srcline, "text kept as written");
    mgt_report(a.len == (family == AF_INET ? sizeof(struct sockaddr_in)
                                           : sizeof(struct sockaddr_in6)),
               __FILE__, srcline, "sockaddr length");
}
#define EXPECT_ADDR(text, fam, ip, port) expect_addr(__LINE__, (text), (fam), (ip), (port))

static void expect_bad_addr(int srcline, const char *text)
{
    mg_addr_t a;
    char err[256] = "";
    int rc = mg_cfg_parse_addr(text, &a, err, sizeof err);
    if (!mgt_report(rc == -1, __FILE__, srcline, "address refused"))
        fprintf(stderr, "     \"%s\" was accepted (port %d)\n", text, port_of(&a));
    else
        mgt_report(strstr(err, text) != NULL, __FILE__, srcline, "error quotes the address");
}
#define EXPECT_BAD_ADDR(text) expect_bad_addr(__LINE__, (text))

static void test_parse_addr(void)
{
    EXPECT_ADDR("127.0.0.1:80", AF_INET, "127.0.0.1", 80);
    EXPECT_ADDR("[::1]:8080", AF_INET6, "::1", 8080);
    EXPECT_ADDR(":9000", AF_INET, "0.0.0.0", 9000);
    EXPECT_ADDR("9000", AF_INET, "0.0.0.0", 9000);
    EXPECT_ADDR("*:81", AF_INET, "0.0.0.0", 81);
    EXPECT_ADDR("10.1.2.3:65535", AF_INET, "10.1.2.3", 65535);
    EXPECT_ADDR("[2001:db8::5]:1", AF_INET6, "2001:db8::5", 1);
    EXPECT_BAD_ADDR("");
    EXPECT_BAD_ADDR("127.0.0.1");
    EXPECT_BAD_ADDR("127.0.0.1:");
    EXPECT_BAD_ADDR("127.0.0.1:0");
    EXPECT_BAD_ADDR("127.0.0.1:65536");
    EXPECT_BAD_ADDR("127.0.0.1:80x");
    EXPECT_BAD_ADDR("127.0.0.1:-1");
    EXPECT_BAD_ADDR("127.0.0.1: 80");
    EXPECT_BAD_ADDR("[::1]");
    EXPECT_BAD_ADDR("[::1]8080");
    EXPECT_BAD_ADDR("[::1]:");
    EXPECT_BAD_ADDR("[::1:8080");
    EXPECT_BAD_ADDR("::1");
    EXPECT_BAD_ADDR("999.1.1.1:80");

    /* Known bug: the port is copied into a 16-byte buffer with snprintf, so
     * a long port is silently truncated: "0000000000000080" becomes 8. */
    mg_addr_t a;
    char err[256] = "";
    int rc = mg_cfg_parse_addr("127.0.0.1:0000000000000080", &a, err, sizeof err);
    CHECK_KNOWN_FIXED(rc != 0 || port_of(&a) == 80,
              "config.c mg_cfg_parse_addr(): port longer than 15 characters truncated "
              "(127.0.0.1:0000000000000080 -> port 8)");
}

/* Every error, each at the line of its key, in line order; route names
 * unique; the line of a route whose upstream came out nil. */
static void test_every_error(void)
{
    cfgfile_t f;
    mg_cfg_t *cfg = cfgfile_load(&f, "return {\n"
                                     "  listen = { \"127.0.0.1:8080\" },\n"
                                     "  upstreams = {\n"
                                     "    app = { servers = { \"127.0.0.1\" },\n"
                                     "            keeplive = 4 },\n"
                                     "  },\n"
                                     "  limits = { idle_timeout = \"x\" },\n"
                                     "  routes = {\n"
                                     "    { name = \"api\", match = { prefix = \"/a/\" }, upstream = \"app\" },\n"
                                     "    { name = \"api\", match = { prefix = \"/b/\" },\n"
                                     "      upstream = os.getenv(\"MOONGATE_TEST_NOPE\") },\n"
                                     "  },\n"
                                     "}\n");
    mgt_report(cfg == NULL, __FILE__, __LINE__, "config refused");
    static const char *const want[] = {
        ":4: upstreams.app.servers[1]: invalid address '127.0.0.1'",
        ":5: upstreams.app.keeplive: unknown option (did you mean 'keepalive'?)",
        ":7: limits.idle_timeout: expected a number, got string",
        ":10: routes[2]: a route needs an upstream or a handler",
        ":10: routes[2].name: 'api' is already the name of routes[1]",
    };
    const char *at = f.err;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *hit = strstr(at, want[i]);
        if (!mgt_report(hit != NULL, __FILE__, __LINE__, "every error, in line order"))
            fprintf(stderr, "     want \"%s\" after %zu bytes in:\n%s\n", want[i],
                    (size_t)(at - f.err), f.err);
        else
            at = hit + strlen(want[i]);
    }
    cfgfile_close(&f);
    mg_cfg_free(cfg);
}

int main(void)
{
    RUN(test_every_error);
    RUN(test_unknown_keys);
    RUN(test_unknown_upstream);
    RUN(test_wrong_types);
    RUN(test_unknown_method);
    RUN(test_lua_errors);
    RUN(test_missing_listen);
    RUN(test_defaults);
    RUN(test_full_config);
    RUN(test_parse_addr);
    return mgt_done("config");
}
