/* PROXY protocol parser (proxyproto.h). Strict, as the specification
 * asks of a receiver: exact signatures, single spaces, CRLF, numbers
 * without leading zeros, addresses of the announced family. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t V2_SIG[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
static const char V1_SIG[6] = "PROXY ";

/* A v1 port: 0..65535, decimal, no leading zero. -1 if not. */
static int v1_port(const char *s, size_t n)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? (int)v : -1;
}

static int v1_addr(int family, const char *s, size_t n, uint8_t out[16])
{
    char tmp[48];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(family, tmp, out) == 1 ? 0 : -1;
}

static int parse_v1(const uint8_t *p, size_t n, mg_pp_result_t *out)
{
    size_t cmp = n < sizeof V1_SIG ? n : sizeof V1_SIG;
    if (memcmp(p, V1_SIG, cmp) != 0)
        return MG_PP_INVALID;
    const uint8_t *lf = memchr(p, '\n', n < MG_PP_V1_MAX ? n : MG_PP_V1_MAX);
    if (lf == NULL)
        return n < MG_PP_V1_MAX ? 0 : MG_PP_INVALID;
    size_t len = (size_t)(lf - p) + 1;
    if (len < sizeof V1_SIG + 2 || lf[-1] != '\r')
        return MG_PP_INVALID;
    /* fields between "PROXY " and "\r\n" */
    const char *s = (const char *)p + sizeof V1_SIG, *end = (const char *)lf - 1;
    if (end - s >= 7 && memcmp(s, "UNKNOWN", 7) == 0 && (end - s == 7 || s[7] == ' ')) {
        memset(out, 0, sizeof *out);
        out->version = 1;
        out->local = 1; /* the rest of the line is to be ignored */
        return (int)len;
    }
    const char *f[5];
    size_t fl[5];
    int nf = 0;
    const char *start = s;
    for (const char *c = s; c <= end; c++) {
        if (c == end || *c == ' ') {
            if (nf == 5)
                return MG_PP_INVALID;
            f[nf] = start;
            fl[nf++] = (size_t)(c - start);
            start = c + 1;
        } else if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e) {
            return MG_PP_INVALID;
        }
    }
    memset(out, 0, sizeof *out);
    out->version = 1;
    int family;
    if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0)
        family = AF_INET;
    else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0)
        family = AF_INET6;
    else
        return MG_PP_INVALID;
    if (nf != 5)
        return MG_PP_INVALID;
    for (int i = 0; i < 5; i++)
        if (fl[i] == 0)
            return MG_PP_INVALID; /* two spaces in a row */
    int sp = v1_port(f[3], fl[3]), dp = v1_port(f[4], fl[4]);
    if (v1_addr(family, f[1], fl[1], out->src) != 0 ||
        v1_addr(family, f[2], fl[2], out->dst) != 0 || sp < 0 || dp < 0)
        return MG_PP_INVALID;
    out->family = family;
    out->src_port = (uint16_t)sp;
    out->dst_port = (uint16_t)dp;
    return (int)len;
}

static int parse_v2(const uint8_t *p, size_t n, mg_pp_result_t *out)
{
    size_t cmp = n < sizeof V2_SIG ? n : sizeof V2_SIG;
    if (memcmp(p, V2_SIG, cmp) != 0)
        return MG_PP_INVALID;
    if (n >= 13 && (p[12] >> 4) != 2)
        return MG_PP_INVALID; /* version 2 only */
    if (n >= 13 && (p[12] & 15) > 1)
        return MG_PP_INVALID; /* LOCAL or PROXY */
    if (n < 16)
        return 0;
    size_t len = 16 + (((size_t)p[14] << 8) | p[15]);
    if (len > MG_PP_MAX)
        return MG_PP_INVALID;
    if (n < len)
        return 0;
    int cmd = p[12] & 15, fam = p[13] >> 4, proto = p[13] & 15;
    memset(out, 0, sizeof *out);
    out->version = 2;
    if (fam > 3 || proto > 2)
        return MG_PP_INVALID;
    if (cmd == 0 || fam == 0 || fam == 3) {
        /* LOCAL (a health check by the balancer itself), or AF_UNSPEC or
         * AF_UNIX: no IP address to take */
        out->local = 1;
        if (fam == 3 && len - 16 < 216 && cmd == 1)
            return MG_PP_INVALID;
        return (int)len;
    }
    if (proto != 1)
        return MG_PP_INVALID; /* we are a stream: DGRAM or UNSPEC says nothing true */
    const uint8_t *a = p + 16;
    if (fam == 1) {
        if (len - 16 < 12)
            return MG_PP_INVALID;
        out->family = AF_INET;
        memcpy(out->src, a, 4);
        memcpy(out->dst, a + 4, 4);
        out->src_port = (uint16_t)((a[8] << 8) | a[9]);
        out->dst_port = (uint16_t)((a[10] << 8) | a[11]);
    } else {
        if (len - 16 < 36)
            return MG_PP_INVALID;
        out->family = AF_INET6;
        memcpy(out->src, a, 16);
        memcpy(out->dst, a + 16, 16);
        out->src_port = (uint16_t)((a[32] << 8) | a[33]);
        out->dst_port = (uint16_t)((a[34] << 8) | a[35]);
    }
    return (int)len; /* TLVs after the addresses are skipped */
}

int mg_pp_parse(const uint8_t *p, size_t n, mg_pp_result_t *out)
{
    if (n == 0)
        return 0;
    if (p[0] == 'P')
        return parse_v1(p, n, out);
    if (p[0] == 0x0d)
        return parse_v2(p, n, out);
    return MG_PP_INVALID;
}
