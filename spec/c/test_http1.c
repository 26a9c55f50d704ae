/* Unit tests for core/http1 (llhttp glue), request and response mode.
 *
 * Every message is parsed into a transcript (head line, headers, body,
 * "done") and each input is fed three ways: in one piece, one byte at a
 * time, and split in two at every possible offset. The transcript must be
 * the same every time: a name, value or URL that spans two reads must come
 * out whole. The feeding loop behaves like conn: bytes left over after a
 * pause are fed again after mg_h1_resume. */
#include "http1.h"
#include "mgtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct opts {
    int type;             /* HTTP_REQUEST or HTTP_RESPONSE */
    size_t max_uri, max_header;
    int head_ret;         /* what on_head returns (1 = no body, as for HEAD) */
    int done_ret;         /* what on_done returns (0 = pause, 1 = go on) */
    int no_body_204_304;  /* on_head returns 1 for 204/304, as proxy.c does */
    int eof;              /* call mg_h1_eof once all input is fed */
    int us;               /* underscore_headers policy (MG_H1_US_*), requests */
    int keep_trailers;    /* give the parser a trailer store (conn.c does) */
} opts_t;

static const opts_t REQ = { .type = HTTP_REQUEST };
static const opts_t RESP = { .type = HTTP_RESPONSE };

typedef struct rec {
    mg_h1_head_t head;
    mg_h1_head_t trailers;
    const opts_t *o;
    char log[16384];
    size_t loglen;
    char body[4096];
    size_t bodylen;
    int ndone;
    /* the head as on_head saw it, to notice later changes */
    const char *seen_base;
    size_t seen_len;
    int seen_nhdrs;
    char seen_fields[4096];
} rec_t;

static void logf_(rec_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(rec_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->log + r->loglen, sizeof r->log - r->loglen, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->loglen += (size_t)n < sizeof r->log - r->loglen ? (size_t)n
                                                            : sizeof r->log - r->loglen - 1;
}

/* The head's fields as text, to compare what on_head saw with what the
 * owner sees later. */
static void dump_fields(const mg_h1_head_t *h, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < h->nhdrs && k < cap; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        int w = snprintf(out + k, cap - k, "%.*s=[%.*s]\n", (int)n.n, n.p, (int)v.n, v.p);
        if (w < 0)
            break;
        k += (size_t)w;
    }
}

static mg_h1_head_t *cb_begin(void *ud)
{
    rec_t *r = ud;
    r->bodylen = 0;
    return &r->head;
}

static int cb_head(void *ud, mg_h1_head_t *h)
{
    rec_t *r = ud;
    if (r->o->type == HTTP_REQUEST) {
        mg_str_t u = mg_h1_url(h);
        logf_(r, "%s %.*s %d.%d", llhttp_method_name((llhttp_method_t)h->method), (int)u.n, u.p,
              h->http_major, h->http_minor);
    } else {
        logf_(r, "%d %.*s %d.%d", h->status, (int)h->reason_len, h->store.base + h->reason_off,
              h->http_major, h->http_minor);
    }
    if (h->flags & MG_H1_HAS_CL)
        logf_(r, " CL=%llu", (unsigned long long)h->content_length);
    if (h->flags & MG_H1_CHUNKED)
        logf_(r, " CHUNKED");
    if (h->flags & MG_H1_HAS_TE)
        logf_(r, " TE");
    if (h->flags & MG_H1_KEEPALIVE)
        logf_(r, " KA");
    if (h->flags & MG_H1_EXPECT_100)
        logf_(r, " EXPECT100");
    logf_(r, "\n");
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        logf_(r, "%.*s=[%.*s]\n", (int)n.n, n.p, (int)v.n, v.p);
    }
    r->seen_base = h->store.base;
    r->seen_len = h->store.len;
    r->seen_nhdrs = h->nhdrs;
    dump_fields(h, r->seen_fields, sizeof r->seen_fields);
    if (r->o->no_body_204_304 && (h->status == 204 || h->status == 304))
        return 1;
    return r->o->head_ret;
}

static int cb_body(void *ud, const char *p, size_t n)
{
    rec_t *r = ud;
    if (r->bodylen + n > sizeof r->body)
        return -1;
    memcpy(r->body + r->bodylen, p, n);
    r->bodylen += n;
    return 0;
}

static int cb_done(void *ud)
{
    rec_t *r = ud;
    if (r->bodylen)
        logf_(r, "body=[%.*s]\n", (int)r->bodylen, r->body);
    for (int i = 0; i < r->trailers.nhdrs; i++) {
        mg_str_t n = mg_h1_name(&r->trailers, i), v = mg_h1_value(&r->trailers, i);
        logf_(r, "trailer %.*s=[%.*s]\n", (int)n.n, n.p, (int)v.n, v.p);
    }
    mg_h1_head_reset(&r->trailers);
    /* The owner still holds views into the head: it must not have moved
     * or grown since on_head (chunked trailers, for instance). */
    if (r->head.store.base != r->seen_base || r->head.store.len != r->seen_len ||
        r->head.nhdrs != r->seen_nhdrs)
        logf_(r, "head changed after on_head (%d -> %d headers)\n", r->seen_nhdrs,
              r->head.nhdrs);
    else {
        static char now[sizeof r->seen_fields];
        dump_fields(&r->head, now, sizeof now);
        if (strcmp(now, r->seen_fields) != 0)
            logf_(r, "fields changed after on_head:\n%s", now);
    }
    logf_(r, "done\n");
    r->ndone++;
    return r->o->done_ret; /* by default pause after every message, as conn does */
}

static mg_h1_head_t *cb_trailers(void *ud)
{
    rec_t *r = ud;
    return r->o->keep_trailers ? &r->trailers : NULL;
}

