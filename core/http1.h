/* llhttp glue: turns bytes into a message head (stored as offsets into one
 * owned store, so it survives the read buffer) plus body pieces. No I/O, no
 * Lua: unit-tested on its own (spec/c/test_http1.c). One mg_h1_t parses a
 * stream of requests (client side) or responses (upstream side). */
#ifndef MG_HTTP1_H
#define MG_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <llhttp.h>

#include "buf.h"
#include "h1frame.h"
#include "mg.h"

#define MG_H1_MAX_HEADERS 128

typedef struct mg_h1_hdr {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} mg_h1_hdr_t;

enum {
    MG_H1_CHUNKED = 1 << 0,        /* Transfer-Encoding: chunked */
    MG_H1_HAS_CL = 1 << 1,         /* Content-Length present */
    MG_H1_KEEPALIVE = 1 << 2,      /* connection may be reused after this message */
    MG_H1_EXPECT_100 = 1 << 3,     /* Expect: 100-continue */
    MG_H1_HAS_TE = 1 << 4,         /* any Transfer-Encoding header */
    MG_H1_HEAD_READ = 1 << 5,      /* the head was parsed: method and version are valid */
};

/* One message head. `store` owns every byte the offsets point at. */
typedef struct mg_h1_head {
    mg_buf_t store;
    uint32_t url_off, url_len;        /* requests: request-target */
    uint32_t reason_off, reason_len;  /* responses: reason phrase */
    mg_h1_hdr_t *hdrs;                /* owned array, nhdrs used of hcap */
    int nhdrs, hcap;
    int method;                       /* llhttp_method_t, requests */
    int status;                       /* responses */
    int http_major, http_minor;
    unsigned flags;                   /* MG_H1_* */
    uint64_t content_length;          /* valid with MG_H1_HAS_CL */
    int host_count;                   /* number of Host headers seen */
} mg_h1_head_t;

static inline mg_str_t mg_h1_url(const mg_h1_head_t *h)
{
    return (mg_str_t){ h->store.base + h->url_off, h->url_len };
}
static inline mg_str_t mg_h1_name(const mg_h1_head_t *h, int i)
{
    return (mg_str_t){ h->store.base + h->hdrs[i].name_off, h->hdrs[i].name_len };
}
static inline mg_str_t mg_h1_value(const mg_h1_head_t *h, int i)
{
    return (mg_str_t){ h->store.base + h->hdrs[i].value_off, h->hdrs[i].value_len };
}
/* First header named `name` (case-insensitive), or -1. */
int mg_h1_find(const mg_h1_head_t *h, const char *name, size_t n, int from);
/* Whether p[0..n) is a non-empty RFC 9110 token (header names, methods). */
int mg_h1_is_token(const char *p, size_t n);
/* Appends a header to a head built by hand (generated responses). 0 or
 * MG_ENOMEM. */
int mg_h1_head_add(mg_h1_head_t *h, const char *name, size_t nn, const char *value, size_t vn);
/* Resets a head for reuse, keeping its allocations. */
void mg_h1_head_reset(mg_h1_head_t *h);
void mg_h1_head_free(mg_h1_head_t *h);

/* Callbacks into the owner. Return values: on_head 0 = go on, 1 = the message
 * has no body (responses to HEAD, 204, 304), -1 = error (set h->err_status
 * first); on_body 0 = go on, -1 = error; on_done 0 = pause, 1 = go on with
 * the next message, -1 = error. After a pause mg_h1_feed returns and the
 * owner calls mg_h1_resume when it wants the next message. */
typedef struct mg_h1_cb {
    mg_h1_head_t *(*on_begin)(void *ud);
    int (*on_head)(void *ud, mg_h1_head_t *head);
    int (*on_body)(void *ud, const char *p, size_t n);
    int (*on_done)(void *ud);
    /* Requests: where a chunked body's trailer fields go (parsed and
     * checked as header fields, counted against max_header), asked for at
     * the first one; NULL (or returning NULL): they are dropped. */
    mg_h1_head_t *(*trailer_store)(void *ud);
} mg_h1_cb_t;

/* What a request parser does with a header field whose name has an
 * underscore (limits.underscore_headers): Transfer_Encoding is
 * Transfer-Encoding to a back end that maps "_" to "-" (CGI, WSGI). */
