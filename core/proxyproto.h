/* PROXY protocol v1 (text) and v2 (binary) header parser, as HAProxy's
 * proxy-protocol.txt defines them. Pure: no I/O, no allocation, so it is
 * unit-tested and fuzzed on its own (spec/c/test_proxyproto.c,
 * spec/c/fuzz_proxyproto.c). conn.c feeds it the first bytes of a
 * connection on a `proxy_protocol = true` listener. */
#ifndef MG_PROXYPROTO_H
#define MG_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>

/* The longest header taken: a v1 line is at most 107 bytes; a v2 header is
 * 16 bytes plus addresses (at most 216 for unix) and TLVs, which load
 * balancers keep small. A longer v2 header is refused. */
#define MG_PP_MAX 2048
#define MG_PP_V1_MAX 107

enum { MG_PP_INVALID = -1 };

typedef struct mg_pp_result {
    int version;             /* 1 or 2 */
    int local;               /* v2 LOCAL, v1 UNKNOWN, or a family we do not take an
                              * address from: keep the socket's own addresses */
    int family;              /* AF_INET or AF_INET6 when !local */
    uint8_t src[16], dst[16];/* network order; 4 bytes used for AF_INET */
    uint16_t src_port, dst_port; /* host order */
} mg_pp_result_t;

/* Parses the header at the start of p[0..n). Returns its length (> 0) with
 * *out filled, 0 when more bytes are needed (then every byte given belongs
 * to the header, so a reader may consume them all), or MG_PP_INVALID when
 * the bytes are not a valid header. Never reads past p[n-1]. */
int mg_pp_parse(const uint8_t *p, size_t n, mg_pp_result_t *out);

#endif