static const mg_h1_cb_t CB = { cb_begin, cb_head, cb_body, cb_done, cb_trailers };

/* Parses `in`, delivered in reads of `first` bytes then `step` bytes (0 =
 * all the rest), into r->log. Returns the error status or 0. */
static int parse(const opts_t *o, const char *in, size_t n, size_t first, size_t step, rec_t *r)
{
    mg_h1_t h;
    memset(r, 0, sizeof *r);
    r->o = o;
    mg_h1_init(&h, o->type, &CB, r, o->max_uri, o->max_header);
    h.underscores = (unsigned char)o->us;
    size_t off = 0, avail = 0;
    int reads = 0, guard = 0;
    while (off < n) {
        if (off == avail) { /* everything received so far is consumed: read more */
            size_t want = reads == 0 && first ? first : step ? step : n - avail;
            avail += want < n - avail ? want : n - avail;
            reads++;
        }
        ssize_t got = mg_h1_feed(&h, in + off, avail - off);
        if (got < 0) {
            /* the body delivered before the error: it stops at the first
             * wrong byte however the bytes arrive */
            if (r->bodylen)
                logf_(r, "partial=[%.*s]\n", (int)r->bodylen, r->body);
            logf_(r, "error %d %s\n", h.err_status, h.err_reason ? h.err_reason : "?");
            mg_h1_head_free(&r->head);
            mg_h1_head_free(&r->trailers);
            return h.err_status;
        }
        off += (size_t)got;
        if (mg_h1_is_paused(&h)) {
            /* paused: the rest of this read waits, and feeding is a no-op */
            if (avail > off && mg_h1_feed(&h, in + off, avail - off) != 0)
                logf_(r, "feed while paused consumed bytes\n");
            mg_h1_resume(&h);
        } else if (off != avail) {
            logf_(r, "short read without a pause\n");
            break;
        }
        if (++guard > 1000000) {
            logf_(r, "no progress\n");
            break;
        }
    }
    if (o->eof) {
        int rc = mg_h1_eof(&h);
        logf_(r, "eof %d\n", rc);
        if (mg_h1_is_paused(&h))
            mg_h1_resume(&h);
    }
    mg_h1_head_free(&r->head);
    mg_h1_head_free(&r->trailers);
    return 0;
}

/* True if `in` gives the transcript `want` fed whole, byte by byte and
 * split in two at every offset. `loud` prints the first difference. */
static int same_everywhere(const opts_t *o, const char *in, size_t n, const char *want, int loud)
{
    static rec_t r; /* big: keep it off the stack */
    for (size_t k = 0; k <= n; k++) {
        /* k == 0: whole, then k == n: byte by byte, else split at k */
        if (k == n)
            parse(o, in, n, 0, 1, &r);
        else
            parse(o, in, n, k, 0, &r);
        if (strcmp(r.log, want) != 0) {
            if (loud) {
                fprintf(stderr, "     fed %s (%zu bytes)\n     got\n%s     want\n%s",
                        k == 0 ? "whole" : k == n ? "byte by byte" : "in two", n, r.log, want);
                if (k && k < n)
                    fprintf(stderr, "     (split at %zu)\n", k);
            }
            return 0;
        }
    }
    return 1;
}
#define EXPECT(o, in, want)                                                                \
    mgt_report(same_everywhere((o), (in), sizeof(in) - 1, (want), 1), __FILE__, __LINE__,  \
               "same transcript however the input is split")

/* The status `in` is refused with, fed whole and byte by byte (-1 when the
 * two differ), or 0 when it parses. */
