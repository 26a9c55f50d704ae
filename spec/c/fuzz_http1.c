/* Fuzz harness for core/http1 (llhttp glue), request and response mode.
 *
 * Input: two control bytes, then the bytes a peer sends.
 *   byte 0: bit 0 response mode; bit 1 on_done returns 1 (go on) instead of
 *           pausing; bit 2 on_head returns 1 (no body: a response to HEAD);
 *           bit 3 mg_h1_eof at the end; bits 4-5 pick the size limits;
 *           bits 6-7 the request parser's underscore_headers policy
 *           (0 allow, 1 drop, 2 reject, 3 drop)
 *   byte 1: seed for the read sizes of the split run
 *
 * Each input is parsed three ways, as conn.c and proxy.c feed the parser:
 * in one read, in reads of pseudo-random sizes, and one byte at a time
 * (short inputs). Every read is its own exact-size allocation, and bytes
 * left over after a pause are copied into a new one before they are fed
 * again, so a view that outlives its read or a read past it is an ASan
 * report. The three transcripts (heads, bodies, errors) must be identical.
 * On every head the harness checks that offsets lie inside the store, that
 * names are tokens, that an accepted request has no length ambiguity and
 * respects the limits; at message end, that the head did not change after
 * on_head (trailers) and that a Content-Length body had exactly that size.
 *
 * The re-framing oracle: every request message the parser accepts is
 * written out again as the gateway would forward it (the head as parsed,
 * one chunk per body piece as proxy.c re-chunks, or the Content-Length
 * body) and parsed again by a fresh request parser with the same policy.
 * The second parse must see exactly one message that ends exactly where
 * the written bytes end, with the same head and the same body: what the
 * parser accepted has one meaning, and the upstream gets that meaning.
 *
 * Built two ways: with -DMG_FUZZ_LIBFUZZER under clang's libFuzzer (cmake
 * -DMG_FUZZ=ON), and as a plain program (the `fuzz_http1_smoke` ctest)
 * that runs the built-in seeds and any files named on the command line, so
 * a gcc-only CI still exercises the harness and its invariants. */
#include "http1.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tx {
    char *p;
    size_t n, cap;
} tx_t;

static void tx_put(tx_t *t, const void *p, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n + 1)
            cap *= 2;
        t->p = realloc(t->p, cap);
        if (t->p == NULL)
            abort();
        t->cap = cap;
    }
    memcpy(t->p + t->n, p, n);
    t->n += n;
    t->p[t->n] = 0;
}