enum {
    MG_H1_US_ALLOW = 0,  /* keep it */
    MG_H1_US_DROP = 1,   /* leave it out of the head, as nginx does */
    MG_H1_US_REJECT = 2, /* 400 */
};

typedef struct mg_h1 {
    llhttp_t p;
    mg_h1f_t frame;          /* requests: strict framing of the raw bytes */
    const mg_h1_cb_t *cb;
    void *ud;
    mg_h1_head_t *head;      /* borrowed from on_begin until on_head returns */
    mg_h1_head_t *tr;        /* borrowed from trailer_store while trailers are parsed */
    int last;                /* which span the previous callback was */
    size_t max_uri;          /* 0 = unlimited */
    size_t max_header;       /* whole head: request line + headers */
    size_t head_bytes;
    int err_status;          /* HTTP status to answer a parse error with */
    const char *err_reason;  /* static string */
    unsigned paused : 1;     /* paused after on_done */
    unsigned in_body : 1;    /* between on_head and on_done */
    unsigned in_msg : 1;     /* between on_begin and on_done */
    unsigned ipaused : 1;    /* paused by us at a message end, resumed in feed */
    unsigned at_end : 1;     /* feeding the byte the framing check says ends
                              * the head or the chunked body */
    unsigned gate : 1;       /* llhttp ended the head or body on that byte */
    unsigned drop_field : 1; /* the field being parsed is left out */
    unsigned char mode;      /* requests: which bytes come next (http1.c) */
    unsigned char underscores; /* MG_H1_US_*, requests only; set after init */
} mg_h1_t;

void mg_h1_init(mg_h1_t *h, int type /* HTTP_REQUEST / HTTP_RESPONSE */, const mg_h1_cb_t *cb,
                void *ud, size_t max_uri, size_t max_header);

/* Parses up to n bytes. Returns the number consumed (less than n when the
 * parser paused after a message), or -1 on error with err_status/err_reason
 * set (400 malformed, 414, 431, or the callback's own). A request parser
 * hands llhttp only bytes that pass the strict framing check (h1frame.h):
 * a bare CR or LF in the head, line folding, or a chunked body that is not
 * byte for byte RFC 9112 is a 400, and the body delivered before it stops
 * at the first byte that is wrong. */
ssize_t mg_h1_feed(mg_h1_t *h, const char *p, size_t n);
/* Allows the next message after a pause. */
void mg_h1_resume(mg_h1_t *h);
/* The peer closed: completes a close-delimited message. 0, or -1 if the
 * message was cut short. */
int mg_h1_eof(mg_h1_t *h);
/* Tells a response parser that the request was HEAD (no body follows). */
static inline int mg_h1_is_paused(const mg_h1_t *h) { return h->paused; }
/* The next item of the comma-separated header value v from *at on, blanks
 * around it dropped: 1 and *tok, or 0 at the end. Start with *at = 0. */
static inline int mg_h1_list_next(mg_str_t v, size_t *at, mg_str_t *tok)
{
    size_t a = *at;
    while (a < v.n) {
        while (a < v.n && (v.p[a] == ' ' || v.p[a] == '\t' || v.p[a] == ','))
            a++;
        size_t b = a;
        while (b < v.n && v.p[b] != ',')
            b++;
        size_t e = b;
        while (e > a && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
            e--;
        if (e > a) {
            *at = b;
            *tok = (mg_str_t){ v.p + a, e - a };
            return 1;
        }
        a = b;
    }
    *at = a;
    return 0;
}
/* True if the comma-separated header value v (Connection, Upgrade) holds the
 * token tok, compared case-insensitively, blanks around items ignored. */
int mg_h1_list_has(mg_str_t v, const char *tok, size_t tn);
/* Appends p[0..n) to o as one chunk of a chunked body (n > 0). Unchecked:
 * o->failed says whether all of it is there (buf.h). */
static inline void mg_h1_put_chunk(mg_buf_t *o, const char *p, size_t n)
{
    mg_buf_putx(o, n);
    mg_buf_append(o, "\r\n", 2);
    mg_buf_append(o, p, n);
    mg_buf_append(o, "\r\n", 2);
}

#endif