static int refusal_n(const opts_t *o, const char *in, size_t n)
{
    static rec_t r;
    int whole = parse(o, in, n, 0, 0, &r);
    int bytes = parse(o, in, n, 0, 1, &r);
    return whole == bytes ? whole : -1;
}
#define REFUSAL(o, in) refusal_n((o), (in), sizeof(in) - 1)
#define EXPECT_ERROR(o, in, status)                                                        \
    do {                                                                                   \
        int st_ = REFUSAL(o, in);                                                          \
        if (!mgt_report(st_ == (status), __FILE__, __LINE__, "refused with " #status))     \
            fprintf(stderr, "     got %d for: %s\n", st_, (in));                           \
    } while (0)

/* --- requests --------------------------------------------------------- */

static void test_simple_get(void)
{
    EXPECT(&REQ, "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1.0\r\n\r\n",
           "GET /a/b?c=d 1.1 KA\n"
           "Host=[example.com]\n"
           "User-Agent=[t/1.0]\n"
           "done\n");
}

static void test_head_accessors(void)
{
    static const char in[] = "GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
    rec_t *r = calloc(1, sizeof *r);
    mg_h1_t h;
    r->o = &REQ;
    mg_h1_init(&h, HTTP_REQUEST, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, in, sizeof in - 1), sizeof in - 1);
    CHECK(mg_h1_is_paused(&h));
    mg_h1_head_t *hd = &r->head;
    CHECK_INT(hd->method, HTTP_GET);
    CHECK_INT(hd->nhdrs, 3);
    CHECK_INT(hd->host_count, 1);
    CHECK_INT(mg_h1_find(hd, "x-a", 3, 0), 1);
    CHECK_INT(mg_h1_find(hd, "X-A", 3, 2), 2);
    CHECK_INT(mg_h1_find(hd, "x-b", 3, 0), -1);
    CHECK_INT(mg_h1_find(hd, "HOST", 4, 0), 0);
    mg_str_t v = mg_h1_value(hd, 2);
    CHECK_MEM(v.p, v.n, "2");
    mg_h1_head_reset(hd);
    CHECK_INT(hd->nhdrs, 0);
    CHECK_INT(hd->store.len, 0);
    mg_h1_head_free(hd);
    mg_h1_head_free(hd); /* idempotent */
    mg_h1_head_free(NULL);
    free(r);
}

static void test_pipelining(void)
{
    static const char in[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                             "POST /2 HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nxyz";
    const size_t first = strlen("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    rec_t *r = calloc(1, sizeof *r);
    mg_h1_t h;
    r->o = &REQ;
    mg_h1_init(&h, HTTP_REQUEST, &CB, r, 0, 0);
    ssize_t got = mg_h1_feed(&h, in, sizeof in - 1);
    CHECK_INT(got, first); /* stops right after the first message */
    CHECK(mg_h1_is_paused(&h));
    CHECK_INT(r->ndone, 1);
    CHECK_INT(mg_h1_feed(&h, in + got, sizeof in - 1 - (size_t)got), 0); /* still paused */
    CHECK_INT(r->ndone, 1);
    mg_h1_resume(&h);
    CHECK(!mg_h1_is_paused(&h));
    CHECK_INT(mg_h1_feed(&h, in + got, sizeof in - 1 - (size_t)got), sizeof in - 1 - first);
    CHECK_INT(r->ndone, 2);
    CHECK_STR(r->log, "GET /1 1.1 KA\nHost=[a]\ndone\n"
                      "POST /2 1.1 CL=3 KA\nHost=[b]\nContent-Length=[3]\nbody=[xyz]\ndone\n");
    mg_h1_head_free(&r->head);
    free(r);

    /* the same through the split-everywhere driver, three requests */
    EXPECT(&REQ,
           "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
           "GET /2 HTTP/1.1\r\nHost: b\r\n\r\n"
           "DELETE /3 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
           "GET /1 1.1 KA\nHost=[a]\ndone\n"
           "GET /2 1.1 KA\nHost=[b]\ndone\n"
           "DELETE /3 1.1\nHost=[c]\nConnection=[close]\ndone\n");
}

static void test_on_done_continue(void)
{
    /* on_done returning 1 goes straight on with the next message */
    static const char in[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    opts_t o = REQ;
    o.done_ret = 1;
    rec_t *r = calloc(1, sizeof *r);
    mg_h1_t h;
    r->o = &o;
    mg_h1_init(&h, HTTP_REQUEST, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, in, sizeof in - 1), sizeof in - 1);
    CHECK(!mg_h1_is_paused(&h));
    CHECK_INT(r->ndone, 2);
    mg_h1_head_free(&r->head);
    free(r);
}

static void test_content_length_body(void)
{
    EXPECT(&REQ, "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
           "POST /u 1.1 CL=11 KA\nHost=[x]\nContent-Length=[11]\nbody=[hello world]\ndone\n");
    EXPECT(&REQ, "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
           "POST /u 1.1 CL=0 KA\nHost=[x]\nContent-Length=[0]\ndone\n");
}

static void test_chunked_body(void)
{
    EXPECT(&REQ,
           "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\n"
           "5;name=value\r\n worl\r\n"
           "1;q=\"quoted;ext\"\r\nd\r\n"
           "A\r\n0123456789\r\n"
           "0\r\n\r\n",
           "POST /c 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\n"
           "body=[hello world0123456789]\ndone\n");
    /* an empty chunked body; "Chunked" compared case-insensitively */
    EXPECT(&REQ, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
           "POST /c 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[Chunked]\ndone\n");
}

static void test_chunked_trailers(void)
{
    /* Small trailers are read and dropped; the body is intact. */
    static rec_t r;
    static const char small[] = "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n"
                                "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(parse(&REQ, small, sizeof small - 1, 0, 1, &r), 0);
    CHECK_INT(r.ndone, 2);
    CHECK_CONTAINS(r.log, "body=[hi]");
    CHECK_CONTAINS(r.log, "GET /next");

    /* Trailer fields arrive after on_head, while the owner holds views
     * into the head (req->path, req->query). They must not be appended to
     * it: with enough trailer bytes the 256-byte store is reallocated and
     * those views dangle. Known bug: span() keeps writing to h->head until
     * on_message_complete. */
    static const char big_trailers[] =
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\nhi\r\n0\r\n"
        "X-Trailer-1: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
        "X-Trailer-2: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
        "X-Trailer-3: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\r\n"
        "X-Trailer-4: dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\r\n"
        "\r\n";
    /* A trailer field's end must not touch the head either: it used to
     * empty the value of the head's last field, so a plugin that read the
     * body (req:body()) then saw, and proxied, that header empty. */
    EXPECT(&REQ,
           "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Last: keep  \r\n\r\n"
           "2\r\nhi\r\n0\r\nX-T: 1\r\nX-U:\r\n\r\n",
           "POST /t 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\nX-Last=[keep]\n"
           "body=[hi]\ndone\n");
    CHECK_KNOWN_FIXED(same_everywhere(&REQ, big_trailers, sizeof big_trailers - 1,
                              "POST /t 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\n"
                              "body=[hi]\ndone\n",
                              0),
              "http1.c span(): chunked trailers are appended to the head after on_head, "
              "moving head->store");
}

static void test_chunked_trailers_kept(void)
{
    /* With a trailer store the fields land there, whole however the bytes
     * arrive, values trimmed, the head untouched; the next message starts
     * with none. */
    static const opts_t keep = { .type = HTTP_REQUEST, .keep_trailers = 1 };
    EXPECT(&keep,
           "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Last: keep\r\n\r\n"
           "2\r\nhi\r\n0\r\nX-Checksum: abc  \r\nGrpc-Status: 0\r\nX-E:\r\n\r\n"
           "GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
           "POST /t 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\nX-Last=[keep]\n"
           "body=[hi]\ntrailer X-Checksum=[abc]\ntrailer Grpc-Status=[0]\ntrailer X-E=[]\n"
           "done\nGET /n 1.1 KA\nHost=[x]\ndone\n");
    /* a bad trailer name is refused as a bad header name is */
    EXPECT_ERROR(&keep,
                 "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "0\r\nBad Name: v\r\n\r\n",
                 400);
}

static void test_obs_fold(void)
{
    /* A folded header line (obs-fold) is refused (RFC 9112 5.2 allows a
     * 400 or a rewrite to SP): llhttp 8.1 joins it into the value. */
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\tthree\r\n\r\n",
           "error 400 obsolete line folding in request head\n");
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n",
           "error 400 obsolete line folding in request head\n");
    /* whitespace before the first field line is the same thing */
    EXPECT(&REQ, "GET / HTTP/1.1\r\n Host: x\r\n\r\n",
           "error 400 obsolete line folding in request head\n");
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n \r\n\r\n",
           "error 400 obsolete line folding in request head\n");
}

