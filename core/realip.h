/* Clients behind proxies (PRODUCT.md): trusted_proxies as a list of CIDRs,
 * and the right-to-left walk of X-Forwarded-For that finds the client.
 * Pure helpers, no I/O: unit-tested in spec/c/test_realip.c. */
#ifndef MG_REALIP_H
#define MG_REALIP_H

#include <stddef.h>
#include <stdint.h>

#include "mg.h"

/* One CIDR. IPv4 is kept as such (an IPv4-mapped IPv6 address is
 * matched as the IPv4 address it carries). */
typedef struct mg_cidr {
    uint8_t family;          /* 4 or 6 */
    uint8_t bits;            /* prefix length */
    uint8_t addr[16];        /* network order, host bits cleared */
} mg_cidr_t;

/* An address or CIDR: "10.0.0.0/8", "127.0.0.1" (/32), "::1/128", "fd00::/8".
 * 0, or -1 (not an address, prefix out of range). */
int mg_cidr_parse(const char *s, mg_cidr_t *out);
/* Parses an IP address in p[0..n) (a bare one, or as X-Forwarded-For hops
 * write them: "1.2.3.4:5678", "[::1]", "[::1]:80"). family 4 or 6; an
 * IPv4-mapped IPv6 address comes back as 4. 0 or -1. */
int mg_ip_parse(const char *p, size_t n, int *family, uint8_t addr[16]);
/* Whether the address is inside one of list[0..n). */
int mg_cidr_match(const mg_cidr_t *list, int n, int family, const uint8_t addr[16]);
/* Whether the text address is trusted (an unparsable address is not). */
int mg_cidr_match_text(const mg_cidr_t *list, int n, const char *ip);

/* One X-Forwarded-For value, walked right to left from the current client
 * (an address the caller already found trusted): each hop becomes the
 * client; a hop that is not trusted stops the walk there. A hop that is not
 * an address stops the walk before it (the client stays the hop to its
 * right). client is NUL-terminated text, at most 63 bytes. Returns 1 when
 * every hop was trusted (the walk goes on into the X-Forwarded-For header
 * before this one), 0 when it stopped. */
int mg_rip_walk(const mg_cidr_t *list, int n, mg_str_t xff, char client[64]);

struct mg_h1_head;
/* The request's client: when remote (the peer, after any PROXY header) is
 * trusted, the walk over the head's X-Forwarded-For headers, last header
 * first; remote is replaced by what it finds. Nothing to do when the list
 * is empty. */
void mg_rip_apply(const mg_cidr_t *list, int n, const struct mg_h1_head *h, char remote[64]);

#endif
