/* Unit tests for core/cfg_src: config paths -> source lines from a light
 * scan of the Lua text, and "did you mean". Includes robustness against
 * arbitrary bytes (the scan runs on any file that Lua accepted, and must
 * never read out of bounds whatever it is given). */
#include "cfg_src.h"
#include "mgtest.h"

#include <stdlib.h>
#include <unistd.h>

static char path[64];

static mg_cfg_src_t *scan_text(const char *text, size_t n)
{
    snprintf(path, sizeof path, "/tmp/mgtest-src-XXXXXX.lua");
    int fd = mkstemps(path, 4);
    if (fd < 0)
        return NULL;
    if (write(fd, text, n) != (ssize_t)n) {
        close(fd);
        return NULL;
    }
    close(fd);
    mg_cfg_src_t *s = mg_cfg_src_scan(path);
    unlink(path);
    return s;
}

static void test_literal_config(void)
{
    const char *t = "-- a comment { with braces\n"                                  /* 1 */
                    "--[==[ long { comment ]] still\n"                              /* 2 */
                    "]==]\n"                                                        /* 3 */
                    "local s = [[ { \"x\" ]] .. \"\\\"{\" .. '\\\\'\n"              /* 4 */
                    "return {\n"                                                    /* 5 */
                    "  listen = { \"127.0.0.1:1\" },\n"                             /* 6 */
                    "  [\"limits\"] = {\n"                                          /* 7 */
                    "    idle_timeout = 5 },\n"                                     /* 8 */
                    "  upstreams = { app = { servers = {\n"                         /* 9 */
                    "      \"a:1\",\n"                                              /* 10 */
                    "      \"b:2\" } } },\n"                                        /* 11 */
                    "  routes = {\n"                                                /* 12 */
                    "    { handler = function(r) local t = { 1, 2 }\n"              /* 13 */
                    "        if r then return 1, 2 elseif x then else end\n"        /* 14 */
                    "        for i = 1, 2 do end return 200, \"x\" end },\n"       /* 15 */
                    "    { name = \"b\";\n"                                         /* 16 */
                    "      plugins = { { \"jwt\", secret = f(1, 2) } } },\n"        /* 17 */
                    "  },\n"                                                        /* 18 */
                    "}\n";
    mg_cfg_src_t *s = scan_text(t, strlen(t));
    CHECK(s != NULL);
    CHECK_INT(mg_cfg_src_line(s, "listen"), 6);
    CHECK_INT(mg_cfg_src_line(s, "listen[1]"), 6);
    CHECK_INT(mg_cfg_src_line(s, "limits"), 7);
    CHECK_INT(mg_cfg_src_line(s, "limits.idle_timeout"), 8);
    CHECK_INT(mg_cfg_src_line(s, "upstreams.app.servers[1]"), 10);
    CHECK_INT(mg_cfg_src_line(s, "upstreams.app.servers[2]"), 11);
    CHECK_INT(mg_cfg_src_line(s, "routes[1]"), 13);
    CHECK_INT(mg_cfg_src_line(s, "routes[1].handler"), 13);
    CHECK_INT(mg_cfg_src_line(s, "routes[2]"), 16);
    CHECK_INT(mg_cfg_src_line(s, "routes[2].plugins[1]"), 17);
    CHECK_INT(mg_cfg_src_line(s, "routes[2].plugins[1].secret"), 17);
    CHECK_INT(mg_cfg_src_line(s, "routes[3]"), 0); /* commas inside the function were not items */
    CHECK_INT(mg_cfg_src_line(s, "routes[2].name.x"), 0);
    CHECK_INT(mg_cfg_src_line_near(s, "routes[2].upstream"), 16);
    CHECK_INT(mg_cfg_src_line_near(s, "nothing.at.all"), 0);
    mg_cfg_src_free(s);
}

static void test_returned_local(void)
{
    const char *t = "local cfg = {\n"
                    "  listen = { \"127.0.0.1:1\" },\n"
                    "  limits = {\n"
                    "    idle_timeout = \"x\" },\n"
                    "}\n"
                    "local other = { limits = 1 }\n"
                    "return cfg\n";
    mg_cfg_src_t *s = scan_text(t, strlen(t));
    CHECK_INT(mg_cfg_src_line(s, "limits.idle_timeout"), 4);
    CHECK_INT(mg_cfg_src_line(s, "limits"), 3);
    mg_cfg_src_free(s);
}

/* Random bytes, and random cuts of a real config: no crash, no overread
 * (run under ASan in CI), and whatever is found has a plausible line. */
static void test_arbitrary_bytes(void)
{
    static const char base[] = "return { a = { b = { \"x\", [[y]], [=[z]=] }, --[[c]] d = 1 },"
                               " e = function() return { 1 } end, ['f'] = { g = 2 } }\n";
    srand(12345);
    char buf[512];
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(rand() % (int)sizeof buf);
        if (round % 2) {
            for (size_t i = 0; i < n; i++)
                buf[i] = "{}[]()=,;\"'\\-\n ab=[[]]--"[rand() % 24];
        } else {
            n = (size_t)rand() % sizeof base;
            memcpy(buf, base, n);
        }
        mg_cfg_src_t *s = scan_text(buf, n);
        int line = mg_cfg_src_line_near(s, "a.b[1]");
        CHECK(line >= 0 && line <= (int)n + 1);
        mg_cfg_src_free(s);
    }
    const char deep_open[] = "return {";
    char *deep = malloc(20000);
    size_t dn = 0;
    memcpy(deep, deep_open, 8);
    dn = 8;
    for (int i = 0; i < 5000; i++)
        deep[dn++] = '{';
    mg_cfg_src_t *s = scan_text(deep, dn);
    CHECK(s != NULL);
    mg_cfg_src_free(s);
    free(deep);
}

static void test_suggest(void)
{
    static const char *const opts[] = { "keepalive", "servers", "retries", "listen", NULL };
    CHECK(mg_cfg_suggest("keeplive", opts) && strcmp(mg_cfg_suggest("keeplive", opts), "keepalive") == 0);
    CHECK(mg_cfg_suggest("listne", opts) && strcmp(mg_cfg_suggest("listne", opts), "listen") == 0);
    CHECK(mg_cfg_suggest("SERVERS", opts) && strcmp(mg_cfg_suggest("SERVERS", opts), "servers") == 0);
    CHECK(mg_cfg_suggest("colour", opts) == NULL);
    CHECK(mg_cfg_suggest("x", opts) == NULL);
    static const char *const plugins[] = { "jwt", "cors", "headers", NULL };
    CHECK(mg_cfg_suggest("jwtt", plugins) && strcmp(mg_cfg_suggest("jwtt", plugins), "jwt") == 0);
}

int main(void)
{
    RUN(test_literal_config);
    RUN(test_returned_local);
    RUN(test_arbitrary_bytes);
    RUN(test_suggest);
    return mgt_done("cfg_src");
}