static void test_header_values(void)
{
    EXPECT(&REQ,
           "GET / HTTP/1.1\r\n"
           "Host: x\r\n"
           "X-Empty:\r\n"
           "X-Blank:    \r\n"
           "X-Trail: value \t \r\n"
           "X-Lead:\t  lead\r\n"
           "X-Inner: a  b\r\n"
           "X-Last: z\r\n"
           "\r\n",
           "GET / 1.1 KA\nHost=[x]\nX-Empty=[]\nX-Blank=[]\nX-Trail=[value]\n"
           "X-Lead=[lead]\nX-Inner=[a  b]\nX-Last=[z]\ndone\n");
}

static void test_keepalive_flags(void)
{
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET / 1.1 KA\nHost=[x]\ndone\n");
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
           "GET / 1.1\nHost=[x]\nConnection=[close]\ndone\n");
    EXPECT(&REQ, "GET / HTTP/1.0\r\n\r\n", "GET / 1.0\ndone\n");
    EXPECT(&REQ, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
           "GET / 1.0 KA\nConnection=[keep-alive]\ndone\n");
    EXPECT(&REQ, "GET / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
           "GET / 1.0 KA\nHost=[x]\nConnection=[Keep-Alive]\ndone\n");
}

static void test_expect_100(void)
{
    EXPECT(&REQ,
           "PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
           "PUT /e 1.1 CL=2 KA EXPECT100\nHost=[x]\nExpect=[100-continue]\n"
           "Content-Length=[2]\nbody=[ok]\ndone\n");
    EXPECT(&REQ, "PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n",
           "PUT /e 1.1 KA EXPECT100\nHost=[x]\nExpect=[100-Continue]\ndone\n");
    EXPECT(&REQ, "PUT /e HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n",
           "PUT /e 1.1 KA\nHost=[x]\nExpect=[something]\ndone\n");
}

/* --- size limits ------------------------------------------------------ */

static char big[1 << 16];

/* "GET /<ulen bytes> HTTP/1.1" + Host + nh headers "X-Hnnn: v". */
static size_t build(size_t ulen, int nh, size_t vlen)
{
    size_t n = 0;
    n += (size_t)sprintf(big + n, "GET /");
    memset(big + n, 'u', ulen);
    n += ulen;
    n += (size_t)sprintf(big + n, " HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < nh; i++) {
        n += (size_t)sprintf(big + n, "X-H%03d: ", i);
        memset(big + n, 'v', vlen);
        n += vlen;
        n += (size_t)sprintf(big + n, "\r\n");
    }
    n += (size_t)sprintf(big + n, "\r\n");
    return n;
}

static void test_max_uri(void)
{
    opts_t o = REQ;
    o.max_uri = 64;
    o.max_header = 4096;
    static rec_t r;
    size_t n = build(63, 0, 0); /* "/" + 63 = 64 bytes: at the limit */
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 0);
    CHECK_INT(r.ndone, 1);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 0);
    n = build(64, 0, 0); /* 65 bytes */
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 414);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 414);
    CHECK_INT(parse(&o, big, n, 7, 0, &r), 414);
}

static void test_max_header(void)
{
    opts_t o = REQ;
    o.max_uri = 1024;
    o.max_header = 1024;
    static rec_t r;
    size_t n = build(10, 10, 40); /* about 550 bytes */
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 0);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 0);
    n = build(10, 30, 40); /* about 1500 bytes */
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 431);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 431);
    /* one huge header value */
    n = build(10, 1, 2000);
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 431);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 431);
}

static void test_414_wins_over_431(void)
{
    /* The URI alone is over max_uri and the whole head is over
     * max_header: the answer is 414 (PRODUCT.md "Errors users see"). */
    opts_t o = REQ;
    o.max_uri = 100;
    o.max_header = 300;
    static rec_t r;
    size_t n = build(200, 20, 40);
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 414);
    CHECK_INT(parse(&o, big, n, 0, 1, &r), 414);
    CHECK_INT(parse(&o, big, n, 150, 0, &r), 414);
}

static void test_414_wins_when_header_limit_is_smaller(void)
{
    /* max_header below max_uri, URI over both (a legal config: the loader
     * only asks max_header >= 256 and max_uri >= 16). 414 whole; the same
     * bytes in smaller reads must give the same answer. */
    opts_t o = REQ;
    o.max_uri = 600;
    o.max_header = 400;
    static rec_t r;
    size_t n = build(700, 0, 0);
    CHECK_INT(parse(&o, big, n, 0, 0, &r), 414);
    /* Known bug: span() checks max_header on every URL piece, so once more
     * than max_header URL bytes have arrived in earlier reads it answers 431
     * before the URL reaches max_uri. */
    CHECK_KNOWN_FIXED(parse(&o, big, n, 0, 1, &r) == 414,
              "http1.c span(): 431 instead of 414 when the URI arrives in several reads "
              "and max_header_bytes < max_uri_bytes");
    CHECK_KNOWN_FIXED(parse(&o, big, n, 512, 0, &r) == 414,
              "http1.c span(): 431 instead of 414 when the URI arrives in several reads "
              "and max_header_bytes < max_uri_bytes");
}

