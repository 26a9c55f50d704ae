/* trusted_proxies and X-Forwarded-For (realip.h). As nginx's realip module
 * with real_ip_recursive on: the client is the right-most address that is
 * not a trusted proxy. */
#include "realip.h"
#include "http1.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t V4_MAPPED[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static int parse_plain(const char *s, int *family, uint8_t addr[16])
{
    if (inet_pton(AF_INET, s, addr) == 1) {
        *family = 4;
        return 0;
    }
    if (inet_pton(AF_INET6, s, addr) == 1) {
        *family = 6;
        if (memcmp(addr, V4_MAPPED, 12) == 0) {
            memmove(addr, addr + 12, 4);
            *family = 4;
        }
        return 0;
    }
    return -1;
}

int mg_ip_parse(const char *p, size_t n, int *family, uint8_t addr[16])
{
    char tmp[64];
    while (n && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof tmp)
        return -1;
    if (p[0] == '[') {
        const char *rb = memchr(p, ']', n);
        if (rb == NULL)
            return -1;
        size_t after = n - (size_t)(rb - p) - 1;
        if (after != 0 && rb[1] != ':')
            return -1;
        n = (size_t)(rb - p) - 1;
        p++;
    } else {
        const char *c1 = memchr(p, ':', n);
        if (c1 && memchr(c1 + 1, ':', n - (size_t)(c1 - p) - 1) == NULL)
            n = (size_t)(c1 - p); /* "1.2.3.4:port" */
    }
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    uint8_t a[16];
    if (parse_plain(tmp, family, a) != 0)
        return -1;
    memcpy(addr, a, 16);
    return 0;
}

int mg_cidr_parse(const char *s, mg_cidr_t *out)
{
    char tmp[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    int family;
    uint8_t a[16] = { 0 };
    if (parse_plain(tmp, &family, a) != 0)
        return -1;
    int max = family == 4 ? 32 : 128;
    long bits = max;
    if (slash) {
        char *end;
        if (slash[1] < '0' || slash[1] > '9')
            return -1;
        bits = strtol(slash + 1, &end, 10);
        if (*end || bits < 0 || bits > 128)
            return -1;
        /* "::ffff:10.0.0.0/104" is 10.0.0.0/8 */
        if (family == 4 && memchr(tmp, ':', n)) {
            if (bits < 96)
                return -1;
            bits -= 96;
        }
        if (bits > max)
            return -1;
    }
    memset(out, 0, sizeof *out);
    out->family = (uint8_t)family;
    out->bits = (uint8_t)bits;
    for (int i = 0; i < max / 8; i++) {
        int keep = (int)bits - i * 8;
        uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
        out->addr[i] = a[i] & mask;
    }
    return 0;
}

int mg_cidr_match(const mg_cidr_t *list, int n, int family, const uint8_t addr[16])
{
    for (int k = 0; k < n; k++) {
        const mg_cidr_t *c = &list[k];
        if (c->family != family)
            continue;
        int full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->addr, addr, (size_t)full) != 0)
            continue;
        if (rest && ((addr[full] ^ c->addr[full]) & (uint8_t)(0xff << (8 - rest))))
            continue;
        return 1;
    }
    return 0;
}

int mg_cidr_match_text(const mg_cidr_t *list, int n, const char *ip)
{
    int family;
    uint8_t a[16];
    if (n == 0 || mg_ip_parse(ip, strlen(ip), &family, a) != 0)
        return 0;
    return mg_cidr_match(list, n, family, a);
}

int mg_rip_walk(const mg_cidr_t *list, int n, mg_str_t xff, char client[64])
{
    size_t end = xff.n;
    for (;;) {
        size_t start = end;
        while (start > 0 && xff.p[start - 1] != ',')
            start--;
        const char *hop = xff.p + start;
        size_t hn = end - start;
        int blank = 1;
        for (size_t i = 0; i < hn; i++)
            if (hop[i] != ' ' && hop[i] != '\t')
                blank = 0;
        if (!blank) { /* "a, , b": empty elements are allowed by the list syntax */
            int family;
            uint8_t a[16];
            if (mg_ip_parse(hop, hn, &family, a) != 0)
                return 0;
            char text[INET6_ADDRSTRLEN];
            inet_ntop(family == 4 ? AF_INET : AF_INET6, a, text, sizeof text);
            snprintf(client, 64, "%s", text);
            if (!mg_cidr_match(list, n, family, a))
                return 0;
        }
        if (start == 0)
            return 1;
        end = start - 1;
    }
}

void mg_rip_apply(const mg_cidr_t *list, int n, const mg_h1_head_t *h, char remote[64])
{
    if (n == 0 || !mg_cidr_match_text(list, n, remote))
        return;
    int idx[16], k = 0; /* more X-Forwarded-For headers than this: the last 16 */
    for (int i = mg_h1_find(h, "x-forwarded-for", 15, 0); i >= 0;
         i = mg_h1_find(h, "x-forwarded-for", 15, i + 1))
        idx[k++ % 16] = i;
    for (int j = 0; j < k && j < 16; j++) {
        int i = idx[(k - 1 - j) % 16];
        if (!mg_rip_walk(list, n, mg_h1_value(h, i), remote))
            return;
    }
}