static void tx_fmt(tx_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tx_fmt(tx_t *t, const char *fmt, ...)
{
    char b[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (n > 0)
        tx_put(t, b, (size_t)n < sizeof b ? (size_t)n : sizeof b - 1);
}

#define INVARIANT(c)                                                                       \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "fuzz_http1: invariant failed at %s:%d: %s\n", __FILE__,       \
                    __LINE__, #c);                                                         \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

typedef struct run {
    int type;
    int done_ret, head_ret;
    size_t max_uri, max_header;
    mg_h1_head_t head;
    tx_t tx;          /* transcript of everything parsed */
    tx_t seen;        /* the head as on_head saw it */
    const char *rd;   /* the read being fed: body pieces must lie inside */
    size_t rdn;
    uint64_t body;    /* body bytes of the current message */
    int in_msg;
    int us;           /* underscore policy (MG_H1_US_*) */
    int oracle;       /* 1: re-frame and re-parse each accepted request;
                       * 2: only record the body (the second parse) */
    tx_t bodyb;       /* body bytes of the current message */
    tx_t framed;      /* the body as it would be forwarded */
    int nmsg;         /* messages completed */
} run_t;

/* The head in text form, checking its invariants on the way. */
static void dump_head(run_t *r, const mg_h1_head_t *h, tx_t *t)
{
    size_t len = h->store.len;
    INVARIANT(h->store.off == 0);
    INVARIANT(h->nhdrs >= 0 && h->nhdrs <= MG_H1_MAX_HEADERS && h->nhdrs <= h->hcap);
    if (r->type == HTTP_REQUEST) {
        INVARIANT((size_t)h->url_off + h->url_len <= len);
        INVARIANT(h->url_len > 0);
        if (r->max_uri)
            INVARIANT(h->url_len <= r->max_uri);
        if (r->max_header)
            INVARIANT(len <= r->max_header);
        tx_fmt(t, "REQ %d %d.%d ", h->method, h->http_major, h->http_minor);
        tx_put(t, h->store.base + h->url_off, h->url_len);
    } else {
        INVARIANT((size_t)h->reason_off + h->reason_len <= len);
        INVARIANT(h->status >= 100 && h->status <= 999);
        tx_fmt(t, "RESP %d %d.%d ", h->status, h->http_major, h->http_minor);
        if (h->reason_len) /* an empty store has no base: NULL + 0 */
            tx_put(t, h->store.base + h->reason_off, h->reason_len);
    }
    tx_fmt(t, " flags=%x cl=%llu\n", h->flags, (unsigned long long)h->content_length);
    for (int i = 0; i < h->nhdrs; i++) {
        const mg_h1_hdr_t *e = &h->hdrs[i];
        INVARIANT((size_t)e->name_off + e->name_len <= len);
        INVARIANT((size_t)e->value_off + e->value_len <= len);
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        INVARIANT(mg_h1_is_token(n.p, n.n));
        /* trailing whitespace is trimmed */
        INVARIANT(v.n == 0 || (v.p[v.n - 1] != ' ' && v.p[v.n - 1] != '\t'));
        tx_put(t, n.p, n.n);
        tx_put(t, ": [", 3);
        tx_put(t, v.p, v.n);
        tx_put(t, "]\n", 2);
    }
}

static mg_h1_head_t *cb_begin(void *ud)
{
    run_t *r = ud;
    INVARIANT(!r->in_msg);
    r->in_msg = 1;
    r->body = 0;
    r->bodyb.n = 0;
    r->framed.n = 0;
    return &r->head;
}

static int cb_head(void *ud, mg_h1_head_t *h)
{
    run_t *r = ud;
    INVARIANT(h == &r->head && r->in_msg);
    r->seen.n = 0;
    dump_head(r, h, &r->seen);
    tx_put(&r->tx, r->seen.p, r->seen.n);
    if (r->type == HTTP_REQUEST) {
        /* what reaches req.c has one unambiguous length */
        INVARIANT(!((h->flags & MG_H1_HAS_CL) && (h->flags & MG_H1_HAS_TE)));
        INVARIANT(!(h->flags & MG_H1_HAS_TE) || (h->flags & MG_H1_CHUNKED));
        INVARIANT(h->host_count <= 1);
        /* "drop" and "reject" let no underscore name through */
        if (r->us != MG_H1_US_ALLOW)
            for (int i = 0; i < h->nhdrs; i++) {
                mg_str_t nm = mg_h1_name(h, i);
                INVARIANT(memchr(nm.p, '_', nm.n) == NULL);
            }
    }
    return r->head_ret;
}

static int cb_body(void *ud, const char *p, size_t n)
{
    run_t *r = ud;
    INVARIANT(r->in_msg);
    INVARIANT(n > 0);
    INVARIANT(p >= r->rd && p + n <= r->rd + r->rdn);
    /* pieces depend on the reads: the transcript has the bytes only */
    if (r->body == 0)
        tx_put(&r->tx, "body:", 5);
    r->body += n;
    tx_put(&r->tx, p, n);
    if (r->oracle) {
        tx_put(&r->bodyb, p, n);
        if (r->head.flags & MG_H1_CHUNKED) {
            tx_fmt(&r->framed, "%zx\r\n", n);
            tx_put(&r->framed, p, n);
            tx_put(&r->framed, "\r\n", 2);
        } else {
            tx_put(&r->framed, p, n);
        }
    }
    return 0;
}

static const mg_h1_cb_t CB;

/* The oracle (see the top): `r` has just completed a request message. */
static void reframe_check(run_t *r)
{
    const mg_h1_head_t *h = &r->head;
    tx_t w = { 0 };
    tx_fmt(&w, "%s ", llhttp_method_name((llhttp_method_t)h->method));
    tx_put(&w, h->store.base + h->url_off, h->url_len);
    tx_fmt(&w, " HTTP/%d.%d\r\n", h->http_major, h->http_minor);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        tx_put(&w, n.p, n.n);
        tx_put(&w, ": ", 2);
        tx_put(&w, v.p, v.n);
        tx_put(&w, "\r\n", 2);
    }
    tx_put(&w, "\r\n", 2);
    if (r->framed.n)
        tx_put(&w, r->framed.p, r->framed.n);
    if ((h->flags & MG_H1_CHUNKED) && r->head_ret == 0)
        tx_put(&w, "0\r\n\r\n", 5);

    static run_t o; /* the second parse; never nested deeper */
    mg_h1_t p2;
    o.type = HTTP_REQUEST;
    o.done_ret = 0;
    o.head_ret = r->head_ret;
    o.max_uri = o.max_header = 0;
    o.in_msg = 0;
    o.oracle = 0;
    o.nmsg = 0;
    o.tx.n = 0;
    o.bodyb.n = 0;
    tx_put(&o.tx, "", 0);
    mg_h1_init(&p2, HTTP_REQUEST, &CB, &o, 0, 0);
    p2.underscores = (unsigned char)r->us;
    o.rd = w.p;
    o.rdn = w.n;
    o.oracle = 2;
    ssize_t k = mg_h1_feed(&p2, w.p, w.n);
    o.oracle = 0;
    int ok = k == (ssize_t)w.n && o.nmsg == 1 && mg_h1_is_paused(&p2) &&
             o.seen.n == r->seen.n && memcmp(o.seen.p, r->seen.p, o.seen.n) == 0 &&
             o.bodyb.n == r->bodyb.n && (o.bodyb.n == 0 || memcmp(o.bodyb.p, r->bodyb.p, o.bodyb.n) == 0);
    if (!ok) {
        fprintf(stderr,
                "fuzz_http1: re-framing oracle failed (fed %zu, consumed %zd, messages %d%s%s)\n"
                "--- forwarded\n%.*s\n--- first parse\n%s--- second parse\n%s",
                w.n, k, o.nmsg, k < 0 ? ", error " : "", k < 0 ? p2.err_reason : "", (int)w.n,
                w.p, r->tx.p, o.tx.p);
        abort();
    }
    mg_h1_head_free(&o.head);
    memset(&o.head, 0, sizeof o.head);
    free(w.p);
}

static int cb_done(void *ud)
{
    run_t *r = ud;
    INVARIANT(r->in_msg);
    r->in_msg = 0;
    /* the owner still holds views into the head: trailers must not have
     * touched it */
    tx_t now = { 0 };
    dump_head(r, &r->head, &now);
    if (now.n != r->seen.n || memcmp(now.p, r->seen.p, now.n) != 0) {
        fprintf(stderr, "fuzz_http1: head changed after on_head\n--- then\n%s--- now\n%s",
                r->seen.p, now.p);
        abort();
    }
    free(now.p);
    if ((r->head.flags & MG_H1_HAS_CL) && !(r->head.flags & MG_H1_CHUNKED) && r->head_ret == 0 &&
        r->head.status != 204 && r->head.status != 304 && r->head.status / 100 != 1)
        INVARIANT(r->body == r->head.content_length);
    tx_fmt(&r->tx, "%sdone\n", r->body ? "\n" : "");
    r->nmsg++;
    if (r->oracle == 1 && r->type == HTTP_REQUEST)
        reframe_check(r);
    return r->done_ret;
}

static const mg_h1_cb_t CB = { cb_begin, cb_head, cb_body, cb_done, NULL };

static const size_t LIMITS[4][2] = {
    { 0, 0 }, { 8192, 16384 }, { 16, 64 }, { 64, 40 },
};

/* Feeds p[0..n) in reads whose sizes come from `seed` (0: one read, 1: one
 * byte at a time, else pseudo-random), like conn.c: a read is parsed where
 * it lies; what is left after a pause is copied to a buffer of its own and
 * fed after mg_h1_resume. Fills r->tx. */
static const unsigned char US_POLICY[4] = { MG_H1_US_ALLOW, MG_H1_US_DROP, MG_H1_US_REJECT,
                                            MG_H1_US_DROP };

static void run_once(run_t *r, unsigned ctl, const unsigned char *p, size_t n, unsigned seed,
                     int oracle)
{
    mg_h1_t h;
    r->type = ctl & 1 ? HTTP_RESPONSE : HTTP_REQUEST;
    r->done_ret = ctl & 2 ? 1 : 0;
    r->head_ret = ctl & 4 ? 1 : 0;
    r->max_uri = LIMITS[(ctl >> 4) & 3][0];
    r->max_header = LIMITS[(ctl >> 4) & 3][1];
    r->in_msg = 0;
    r->nmsg = 0;
    r->us = US_POLICY[(ctl >> 6) & 3];
    r->oracle = oracle;
    r->tx.n = 0;
    tx_put(&r->tx, "", 0); /* allocated and terminated even when empty */
    mg_h1_init(&h, r->type, &CB, r, r->max_uri, r->max_header);
    if (r->type == HTTP_REQUEST)
        h.underscores = (unsigned char)r->us;
    unsigned x = seed * 2654435761u + 1;
    size_t off = 0;
    int failed = 0;
    while (off < n && !failed) {
        size_t want = n - off;
        if (seed == 1)
            want = 1;
        else if (seed > 1) {
            x = x * 1103515245u + 12345u;
            want = 1 + (x >> 16) % 97;
            if (want > n - off)
                want = n - off;
        }
        /* a fresh exact-size read */
        size_t take = want;
        char *rd = malloc(want ? want : 1);
        memcpy(rd, p + off, want);
        size_t at = 0;
        int guard = 0;
        while (at < want) {
            r->rd = rd + at;
            r->rdn = want - at;
            ssize_t k = mg_h1_feed(&h, rd + at, want - at);
            if (k < 0) {
                if (r->in_msg && r->body)
                    tx_put(&r->tx, "\n", 1);
                INVARIANT(h.err_status >= 400 && h.err_status <= 599 && h.err_reason != NULL);
                tx_fmt(&r->tx, "error %d %s\n", h.err_status, h.err_reason);
                /* sticky */
                INVARIANT(mg_h1_feed(&h, "GET / HTTP/1.1\r\n\r\n", 18) == -1);
                failed = 1;
                break;
            }
            INVARIANT((size_t)k <= want - at);
            at += (size_t)k;
            if (mg_h1_is_paused(&h)) {
                INVARIANT(!r->in_msg);
                if (at < want) {
                    /* the leftover moves to the connection's own buffer */
                    INVARIANT(mg_h1_feed(&h, rd + at, want - at) == 0);
                    size_t left = want - at;
                    char *copy = malloc(left);
                    memcpy(copy, rd + at, left);
                    free(rd);
                    rd = copy;
                    want = left;
                    at = 0;
                }
                mg_h1_resume(&h);
            } else {
                INVARIANT(at == want);
            }
            INVARIANT(++guard < 100000);
        }
        free(rd);
        off += take;
    }
    if ((ctl & 8) && !failed) {
        if (r->in_msg && r->body)
            tx_put(&r->tx, "\n", 1);
        int rc = mg_h1_eof(&h);
        tx_fmt(&r->tx, "eof %d\n", rc);
    }
    mg_h1_head_free(&r->head);
    memset(&r->head, 0, sizeof r->head);
}

/* Whether two transcripts agree. They may differ in one way: when the
 * input is both malformed and over a size limit, the limit may be noticed
 * first in one run (the span is delivered before the byte that is wrong)
 * and the syntax error first in the other, so 400 against 431 or 414 at
 * the same point is the same refusal. 414 against 431 is not: the URI
 * limit wins however the bytes arrive. */
/* The offset of a transcript's last line (it ends with a newline). */
static size_t last_line(const tx_t *t)
{
    if (t->n == 0)
        return 0;
    size_t i = t->n - 1; /* the final newline */
    while (i > 0 && t->p[i - 1] != '\n')
        i--;
    return i;
}

static int same(const tx_t *a, const tx_t *b)
{
    if (a->n == b->n && memcmp(a->p, b->p, a->n) == 0)
        return 1;
    /* an error is always the last line; the transcripts may hold NULs
     * (reason phrases, bodies), so no str* functions before it */
    size_t la = last_line(a), lb = last_line(b);
    if (la != lb || a->n - la < 10 || b->n - lb < 10 || memcmp(a->p, b->p, la) != 0 ||
        memcmp(a->p + la, "error ", 6) != 0 || memcmp(b->p + lb, "error ", 6) != 0)
        return 0;
    int sa = atoi(a->p + la + 6), sb = atoi(b->p + lb + 6);
    return sa == sb || sa == 400 || sb == 400;
}

/* A transcript on stderr, NULs and other control bytes escaped. */
static void dump_tx(const char *title, const tx_t *t)
{
    fprintf(stderr, "--- %s\n", title);
    for (size_t i = 0; i < t->n; i++) {
        unsigned char c = (unsigned char)t->p[i];
        if (c == '\n' || (c >= 0x20 && c < 0x7f))
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
}

static void dump_both(const tx_t *a, const tx_t *b)
{
    dump_tx("whole", a);
    dump_tx("other", b);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned ctl = data[0], seed = data[1];
    const unsigned char *p = data + 2;
    size_t n = size - 2;
    static run_t a, b;
    run_once(&a, ctl, p, n, 0, 1);
    run_once(&b, ctl, p, n, seed < 2 ? seed + 2 : seed, 0);
#ifndef MG_FUZZ_LIBFUZZER
    if (getenv("FUZZ_HTTP1_PRINT"))
        printf("%s", a.tx.p);
#endif
    if (!same(&a.tx, &b.tx)) {
        fprintf(stderr, "fuzz_http1: split run differs (seed %u)\n", seed);
        dump_both(&a.tx, &b.tx);
        abort();
    }
    if (n <= 2048) {
        run_once(&b, ctl, p, n, 1, 0);
        if (!same(&a.tx, &b.tx)) {
            fprintf(stderr, "fuzz_http1: byte-by-byte run differs\n");
            dump_both(&a.tx, &b.tx);
            abort();
        }
    }
    return 0;
}

#ifndef MG_FUZZ_LIBFUZZER
#include <dirent.h>

/* Seeds: each starts with its two control bytes. */
#define S(ctl, seed, s) { ctl, seed, s, sizeof(s) - 1 }
static const struct seed {
    unsigned char ctl, seed;
    const char *s;
    size_t n;
} SEEDS[] = {
    S(0x00, 7, "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A:  v \t\r\n\r\n"
               "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
               "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
               "GET /last HTTP/1.0\r\n\r\n"),
    S(0x12, 3, "POST /c HTTP/1.1\r\nHost: x\r\nX-Last: keep-me\r\nTransfer-Encoding: chunked\r\n\r\n"
               "1\r\na\r\n0\r\nX-T1: one\r\nX-T2: two\r\n\r\n"),
    S(0x10, 5, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
               "0\r\n\r\n"),
    S(0x10, 9, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    S(0x00, 9, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n"),
    S(0x00, 9, "GET / HTTP/1.1\r\nHost: x\r\nX-Role: user\r\n: admin\r\n\r\n"),
    S(0x09, 1, "HTTP/1.1 20\n:.\x01P/"),
    S(0x30, 1, "GET /ab\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf\xbf.1.\r\n"
               "Host: x\r\nXed"),
    S(0x10, 9, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               "ffffffffffffffffff\r\n"),
    S(0x10, 4, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
    S(0x20, 2, "GET /waytoolongforthelimit HTTP/1.1\r\nHost: x\r\n\r\n"),
    S(0x30, 2, "GET /abc HTTP/1.1\r\nHost: x\r\nX-Big: 0123456789012345678901234567890\r\n\r\n"),
    S(0x00, 11, "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n"),
    S(0x30, 7, "GET /abc HTTP/1.1\r\nHost0123456789012345678901234567890\r\n\r\n"),
    S(0x00, 11, "GET / HTTP/1.1\nHost: x\n\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"),
    S(0x09, 6, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n"
               "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
               "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\nT: 1\r\n\r\n"
               "HTTP/1.0 200 OK\r\n\r\nclose-delimited"),
    S(0x0d, 6, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
               "HTTP/1.1 204 No Content\r\n\r\n"),
    S(0x09, 8, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n0\r\n\r\n"),
    S(0x09, 8, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    S(0x09, 8, "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    S(0x09, 8, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
    S(0x0b, 8, "HTTP/1.1 200 OK\r\nX: \x00y\r\n\r\n"),
};

/* Runs one input file in its own mode, and in every mode of byte 0. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    if (n >= 2)
        for (unsigned ctl = 0; ctl < 256; ctl++) {
            buf[0] = (unsigned char)ctl;
            LLVMFuzzerTestOneInput(buf, n);
        }
    return 0;
}

/* A file, or every file in a directory (the checked-in seed corpus). */
static int run_path(const char *path, int *nfiles)
{
    DIR *d = opendir(path);
    if (d == NULL) {
        (*nfiles)++;
        return run_file(path);
    }
    int bad = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        (*nfiles)++;
        bad |= run_file(p);
    }
    closedir(d);
    return bad;
}

int main(int argc, char **argv)
{
    int bad = 0, nfiles = 0;
    for (int i = 1; i < argc; i++)
        bad |= run_path(argv[i], &nfiles);
    for (size_t i = 0; i < sizeof SEEDS / sizeof SEEDS[0]; i++) {
        static unsigned char buf[4096];
        const struct seed *s = &SEEDS[i];
        buf[0] = s->ctl;
        buf[1] = s->seed;
        memcpy(buf + 2, s->s, s->n);
        /* each seed also in every mode and with every split seed 0..15 */
        for (unsigned ctl = 0; ctl < 256; ctl++)
            for (unsigned sd = 0; sd < 16; sd++) {
                buf[0] = (unsigned char)ctl;
                buf[1] = (unsigned char)(sd ? sd : s->seed);
                LLVMFuzzerTestOneInput(buf, s->n + 2);
            }
    }
    printf("fuzz_http1: %zu seeds in 256 modes x 16 splits, %d files in 256 modes: ok\n",
           sizeof SEEDS / sizeof SEEDS[0], nfiles);
    return bad;
}
#endif