static void test_too_many_headers(void)
{
    static rec_t r;
    size_t n = build(1, MG_H1_MAX_HEADERS - 1, 1); /* + Host = the maximum */
    CHECK_INT(parse(&REQ, big, n, 0, 0, &r), 0);
    CHECK_INT(r.ndone, 1);
    n = build(1, MG_H1_MAX_HEADERS, 1);
    CHECK_INT(parse(&REQ, big, n, 0, 0, &r), 431);
    CHECK_INT(parse(&REQ, big, n, 0, 1, &r), 431);
    CHECK_CONTAINS(r.log, "too many header fields");
}

/* --- malformed and smuggling ------------------------------------------ */

static void test_smuggling(void)
{
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Length: 5\r\n\r\n0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                 "abcd",
                 400);
    EXPECT_ERROR(&REQ, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", 400);
    EXPECT_ERROR(&REQ, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1a\r\n\r\n", 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                 "0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                 "0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    /* llhttp does not take "chunked<TAB>" as chunked (no body, the rest is
     * a second request) while the value, trimmed, looked like "chunked" */
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                 "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t \r\n\r\n"
                 "0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                 "0\r\n\r\n",
                 400);
    EXPECT_ERROR(&REQ,
                 "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                 "hello\r\n0\r\n\r\n",
                 400);
    static rec_t r;
    static const char te10[] = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    parse(&REQ, te10, sizeof te10 - 1, 0, 0, &r);
    CHECK_CONTAINS(r.log, "transfer-encoding in HTTP/1.0");
}

static void test_host_rules(void)
{
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400);
    EXPECT(&REQ, "GET / HTTP/1.0\r\n\r\n", "GET / 1.0\ndone\n"); /* 1.0 needs no Host */
    static rec_t r;
    static const char two[] = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    parse(&REQ, two, sizeof two - 1, 0, 0, &r);
    CHECK_CONTAINS(r.log, "duplicate host header");
}

static void test_malformed(void)
{
    EXPECT_ERROR(&REQ, "GETT / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400);    /* space before colon */
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400); /* NUL */
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-\0A: 1\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400); /* TLS hello */
}

