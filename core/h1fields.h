/* Which header fields cross a proxy, either way: hop-by-hop fields
 * (RFC 9110 7.6.1) and those a Connection header names stay on their hop;
 * framing fields are the writer's of each hop. Used for the upstream
 * request head (proxy.c) and the client's response head (h1writer.c). */
#ifndef MG_H1FIELDS_H
#define MG_H1FIELDS_H

#include "http1.h"
#include "mg.h"

static inline int mg_h1f_hop_by_hop(mg_str_t n)
{
    return MG_STR_EQ_CI(n, "connection") || MG_STR_EQ_CI(n, "keep-alive") ||
           MG_STR_EQ_CI(n, "proxy-connection") || MG_STR_EQ_CI(n, "te") ||
           MG_STR_EQ_CI(n, "trailer") || MG_STR_EQ_CI(n, "transfer-encoding") ||
           MG_STR_EQ_CI(n, "upgrade");
}

static inline int mg_h1f_framing(mg_str_t n)
{
    return MG_STR_EQ_CI(n, "content-length") || MG_STR_EQ_CI(n, "transfer-encoding") ||
           MG_STR_EQ_CI(n, "connection");
}

/* The names a head's Connection headers list, gathered once per head
 * rather than re-tokenized for every header (a hot path: every request and
 * response head). More than 8: a per-header scan. */
typedef struct mg_h1f_tokens {
    int first;      /* index of the first Connection header, -1: none */
    int n;          /* tokens in t, or -1 when there were too many */
    mg_str_t t[8];
} mg_h1f_tokens_t;

/* True if CRLF-separated "Name: value" lines (a handler's own headers)
 * set Date. */
int mg_h1f_lines_have_date(const char *lines);
void mg_h1f_tokens(const mg_h1_head_t *h, mg_h1f_tokens_t *ct);
/* True if `name` is one of the comma-separated tokens of h's Connection
 * headers, from the first one (index `first`, -1: none) on. */
int mg_h1f_connection_lists(const mg_h1_head_t *h, int first, mg_str_t name);

/* Whether a header of h goes to the other side. */
static inline int mg_h1f_forwardable(const mg_h1_head_t *h, const mg_h1f_tokens_t *ct,
                                     mg_str_t n)
{
    if (mg_h1f_hop_by_hop(n))
        return 0;
    if (ct->n < 0)
        return !mg_h1f_connection_lists(h, ct->first, n);
    for (int i = 0; i < ct->n; i++)
        if (ct->t[i].n == n.n && mg_str_eq_ci(n, ct->t[i].p, ct->t[i].n))
            return 0;
    return 1;
}

#endif
