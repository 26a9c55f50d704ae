/* Access log formatting (accesslog.h). Text lines keep the old field order
 * (time client method path status bytes upstream duration route) and add
 * request id and the quoted user agent at the end, so existing parsers of
 * the first nine fields go on working. Bytes a log reader could mistake
 * for structure (spaces and quotes in text fields, control bytes, bytes
 * >= 0x7f) are escaped as \xHH in text; JSON escapes per RFC 8259 and
 * writes non-ASCII bytes as \u00HH so a line is valid JSON whatever the
 * client sent. */
#include "accesslog.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define LINE_MAX_BYTES 16384 /* six fields of at most FIELD_MAX escaped bytes fit */
#define FIELD_MAX 2048       /* escaped bytes of one field; a longer value is cut */

typedef struct out {
    char *p;
    size_t n, cap;            /* cap excludes room for the newline */
} out_t;

static inline void put(out_t *o, const char *s, size_t n)
{
    if (n > o->cap - o->n)
        n = o->cap - o->n;
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static inline void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

static inline void putc_(out_t *o, char c)
{
    if (o->n < o->cap)
        o->p[o->n++] = c;
}

static const char hexd[] = "0123456789abcdef";

/* Text field: printable ASCII other than space, '"' and '\\' as is. */
static void put_text(out_t *o, const char *s, size_t n, int quoted)
{
    if (s == NULL) {
        putc_(o, '-');
        return;
    }
    size_t start = o->n;
    if (quoted)
        putc_(o, '"');
    else if (n == 0) {
        putc_(o, '-');
        return;
    }
    for (size_t i = 0; i < n && o->n - start < FIELD_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7f && c != '"' && c != '\\') {
            putc_(o, (char)c);
        } else if (c == ' ' && quoted) {
            putc_(o, ' ');
        } else {
            char e[4] = { '\\', 'x', hexd[c >> 4], hexd[c & 15] };
            put(o, e, 4);
        }
    }
    if (quoted)
        putc_(o, '"');
}

static void put_json_str(out_t *o, const char *s, size_t n)
{
    if (s == NULL) {
        put(o, "null", 4);
        return;
    }
    size_t start = o->n;
    putc_(o, '"');
    for (size_t i = 0; i < n && o->n - start < FIELD_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            putc_(o, (char)c);
        } else if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            put(o, e, 2);
        } else {
            /* control bytes and every byte >= 0x7f: the log must be valid
             * JSON (UTF-8) even when the client sent arbitrary bytes */
            char e[6] = { '\\', 'u', '0', '0', hexd[c >> 4], hexd[c & 15] };
            put(o, e, 6);
        }
    }
    putc_(o, '"');
}


static void put_u64(out_t *o, uint64_t v)
{
    char b[24];
    int i = (int)sizeof b;
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, b + i, sizeof b - (size_t)i);
}