static void test_space_in_header_name(void)
{
    /* A field name is a token: no whitespace inside it (RFC 9112 5.1).
     * llhttp 8.1 lets "Transfer Encoding" through as an ordinary header, and
     * the proxy forwards it as is. Known bug: nothing in http1.c checks the
     * name. */
    CHECK_KNOWN_FIXED(REFUSAL(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n") == 400,
              "http1.c: header name with an inner space accepted");
    CHECK_KNOWN_FIXED(REFUSAL(&REQ, "POST / HTTP/1.1\r\nHost: x\r\nTransfer Encoding: chunked\r\n"
                            "Content-Length: 3\r\n\r\nabc") == 400,
              "http1.c: 'Transfer Encoding' (space) accepted next to Content-Length");
}

static void test_empty_header_name(void)
{
    /* llhttp 8.1 accepts a field line with an empty name; it used to be
     * kept as a field named "" (passed on to the upstream), and the value
     * after it could extend the field before it */
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-Role: user\r\n: admin\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n:admin\r\n\r\n", 400);
    EXPECT_ERROR(&REQ, "GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 200 OK\r\nX-Role: user\r\n: admin\r\nContent-Length: 0\r\n\r\n",
                 400);
    /* trailers are dropped whatever their names */
    EXPECT(&REQ,
           "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: 1\r\n\r\n",
           "POST / 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\nbody=[a]\ndone\n");
}

static void test_bare_lf(void)
{
    /* A line ends with CRLF and nothing else (RFC 9112 2.2 lets a server
     * take a bare LF; a proxy in front of one that does not must not). */
    static const char want[] = "error 400 bare LF in request head\n";
    EXPECT(&REQ, "GET / HTTP/1.1\nHost: x\n\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\nHost: x\r\n\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\n\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\nX-B: 2\r\n\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n", want);
    EXPECT(&REQ, "\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", want);
    EXPECT(&REQ, "GET /a\nb HTTP/1.1\r\nHost: x\r\n\r\n", want);
    /* after a good message, the next one is refused at its own bad byte */
    EXPECT(&REQ, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\n",
           "GET /1 1.1 KA\nHost=[x]\ndone\nerror 400 bare LF in request head\n");
}

static void test_bare_cr(void)
{
    /* A CR not followed by LF, anywhere in a head: 400 (RFC 9112 2.2).
     * llhttp 8.1 ended the head at "\r\n\r" and parsed what followed as
     * the next request (issue 11). */
    static const char want[] = "error 400 bare CR in request head\n";
    EXPECT(&REQ,
           "POST / HTTP/1.1\r\nHost: x\r\nFoo: bar\r\n\rTransfer-Encoding: chunked\r\n"
           "Content-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
           want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n\rX", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n\r\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\r\n\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\rHost: x\r\n\r\n", want);
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", want);
    /* inside a name llhttp refuses the CR itself */
    EXPECT(&REQ, "GET / HTTP/1.1\r\nHost: x\r\nX-A\r: a\r\n\r\n", "error 400 invalid header\n");
    EXPECT(&REQ, "GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n", want);
    EXPECT(&REQ, "\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", want);
    EXPECT(&REQ, "\r\n\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", want);
    /* a CR at the very end of what has arrived waits for the next byte */
    static rec_t r;
    CHECK_INT(parse(&REQ, "GET / HTTP/1.1\r\nHost: x\r\n\r", 26, 0, 0, &r), 0);
    CHECK_STR(r.log, "");
}

static void test_empty_lines_before_request(void)
{
    /* CRLFs before a request line are skipped (RFC 9112 2.2), also between
     * pipelined requests; only whole CRLFs */
    EXPECT(&REQ, "\r\n\r\nGET /1 HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
           "GET /1 1.1 KA\nHost=[x]\ndone\nGET /2 1.1 KA\nHost=[x]\ndone\n");
}

#define CHUNKED_HEAD "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
#define CHUNKED_LOG "POST /c 1.1 CHUNKED TE KA\nHost=[x]\nTransfer-Encoding=[chunked]\n"

static void test_chunked_strict_ok(void)
{
    /* what RFC 9112 7.1 allows (and llhttp 8.1 takes) still parses, and
     * the next request after it too */
    EXPECT(&REQ,
           CHUNKED_HEAD "5;c=\"d e\";a=b\r\nhello\r\n00A\r\n0123456789\r\n0\r\n\r\n"
                        "GET /n HTTP/1.1\r\nHost: y\r\n\r\n",
           CHUNKED_LOG "body=[hello0123456789]\ndone\nGET /n 1.1 KA\nHost=[y]\ndone\n");
    EXPECT(&REQ,
           CHUNKED_HEAD "1;e\r\na\r\n0;last=1\r\nT-1: v\r\nT-2:\r\n\r\n"
                        "POST /n HTTP/1.1\r\nHost: y\r\nContent-Length: 2\r\n\r\nhi",
           CHUNKED_LOG "body=[a]\ndone\nPOST /n 1.1 CL=2 KA\nHost=[y]\nContent-Length=[2]\n"
                       "body=[hi]\ndone\n");
    /* llhttp 8.1 itself refuses an extension after a token value (RFC
     * 9112 allows it): a 400, never a different framing */
    EXPECT(&REQ, CHUNKED_HEAD "5;a=b;c=d\r\nhello\r\n0\r\n\r\n",
           CHUNKED_LOG "error 400 invalid chunk size\n");
}

static void test_chunked_strict_refused(void)
{
    /* issue 11: two bytes after the data that are not CRLF */
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAAXXc\r\n17\r\nAAAABBBB\r\n0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    /* PortSwigger's permutations: TERM.SPILL and SPILL.TERM (the data
     * followed by XX, \rX or \r\r, then CRLF or not) */
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAAXX\r\n0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\rX\r\n0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\r\r\n0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAAXX0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\rX0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\r\r0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    /* ONE.TWO / TWO.ONE: a lone LF or CR for the size line's or the
     * data's CRLF */
    EXPECT(&REQ, CHUNKED_HEAD "5\nAAAAA\r\n0\r\n\r\n",
           CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\rAAAAA\r\n0\r\n\r\n",
           CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\n0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    EXPECT(&REQ, CHUNKED_HEAD "5\r\nAAAAA\r0\r\n\r\n",
           CHUNKED_LOG "partial=[AAAAA]\nerror 400 chunk data not followed by CRLF\n");
    /* ZERO.TWO / TWO.ZERO: a last chunk, or data, whose ends are short */
    EXPECT(&REQ, CHUNKED_HEAD "0\r\n\rX",
           CHUNKED_LOG "error 400 invalid chunked trailer\n");
    EXPECT(&REQ, CHUNKED_HEAD "0\n\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "2\r\nAB0\r\n\r\n",
           CHUNKED_LOG "partial=[AB]\nerror 400 chunk data not followed by CRLF\n");
    /* size lines */
    EXPECT(&REQ, CHUNKED_HEAD "\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "-5\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "0x5\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "+5\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "10000000000000000\r\nhello\r\n0\r\n\r\n",
           CHUNKED_LOG "error 400 chunk size too large\n");
    /* extensions: a bare CR or LF, a control byte, an unterminated or bad
     * quoted string, "=" without a value */
    EXPECT(&REQ, CHUNKED_HEAD "5;a\rb\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk size line\n");
    EXPECT(&REQ, CHUNKED_HEAD "5;a\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk extension\n");
    EXPECT(&REQ, CHUNKED_HEAD "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
           CHUNKED_LOG "error 400 invalid chunk extension\n");
    EXPECT(&REQ, CHUNKED_HEAD "5;a=\"b\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk extension\n");
    EXPECT(&REQ, CHUNKED_HEAD "5;a=\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk extension\n");
    EXPECT(&REQ, CHUNKED_HEAD "5;=b\r\nhello\r\n0\r\n\r\n", CHUNKED_LOG "error 400 invalid chunk extension\n");
    /* trailers: bare LF, bare CR, folding, a bad name, no final CRLF */
    EXPECT(&REQ, CHUNKED_HEAD "0\r\nT: 1\n\r\n", CHUNKED_LOG "error 400 invalid chunked trailer\n");
    EXPECT(&REQ, CHUNKED_HEAD "0\r\nT: 1\rX\r\n\r\n", CHUNKED_LOG "error 400 invalid chunked trailer\n");
    EXPECT(&REQ, CHUNKED_HEAD "0\r\nT: 1\r\n 2\r\n\r\n", CHUNKED_LOG "error 400 invalid chunked trailer\n");
    EXPECT(&REQ, CHUNKED_HEAD "0\r\nT U: 1\r\n\r\n", CHUNKED_LOG "error 400 invalid chunked trailer\n");
    EXPECT(&REQ, CHUNKED_HEAD "0\r\n\r\r\n", CHUNKED_LOG "error 400 invalid chunked trailer\n");
}

static void test_h1frame_direct(void)
{
    /* the checker alone: where it stops, fed whole and byte by byte */
    static const struct {
        int head;
        const char *in;
        int st;
        size_t used;
    } cases[] = {
        { 1, "GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT", MG_H1F_END, 27 },
        { 1, "\r\nGET / HTTP/1.1\r\n\r\n", MG_H1F_END, 20 },
        { 1, "GET / HTTP/1.1\r\nHost: x\r\n", MG_H1F_MORE, 25 },
        { 1, "GET / HTTP/1.1\r\nHo\nst: x\r\n", MG_H1F_BAD, 18 },
        { 1, "GET / HTTP/1.1\r\nHost: x\r\n\rX", MG_H1F_BAD, 26 },
        { 0, "5\r\nhello\r\n0\r\n\r\nX", MG_H1F_END, 15 },
        { 0, "5\r\nhelloXX", MG_H1F_BAD, 8 },
        { 0, "5\r\nhel", MG_H1F_MORE, 6 },
        { 0, "0\r\nA: b\r\n\r\n", MG_H1F_END, 11 },
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
        const char *in = cases[i].in;
        size_t n = strlen(in);
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            mg_h1f_t f;
            if (cases[i].head)
                mg_h1f_head_start(&f);
            else
                mg_h1f_chunked_start(&f);
            size_t off = 0, used = 0;
            int st = MG_H1F_MORE;
            while (off < n && st == MG_H1F_MORE) {
                size_t k = bytewise ? 1 : n - off;
                st = cases[i].head ? mg_h1f_head(&f, in + off, k, &used)
                                   : mg_h1f_chunked(&f, in + off, k, &used);
                off += used;
            }
            CHECK_INT(st, cases[i].st);
            CHECK_INT(off, cases[i].used);
            if (st == MG_H1F_BAD)
                CHECK(f.why != NULL);
        }
    }
}

static void test_underscore_headers(void)
{
    static const char in[] = "POST / HTTP/1.1\r\nHost: x\r\nX_A: 1\r\nTransfer_Encoding: chunked\r\n"
                             "Content-Length: 2\r\nX-B: 2\r\nLast_One:\r\n\r\nhi";
    opts_t o = REQ;
    o.us = MG_H1_US_ALLOW;
    EXPECT(&o, in,
           "POST / 1.1 CL=2 KA\nHost=[x]\nX_A=[1]\nTransfer_Encoding=[chunked]\n"
           "Content-Length=[2]\nX-B=[2]\nLast_One=[]\nbody=[hi]\ndone\n");
    /* drop: as nginx (underscores_in_headers off), the fields are not there
     * at all, and what follows them is intact */
    o.us = MG_H1_US_DROP;
    EXPECT(&o, in, "POST / 1.1 CL=2 KA\nHost=[x]\nContent-Length=[2]\nX-B=[2]\nbody=[hi]\ndone\n");
    o.us = MG_H1_US_REJECT;
    EXPECT(&o, in, "error 400 underscore in header name\n");
    /* a dropped field still counts against the head size limit */
    o.us = MG_H1_US_DROP;
    o.max_header = 64;
    EXPECT(&o, "GET / HTTP/1.1\r\nHost: x\r\nX_Padding: 01234567890123456789012345678901234567890123456789\r\n\r\n",
           "error 431 request header fields too large\n");
    /* responses are not touched by the policy */
    opts_t ro = RESP;
    ro.us = MG_H1_US_REJECT;
    EXPECT(&ro, "HTTP/1.1 200 OK\r\nX_A: 1\r\nContent-Length: 0\r\n\r\n",
           "200 OK 1.1 CL=0 KA\nX_A=[1]\nContent-Length=[0]\ndone\n");
}

static void test_error_is_sticky(void)
{
    static const char bad[] = "GETT / HTTP/1.1\r\n\r\n";
    static const char good[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    rec_t *r = calloc(1, sizeof *r);
    mg_h1_t h;
    r->o = &REQ;
    mg_h1_init(&h, HTTP_REQUEST, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, bad, sizeof bad - 1), -1);
    CHECK_INT(h.err_status, 400);
    CHECK_STR(h.err_reason, "invalid method");
    CHECK_INT(mg_h1_feed(&h, good, sizeof good - 1), -1);
    CHECK_INT(r->ndone, 0);
    mg_h1_head_free(&r->head);
    free(r);
}

/* --- responses -------------------------------------------------------- */

static void test_response_basic(void)
{
    EXPECT(&RESP, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
           "200 OK 1.1 CL=5 KA\nContent-Length=[5]\nX-A=[b]\nbody=[hello]\ndone\n");
    EXPECT(&RESP, "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n",
           "404 Not Found Here 1.1 CL=0 KA\nContent-Length=[0]\ndone\n");
    EXPECT(&RESP,
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n"
           "0\r\n\r\n",
           "200 OK 1.1 CHUNKED TE KA\nTransfer-Encoding=[chunked]\nbody=[abcde]\ndone\n");
    /* two keep-alive responses back to back */
    EXPECT(&RESP,
           "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
           "HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb",
           "200 OK 1.1 CL=1 KA\nContent-Length=[1]\nbody=[a]\ndone\n"
           "201 Created 1.1 CL=1 KA\nContent-Length=[1]\nbody=[b]\ndone\n");
}

static void test_response_close_delimited(void)
{
    opts_t o = RESP;
    o.eof = 1;
    EXPECT(&o, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
           "200 OK 1.1\nConnection=[close]\nbody=[until the end]\ndone\neof 0\n");
    EXPECT(&o, "HTTP/1.0 200 OK\r\n\r\nold style",
           "200 OK 1.0\nbody=[old style]\ndone\neof 0\n");
    /* cut short: EOF inside a Content-Length body, and inside the head */
    EXPECT(&o, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
           "200 OK 1.1 CL=10 KA\nContent-Length=[10]\neof -1\n");
    EXPECT(&o, "HTTP/1.1 200 OK\r\nContent-Le", "eof -1\n");
}

static void test_eof_between_messages(void)
{
    static const char in[] = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz";
    rec_t *r = calloc(1, sizeof *r);
    mg_h1_t h;
    r->o = &RESP;
    mg_h1_init(&h, HTTP_RESPONSE, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, in, sizeof in - 1), sizeof in - 1);
    CHECK(mg_h1_is_paused(&h));
    CHECK_INT(mg_h1_eof(&h), 0); /* EOF while paused after a complete message */

    /* EOF after the owner resumed, with no byte of a next message: nothing
     * was cut short, so 0. Known bug: llhttp has not yet run its
     * after-message step (it runs on the next execute), llhttp_finish sees
     * the body state and mg_h1_eof says -1. Not reached today (proxy.c
     * re-inits the parser per exchange; conn.c never calls mg_h1_eof). */
    mg_h1_init(&h, HTTP_RESPONSE, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, in, sizeof in - 1), sizeof in - 1);
    mg_h1_resume(&h);
    CHECK_KNOWN_FIXED(mg_h1_eof(&h) == 0,
              "http1.c mg_h1_eof(): -1 after mg_h1_resume() following a complete message");
    /* with a zero-length feed in between it is 0 */
    mg_h1_init(&h, HTTP_RESPONSE, &CB, r, 0, 0);
    CHECK_INT(mg_h1_feed(&h, in, sizeof in - 1), sizeof in - 1);
    mg_h1_resume(&h);
    CHECK_INT(mg_h1_feed(&h, in, 0), 0);
    CHECK_INT(mg_h1_eof(&h), 0);
    mg_h1_head_free(&r->head);
    free(r);
}

