/* Fuzz harness for core/proxyproto (PROXY protocol v1/v2 parser).
 *
 * The input is the first bytes a peer sends on a proxy_protocol listener.
 * conn.c relies on one contract: mg_pp_parse returns 0 only when every byte
 * it was given belongs to the header (so the reader may take them off the
 * socket), a length L > 0 that does not change once more bytes arrive, or
 * MG_PP_INVALID for good. So for every input the harness parses every
 * prefix, each from its own exact-size allocation (a read past the end is
 * an ASan report), and checks: the answers go 0...0 then L (or invalid) and
 * stay there; L is at most the bytes given and MG_PP_MAX; the result is the
 * same whatever follows the header; an address result has a family.
 *
 * Built two ways, as fuzz_http1.c: with -DMG_FUZZ_LIBFUZZER under clang's
 * libFuzzer (cmake -DMG_FUZZ=ON), and as a plain program (the
 * `fuzz_proxyproto_smoke` ctest) that runs the built-in seeds, their
 * truncations and bit flips, and any files named on the command line
 * (spec/c/corpus/proxyproto/). */
#include "proxyproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int parse_copy(const uint8_t *p, size_t n, mg_pp_result_t *r)
{
    uint8_t *c = malloc(n ? n : 1);
    if (c == NULL)
        abort();
    memcpy(c, p, n);
    memset(r, 0xa5, sizeof *r);
    int k = mg_pp_parse(c, n, r);
    free(c);
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n)
{
    if (n > 3 * MG_PP_MAX)
        n = 3 * MG_PP_MAX;
    mg_pp_result_t full;
    int kf = parse_copy(p, n, &full);
    if (kf > 0) {
        if ((size_t)kf > n || kf > MG_PP_MAX)
            abort();
        if (full.version != 1 && full.version != 2)
            abort();
        if (!full.local && full.family != AF_INET && full.family != AF_INET6)
            abort();
        if (full.version == 1 && kf > MG_PP_V1_MAX)
            abort();
    }
    int state = 0; /* 0: need more so far; 1: done; -1: invalid */
    for (size_t k = 0; k <= n; k++) {
        mg_pp_result_t r;
        int got = parse_copy(p, k, &r);
        if (state == 0) {
            if (got > 0) {
                state = 1;
                if (got != kf || memcmp(&r, &full, sizeof r) != 0)
                    abort(); /* the result must not depend on what follows */
            } else if (got < 0) {
                state = -1;
                if (kf >= 0)
                    abort();
            }
        } else if (state == 1) {
            if (got != kf)
                abort();
        } else if (got >= 0) {
            abort(); /* invalid stays invalid */
        }
    }
    if (state == 0 && kf != 0)
        abort();
    return 0;
}

#ifndef MG_FUZZ_LIBFUZZER
struct seed {
    const char *s;
    size_t n;
};
#define S(lit) { lit, sizeof(lit) - 1 }

static const struct seed SEEDS[] = {
    S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n\r\n"),
    S("PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n"),
    S("PROXY UNKNOWN\r\n"),
    S("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
    S("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
    S("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
    S("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
    /* v2 PROXY TCP over IPv4: 192.0.2.1:56324 -> 198.51.100.2:443 */
    S("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x01\xbb"
      "GET"),
    /* v2 PROXY TCP over IPv6 with a TLV */
    S("\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x28"
      "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
      "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02"
      "\x0f\xa0\x00\x50\x04\x00\x01\x00"),
    /* v2 LOCAL */
    S("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"),
    /* v2 UNSPEC with a payload */
    S("\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x03xyz"),
    /* v2 bad version, bad command, short address block */
    S("\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c"),
    S("\r\n\r\n\0\r\nQUIT\n\x22\x11\x00\x0c"),
    S("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04"),
    S("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    S("GET / HTTP/1.1\r\n\r\n"),
};

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    static unsigned char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0, runs = 0;
    for (int i = 1; i < argc; i++, runs++)
        bad |= run_file(argv[i]);
    for (size_t i = 0; i < sizeof SEEDS / sizeof SEEDS[0]; i++) {
        const struct seed *s = &SEEDS[i];
        unsigned char buf[256];
        memcpy(buf, s->s, s->n);
        LLVMFuzzerTestOneInput(buf, s->n);
        runs++;
        /* every single-bit flip of every seed */
        for (size_t b = 0; b < s->n * 8; b++) {
            buf[b / 8] ^= (unsigned char)(1u << (b % 8));
            LLVMFuzzerTestOneInput(buf, s->n);
            buf[b / 8] ^= (unsigned char)(1u << (b % 8));
            runs++;
        }
    }
    printf("fuzz_proxyproto: %d inputs: ok\n", runs);
    return bad;
}
#endif
