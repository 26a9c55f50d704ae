/* core/proxyproto.c (PROXY protocol parser) and core/realip.c
 * (trusted_proxies CIDRs, X-Forwarded-For walk). */
#include "../../core/proxyproto.c"
#include "../../core/realip.c"
#include "mgtest.h"

static int pp(const char *s, size_t n, mg_pp_result_t *r)
{
    return mg_pp_parse((const uint8_t *)s, n, r);
}
#define PP(lit, r) pp(lit, sizeof(lit) - 1, r)

static const char *src_text(const mg_pp_result_t *r, char *buf)
{
    return inet_ntop(r->family, r->src, buf, 64);
}

static void test_v1(void)
{
    mgt_case = "v1";
    mg_pp_result_t r;
    char b[64];
    const char line[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    CHECK_INT(PP("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /", &r),
              sizeof line - 1);
    CHECK_INT(r.version, 1);
    CHECK_INT(r.local, 0);
    CHECK_INT(r.family, AF_INET);
    CHECK_STR(src_text(&r, b), "192.0.2.1");
    CHECK_INT(r.src_port, 56324);
    CHECK_INT(r.dst_port, 443);
    /* every prefix needs more */
    for (size_t k = 0; k < sizeof line - 1; k++)
        CHECK_INT(pp(line, k, &r), 0);
    CHECK_INT(PP("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", &r), 36);
    CHECK_INT(r.family, AF_INET6);
    CHECK_STR(src_text(&r, b), "2001:db8::1");
    CHECK_INT(PP("PROXY UNKNOWN\r\n", &r), 15);
    CHECK_INT(r.local, 1);
    CHECK_INT(PP("PROXY UNKNOWN whatever follows here\r\n", &r), 37);
    CHECK_INT(r.local, 1);
    /* refused */
    CHECK_INT(PP("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", &r), MG_PP_INVALID);       /* bare LF */
    CHECK_INT(PP("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", &r), MG_PP_INVALID);    /* two spaces */
    CHECK_INT(PP("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", &r), MG_PP_INVALID);    /* leading 0 */
    CHECK_INT(PP("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", &r), MG_PP_INVALID);
    CHECK_INT(PP("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", &r), MG_PP_INVALID);         /* wrong family */
    CHECK_INT(PP("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", &r), MG_PP_INVALID);       /* a field short */
    CHECK_INT(PP("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", &r), MG_PP_INVALID);
    CHECK_INT(PP("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", &r), MG_PP_INVALID);
    CHECK_INT(PP("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &r), MG_PP_INVALID);
    CHECK_INT(PP("GET / HTTP/1.1\r\n", &r), MG_PP_INVALID);
    CHECK_INT(PP("PRX", &r), MG_PP_INVALID);
    CHECK_INT(PP("PRO", &r), 0);
    char longline[200];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "PROXY UNKNOWN ", 14);
    CHECK_INT(pp(longline, 106, &r), 0);
    CHECK_INT(pp(longline, 107, &r), MG_PP_INVALID); /* no CRLF within 107 bytes */
}

#define SIG "\r\n\r\n\0\r\nQUIT\n"

static void test_v2(void)
{
    mgt_case = "v2";
    mg_pp_result_t r;
    char b[64];
    static const char v4[] = SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x01\xbb";
    CHECK_INT(pp(v4, sizeof v4 - 1, &r), 28);
    CHECK_INT(r.version, 2);
    CHECK_INT(r.family, AF_INET);
    CHECK_STR(src_text(&r, b), "192.0.2.1");
    CHECK_INT(r.src_port, 56324);
    CHECK_INT(r.dst_port, 443);
    for (size_t k = 0; k < sizeof v4 - 1; k++)
        CHECK_INT(pp(v4, k, &r), 0);
    static const char v6[] = SIG "\x21\x21\x00\x28"
                                 "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
                                 "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02"
                                 "\x0f\xa0\x00\x50\x04\x00\x01\x00";
    CHECK_INT(pp(v6, sizeof v6 - 1, &r), 56); /* the TLV is skipped */
    CHECK_INT(r.family, AF_INET6);
    CHECK_STR(src_text(&r, b), "2001:db8::1");
    CHECK_INT(r.src_port, 4000);
    static const char local[] = SIG "\x20\x00\x00\x00GET";
    CHECK_INT(pp(local, sizeof local - 1, &r), 16);
    CHECK_INT(r.local, 1);
    static const char unspec[] = SIG "\x21\x00\x00\x02zz";
    CHECK_INT(pp(unspec, sizeof unspec - 1, &r), 18);
    CHECK_INT(r.local, 1);
    static const char badver[] = SIG "\x11\x11\x00\x0c";
    CHECK_INT(pp(badver, sizeof badver - 1, &r), MG_PP_INVALID);
    static const char badcmd[] = SIG "\x22\x11\x00\x0c";
    CHECK_INT(pp(badcmd, sizeof badcmd - 1, &r), MG_PP_INVALID);
    static const char shortaddr[] = SIG "\x21\x11\x00\x04\x01\x02\x03\x04";
    CHECK_INT(pp(shortaddr, sizeof shortaddr - 1, &r), MG_PP_INVALID);
    static const char dgram[] = SIG "\x21\x12\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x01\xbb";
    CHECK_INT(pp(dgram, sizeof dgram - 1, &r), MG_PP_INVALID);
    static const char huge[] = SIG "\x21\x11\xff\xff";
    CHECK_INT(pp(huge, sizeof huge - 1, &r), MG_PP_INVALID);
    static const char badsig[] = "\r\n\r\n\0\r\nQUIX\n";
    CHECK_INT(pp(badsig, sizeof badsig - 1, &r), MG_PP_INVALID);
    CHECK_INT(pp("\x16\x03\x01", 3, &r), MG_PP_INVALID); /* a TLS ClientHello */
}

static void test_cidr(void)
{
    mgt_case = "cidr";
    mg_cidr_t l[4];
    CHECK_INT(mg_cidr_parse("10.0.0.0/8", &l[0]), 0);
    CHECK_INT(mg_cidr_parse("127.0.0.1", &l[1]), 0);
    CHECK_INT(mg_cidr_parse("::1/128", &l[2]), 0);
    CHECK_INT(mg_cidr_parse("fd00::/8", &l[3]), 0);
    CHECK(mg_cidr_match_text(l, 4, "10.255.1.2"));
    CHECK(!mg_cidr_match_text(l, 4, "11.0.0.1"));
    CHECK(mg_cidr_match_text(l, 4, "127.0.0.1"));
    CHECK(!mg_cidr_match_text(l, 4, "127.0.0.2"));
    CHECK(mg_cidr_match_text(l, 4, "::1"));
    CHECK(mg_cidr_match_text(l, 4, "fdab::7"));
    CHECK(!mg_cidr_match_text(l, 4, "fe80::1"));
    CHECK(mg_cidr_match_text(l, 4, "::ffff:10.1.2.3")); /* mapped: as IPv4 */
    CHECK(!mg_cidr_match_text(l, 4, "not-an-ip"));
    mg_cidr_t c;
    CHECK_INT(mg_cidr_parse("10.0.0.0/33", &c), -1);
    CHECK_INT(mg_cidr_parse("::/129", &c), -1);
    CHECK_INT(mg_cidr_parse("10.0.0.0/", &c), -1);
    CHECK_INT(mg_cidr_parse("10.0.0.0/8x", &c), -1);
    CHECK_INT(mg_cidr_parse("example.com", &c), -1);
    CHECK_INT(mg_cidr_parse("192.168.1.77/20", &c), 0); /* host bits cleared */
    CHECK(mg_cidr_match_text(&c, 1, "192.168.15.1"));
    CHECK(!mg_cidr_match_text(&c, 1, "192.168.16.1"));
    CHECK_INT(mg_cidr_parse("0.0.0.0/0", &c), 0);
    CHECK(mg_cidr_match_text(&c, 1, "8.8.8.8"));
    CHECK(!mg_cidr_match_text(&c, 1, "::1"));
}

static void test_xff(void)
{
    mgt_case = "xff";
    mg_cidr_t l[2];
    mg_cidr_parse("10.0.0.0/8", &l[0]);
    mg_cidr_parse("::1", &l[1]);
    char c[64];
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("203.0.113.7, 10.1.1.1"), c), 0);
    CHECK_STR(c, "203.0.113.7");
    /* the right-most untrusted wins: a client cannot prepend a fake */
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("1.1.1.1, 203.0.113.7, 10.1.1.1"), c), 0);
    CHECK_STR(c, "203.0.113.7");
    /* all trusted: the left-most, and the walk goes on */
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("10.9.9.9,::1"), c), 1);
    CHECK_STR(c, "10.9.9.9");
    /* garbage stops the walk at the hop to its right */
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("203.0.113.7, unknown, 10.2.2.2"), c), 0);
    CHECK_STR(c, "10.2.2.2");
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("[2001:db8::5]:443"), c), 0);
    CHECK_STR(c, "2001:db8::5");
    strcpy(c, "10.0.0.1");
    CHECK_INT(mg_rip_walk(l, 2, MG_STR("198.51.100.1:5000 , "), c), 0);
    CHECK_STR(c, "198.51.100.1");
}

int main(void)
{
    test_v1();
    test_v2();
    test_cidr();
    test_xff();
    return mgt_done("proxyproto");
}