static void test_response_no_body(void)
{
    /* 204 and 304 have no body whatever they say. llhttp 8.1 leaves that
     * to the owner (a 304 with Content-Length would be read as a body), so
     * the owner's on_head returns 1 for them, as proxy.c does; the bytes
     * after the head are the next response. */
    opts_t o = RESP;
    o.no_body_204_304 = 1;
    EXPECT(&o,
           "HTTP/1.1 204 No Content\r\n\r\n"
           "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
           "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
           "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
           "204 No Content 1.1 KA\ndone\n"
           "304 Not Modified 1.1 CL=5 KA\nContent-Length=[5]\ndone\n"
           "204 No Content 1.1 CHUNKED TE KA\nTransfer-Encoding=[chunked]\ndone\n"
           "200 OK 1.1 CL=2 KA\nContent-Length=[2]\nbody=[ok]\ndone\n");
    /* Without a length, llhttp itself knows 204/304 end at the head. */
    EXPECT(&RESP,
           "HTTP/1.1 204 No Content\r\n\r\n"
           "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
           "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
           "204 No Content 1.1 KA\ndone\n"
           "304 Not Modified 1.1 KA\nETag=[\"x\"]\ndone\n"
           "200 OK 1.1 CL=2 KA\nContent-Length=[2]\nbody=[ok]\ndone\n");
}

