/* core/accesslog.c: the text and JSON access-log lines, escaping. */
#include "../../core/accesslog.c"
#include "mgtest.h"

static mg_alog_entry_t base(void)
{
    mg_alog_entry_t e = {
        .time = 1764000000.5,           /* 2025-11-24T16:00:00.500Z */
        .remote = "203.0.113.9",
        .method = "GET",
        .path = MG_STR("/a?b=1"),
        .status = 200,
        .bytes_sent = 1234,
        .upstream = "127.0.0.1:9000",
        .duration = 0.0123456,
        .route = "api",
        .request_id = MG_STR("id-1"),
        .user_agent = MG_STR("curl/8"),
        .http_major = 1,
        .http_minor = 1,
    };
    return e;
}

static const char *fmt(int format, const mg_alog_entry_t *e)
{
    static char buf[LINE_MAX_BYTES];
    size_t n = mg_alog_format(buf, sizeof buf - 1, format, e);
    buf[n] = 0;
    return buf;
}

int main(void)
{
    mgt_case = "text";
    mg_alog_entry_t e = base();
    CHECK_STR(fmt(MG_ALOG_TEXT, &e), "2025-11-24T16:00:00.500Z 203.0.113.9 GET /a?b=1 200 1234 "
                                     "127.0.0.1:9000 0.012 api id-1 \"curl/8\"");
    e.method = "-";
    e.path = (mg_str_t){ NULL, 0 };
    e.upstream = NULL;
    e.route = NULL;
    e.request_id = (mg_str_t){ NULL, 0 };
    e.user_agent = (mg_str_t){ NULL, 0 };
    e.status = 400;
    CHECK_STR(fmt(MG_ALOG_TEXT, &e), "2025-11-24T16:00:00.500Z 203.0.113.9 - - 400 1234 - 0.012 - - -");
    e = base();
    e.user_agent = MG_STR("a \"b\" \\ \x01\xc3\xa9");
    e.path = MG_STR("/x y");
    CHECK_STR(fmt(MG_ALOG_TEXT, &e), "2025-11-24T16:00:00.500Z 203.0.113.9 GET /x\\x20y 200 1234 "
                                     "127.0.0.1:9000 0.012 api id-1 "
                                     "\"a \\x22b\\x22 \\x5c \\x01\\xc3\\xa9\"");

    mgt_case = "json";
    e = base();
    CHECK_STR(fmt(MG_ALOG_JSON, &e),
              "{\"time\":\"2025-11-24T16:00:00.500Z\",\"remote_addr\":\"203.0.113.9\","
              "\"method\":\"GET\",\"path\":\"/a?b=1\",\"status\":200,\"bytes_sent\":1234,"
              "\"upstream\":\"127.0.0.1:9000\",\"duration\":0.012346,\"route\":\"api\","
              "\"request_id\":\"id-1\",\"user_agent\":\"curl/8\",\"http_version\":\"1.1\"}");
    e.user_agent = MG_STR("q\"\\\n\x7f\xff");
    e.route = NULL;
    e.http_major = e.http_minor = 0;
    e.method = "-";
    const char *j = fmt(MG_ALOG_JSON, &e);
    CHECK_CONTAINS(j, "\"user_agent\":\"q\\\"\\\\\\u000a\\u007f\\u00ff\"");
    CHECK_CONTAINS(j, "\"route\":null");
    CHECK_CONTAINS(j, "\"method\":\"-\"");
    CHECK_CONTAINS(j, "\"http_version\":null}");

    mgt_case = "long";
    static char big[10000];
    memset(big, '\x01', sizeof big);
    e = base();
    e.path = (mg_str_t){ big, sizeof big };
    e.user_agent = (mg_str_t){ big, sizeof big };
    e.request_id = (mg_str_t){ big, sizeof big };
    j = fmt(MG_ALOG_JSON, &e);
    CHECK(strlen(j) < LINE_MAX_BYTES - 1);
    CHECK(j[strlen(j) - 1] == '}'); /* every field cut, the object still closed */
    return mgt_done("accesslog");
}
