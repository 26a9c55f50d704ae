/* Unit tests for core/grpc_status: the HTTP -> gRPC status mapping, the
 * percent-encoding of grpc-message, and where its text comes from (a JSON
 * "error" string, else the body, else the fallback). */
#include "grpc_status.h"
#include "mgtest.h"

#include <stdlib.h>
#include <string.h>

#define CHECK_BUF(b, want) CHECK_MEM(mg_buf_data(b), (b)->len, (want))

static void message_is(const char *body, const char *want)
{
    mg_buf_t b = { 0 };
    mg_grpc_message(&b, body, strlen(body), "Fallback Reason");
    CHECK(!b.failed);
    CHECK_BUF(&b, want);
    mg_buf_free(&b);
}

static void test_codes(void)
{
    CHECK_INT(mg_grpc_code(401), 16);
    CHECK_INT(mg_grpc_code(403), 7);
    CHECK_INT(mg_grpc_code(429), 8);
    CHECK_INT(mg_grpc_code(404), 12);
    CHECK_INT(mg_grpc_code(502), 14);
    CHECK_INT(mg_grpc_code(503), 14);
    CHECK_INT(mg_grpc_code(504), 4);
    CHECK_INT(mg_grpc_code(500), 13);
    CHECK_INT(mg_grpc_code(400), 13);
    CHECK_INT(mg_grpc_code(413), 13);
    CHECK_INT(mg_grpc_code(599), 13);
}

static void test_is_call(void)
{
    CHECK(mg_grpc_is_call(MG_STR("application/grpc")));
    CHECK(mg_grpc_is_call(MG_STR("application/grpc+proto")));
    CHECK(mg_grpc_is_call(MG_STR("Application/GRPC+json")));
    CHECK(mg_grpc_is_call(MG_STR("application/grpc-web-text")));
    CHECK(!mg_grpc_is_call(MG_STR("application/json")));
    CHECK(!mg_grpc_is_call(MG_STR("application/grp")));
    CHECK(!mg_grpc_is_call(MG_STR("text/application/grpc")));
    CHECK(!mg_grpc_is_call((mg_str_t){ NULL, 0 }));
}

static void test_pct_encode(void)
{
    mg_buf_t b = { 0 };
    mg_grpc_pct_encode(&b, "a b%c\r\n\x7f~\xc3\xa9", 11);
    CHECK_BUF(&b, "a b%25c%0D%0A%7F~%C3%A9");
    mg_buf_free(&b);
    mg_grpc_pct_encode(&b, "", 0);
    CHECK_INT(b.len, 0);
    mg_buf_free(&b);
}

static void test_message_sources(void)
{
    message_is("{\"error\":\"no route\"}", "no route");
    message_is("  {\"code\": 7, \"nested\": {\"error\": \"inner\", \"l\": [1, \"]\", {}]},"
               " \"ok\": true, \"error\": \"outer\"}", "outer");
    message_is("{\"error\":\"q\\\"s\\\\ \\/ \\n\\u00e9\\ud83d\\ude00\\ud800x\"}",
               "q\"s\\ / %0A%C3%A9%F0%9F%98%80%EF%BF%BDx");
    /* not a JSON object with an "error" string: the text itself */
    message_is("{\"error\": 5}", "{\"error\": 5}");
    message_is("{\"message\": \"m\"}", "{\"message\": \"m\"}");
    message_is("{\"error\": \"unterminated", "{\"error\": \"unterminated");
    message_is("plain text\r\n", "plain text");
    message_is("", "Fallback Reason");
    message_is(" \n", "Fallback Reason");
}

static void test_message_bounded_at_a_character(void)
{
    /* 511 ASCII bytes then a 2-byte character: cut before it */
    char body[600];
    memset(body, 'a', 511);
    memcpy(body + 511, "\xc3\xa9zz", 5);
    mg_buf_t b = { 0 };
    mg_grpc_message(&b, body, strlen(body), "x");
    CHECK_INT(b.len, 511);
    mg_buf_free(&b);
    /* the same through JSON */
    char js[700];
    int n = snprintf(js, sizeof js, "{\"error\":\"%.*s\\u00e9zz\"}", 511, body);
    mg_grpc_message(&b, js, (size_t)n, "x");
    CHECK_INT(b.len, 511);
    mg_buf_free(&b);
}

int main(void)
{
    RUN(test_codes);
    RUN(test_is_call);
    RUN(test_pct_encode);
    RUN(test_message_sources);
    RUN(test_message_bounded_at_a_character);
    return mgt_done("grpc_status");
}