static void test_response_to_head(void)
{
    opts_t o = RESP;
    o.head_ret = 1; /* the request was HEAD */
    EXPECT(&o,
           "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
           "200 OK 1.1 CL=1000 KA\nContent-Length=[1000]\ndone\n"
           "200 OK 1.1 CHUNKED TE KA\nTransfer-Encoding=[chunked]\ndone\n");
}

static void test_response_100_continue(void)
{
    EXPECT(&RESP,
           "HTTP/1.1 100 Continue\r\n\r\n"
           "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
           "100 Continue 1.1 KA\ndone\n"
           "200 OK 1.1 CL=3 KA\nContent-Length=[3]\nbody=[yes]\ndone\n");
}

static void test_response_errors(void)
{
    EXPECT_ERROR(&RESP, "NOT HTTP\r\n\r\n", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 abc OK\r\n\r\n", 400);
    /* llhttp itself takes a one- or two-digit status */
    EXPECT_ERROR(&RESP, "HTTP/1.1 22\r\n\r\n", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 0 X\r\nContent-Length: 1\r\n\r\na", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 099 X\r\nContent-Length: 1\r\n\r\na", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
    EXPECT_ERROR(&RESP, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400);
    /* Transfer-Encoding is only policed in requests: a response may say
     * "gzip, chunked" and is decoded as chunked. */
    EXPECT(&RESP,
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
           "200 OK 1.1 CHUNKED TE KA\nTransfer-Encoding=[gzip, chunked]\nbody=[z]\ndone\n");
}

int main(void)
{
    RUN(test_simple_get);
    RUN(test_head_accessors);
    RUN(test_pipelining);
    RUN(test_on_done_continue);
    RUN(test_content_length_body);
    RUN(test_chunked_body);
    RUN(test_chunked_trailers);
    RUN(test_chunked_trailers_kept);
    RUN(test_obs_fold);
    RUN(test_header_values);
    RUN(test_keepalive_flags);
    RUN(test_expect_100);
    RUN(test_max_uri);
    RUN(test_max_header);
    RUN(test_414_wins_over_431);
    RUN(test_414_wins_when_header_limit_is_smaller);
    RUN(test_too_many_headers);
    RUN(test_smuggling);
    RUN(test_host_rules);
    RUN(test_malformed);
    RUN(test_space_in_header_name);
    RUN(test_empty_header_name);
    RUN(test_bare_lf);
    RUN(test_bare_cr);
    RUN(test_empty_lines_before_request);
    RUN(test_chunked_strict_ok);
    RUN(test_chunked_strict_refused);
    RUN(test_h1frame_direct);
    RUN(test_underscore_headers);
    RUN(test_error_is_sticky);
    RUN(test_response_basic);
    RUN(test_response_close_delimited);
    RUN(test_eof_between_messages);
    RUN(test_response_no_body);
    RUN(test_response_to_head);
    RUN(test_response_100_continue);
    RUN(test_response_errors);
    return mgt_done("http1");
}