/* v >= 0 with `digits` (3 or 6) decimals, rounded; no printf on the hot path */
static void put_fixed(out_t *o, double v, int digits)
{
    uint64_t scale = digits == 6 ? 1000000 : 1000;
    if (!(v > 0))
        v = 0;
    if (v > 1e12)
        v = 1e12;
    uint64_t x = (uint64_t)(v * (double)scale + 0.5);
    put_u64(o, x / scale);
    char f[7];
    uint64_t frac = x % scale;
    for (int i = digits - 1; i >= 0; i--) {
        f[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    putc_(o, '.');
    put(o, f, (size_t)digits);
}

/* RFC 3339 UTC with milliseconds, as mg_log_time writes it, by hand */
static void put_time(out_t *o, double t)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    int ms = (int)((t - (double)s) * 1000.0);
    ms = ms < 0 ? 0 : ms > 999 ? 999 : ms;
    int y = tm.tm_year + 1900;
    char b[24] = { (char)('0' + y / 1000 % 10), (char)('0' + y / 100 % 10),
                   (char)('0' + y / 10 % 10), (char)('0' + y % 10), '-',
                   (char)('0' + (tm.tm_mon + 1) / 10), (char)('0' + (tm.tm_mon + 1) % 10), '-',
                   (char)('0' + tm.tm_mday / 10), (char)('0' + tm.tm_mday % 10), 'T',
                   (char)('0' + tm.tm_hour / 10), (char)('0' + tm.tm_hour % 10), ':',
                   (char)('0' + tm.tm_min / 10), (char)('0' + tm.tm_min % 10), ':',
                   (char)('0' + tm.tm_sec / 10), (char)('0' + tm.tm_sec % 10), '.',
                   (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                   'Z' };
    put(o, b, 24);
}

static void put_int(out_t *o, int v)
{
    if (v < 0) {
        putc_(o, '-');
        v = -v;
    }
    put_u64(o, (uint64_t)v);
}

static void format_text(out_t *o, const mg_alog_entry_t *e)
{
    put_time(o, e->time);
    putc_(o, ' ');
    put_text(o, e->remote, e->remote ? strlen(e->remote) : 0, 0);
    putc_(o, ' ');
    put_text(o, e->method, e->method ? strlen(e->method) : 0, 0);
    putc_(o, ' ');
    put_text(o, e->path.p ? e->path.p : "-", e->path.p ? e->path.n : 1, 0);
    putc_(o, ' ');
    put_int(o, e->status);
    putc_(o, ' ');
    put_u64(o, e->bytes_sent);
    putc_(o, ' ');
    put_text(o, e->upstream, e->upstream ? strlen(e->upstream) : 0, 0);
    putc_(o, ' ');
    put_fixed(o, e->duration, 3);
    putc_(o, ' ');
    put_text(o, e->route, e->route ? strlen(e->route) : 0, 0);
    putc_(o, ' ');
    put_text(o, e->request_id.p, e->request_id.n, 0);
    putc_(o, ' ');
    if (e->user_agent.p)
        put_text(o, e->user_agent.p, e->user_agent.n, 1);
    else
        putc_(o, '-');
    if (e->tunnel) {
        put(o, " tunnel_up=", 11);
        put_u64(o, e->tunnel_up);
        put(o, " tunnel_down=", 13);
        put_u64(o, e->tunnel_down);
    }
}

static void format_json(out_t *o, const mg_alog_entry_t *e)
{
    put(o, "{\"time\":\"", 9);
    put_time(o, e->time);
    put(o, "\",\"remote_addr\":", 16);
    put_json_str(o, e->remote, e->remote ? strlen(e->remote) : 0);
    put(o, ",\"method\":", 10);
    put_json_str(o, e->method ? e->method : "-", e->method ? strlen(e->method) : 1);
    put(o, ",\"path\":", 8);
    put_json_str(o, e->path.p, e->path.n);
    put(o, ",\"status\":", 10);
    put_int(o, e->status);
    put(o, ",\"bytes_sent\":", 14);
    put_u64(o, e->bytes_sent);
    put(o, ",\"upstream\":", 12);
    put_json_str(o, e->upstream, e->upstream ? strlen(e->upstream) : 0);
    put(o, ",\"duration\":", 12);
    put_fixed(o, e->duration, 6);
    put(o, ",\"route\":", 9);
    put_json_str(o, e->route, e->route ? strlen(e->route) : 0);
    put(o, ",\"request_id\":", 14);
    put_json_str(o, e->request_id.p, e->request_id.n);
    put(o, ",\"user_agent\":", 14);
    put_json_str(o, e->user_agent.p, e->user_agent.n);
    put(o, ",\"http_version\":", 16);
    if (e->http_major == 0 && e->http_minor == 0) {
        put(o, "null", 4);
    } else if (e->http_major == 2) {
        put(o, "\"2\"", 3);
    } else {
        char v[5] = { '"', (char)('0' + e->http_major % 10), '.',
                      (char)('0' + e->http_minor % 10), '"' };
        put(o, v, 5);
    }
    if (e->tunnel) {
        put(o, ",\"tunnel_up\":", 13);
        put_u64(o, e->tunnel_up);
        put(o, ",\"tunnel_down\":", 15);
        put_u64(o, e->tunnel_down);
    }
    putc_(o, '}');
}

size_t mg_alog_format(char *buf, size_t cap, int format, const mg_alog_entry_t *e)
{
    if (cap == 0)
        return 0;
    out_t o = { buf, 0, cap };
    if (format == MG_ALOG_JSON)
        format_json(&o, e);
    else
        format_text(&o, e);
    return o.n;
}

void mg_alog_write(FILE *f, int format, const mg_alog_entry_t *e)
{
    char line[LINE_MAX_BYTES];
    size_t n = mg_alog_format(line, sizeof line - 1, format, e);
    line[n++] = '\n';
    fwrite(line, 1, n, f);
}
