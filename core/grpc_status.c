/* gRPC status codes and grpc-message text for the gateway's own answers
 * to gRPC calls (grpc_status.h). */
#include "grpc_status.h"

#include <string.h>

int mg_grpc_is_call(mg_str_t ctype)
{
    static const char pre[] = "application/grpc";
    size_t n = sizeof pre - 1;
    return ctype.p != NULL && ctype.n >= n && mg_str_eq_ci((mg_str_t){ ctype.p, n }, pre, n);
}

int mg_grpc_code(int http_status)
{
    switch (http_status) {
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 12; /* UNIMPLEMENTED */
    case 429: return 8;  /* RESOURCE_EXHAUSTED */
    case 502:
    case 503: return 14; /* UNAVAILABLE */
    case 504: return 4;  /* DEADLINE_EXCEEDED */
    default: return 13;  /* INTERNAL */
    }
}

void mg_grpc_pct_encode(mg_buf_t *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0; /* bytes copied as they are, appended in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            run++;
            continue;
        }
        mg_buf_append(o, s + i - run, run);
        run = 0;
        char e[3] = { '%', hex[c >> 4], hex[c & 15] };
        mg_buf_append(o, e, 3);
    }
    mg_buf_append(o, s + n - run, run);
}

/* --- the "error" string of a JSON object ------------------------------------ */

typedef struct {
    const char *p, *end;
} scan_t;

static void skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A JSON string at s->p (the opening quote), decoded into out[0..cap)
 * when out is not NULL: whole characters only, up to the first that does
 * not fit; *len gets the bytes stored. 0, or -1 if it is not a valid
 * string. */
static int scan_string(scan_t *s, char *out, size_t cap, size_t *len)
{
    size_t k = 0;
    int full = out == NULL;
    if (s->p >= s->end || *s->p != '"')
        return -1;
    s->p++;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p++;
        char tmp[4];
        size_t tn = 1;
        if (c == '"') {
            if (len)
                *len = k;
            return 0;
        }
        if (c < 0x20)
            return -1;
        tmp[0] = (char)c;
        if (c == '\\') {
            if (s->p >= s->end)
                return -1;
            char e = *s->p++;
            switch (e) {
            case '"': case '\\': case '/': tmp[0] = e; break;
            case 'b': tmp[0] = '\b'; break;
            case 'f': tmp[0] = '\f'; break;
            case 'n': tmp[0] = '\n'; break;
            case 'r': tmp[0] = '\r'; break;
            case 't': tmp[0] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (s->end - s->p < 4 || hex4(s->p, &cp) != 0)
                    return -1;
                s->p += 4;
                if (cp >= 0xd800 && cp < 0xdc00 && s->end - s->p >= 6 && s->p[0] == '\\' &&
                    s->p[1] == 'u' && hex4(s->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                    s->p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else if (cp >= 0xd800 && cp < 0xe000) {
                    cp = 0xfffd; /* a lone surrogate */
                }
                tn = put_utf8(tmp, cp);
                break;
            }
            default: return -1;
            }
        }
        if (!full && k + tn <= cap) {
            memcpy(out + k, tmp, tn);
            k += tn;
        } else {
            full = 1;
        }
    }
    return -1;
}

/* Skips one JSON value (objects and arrays by depth, strings whole). */
static int skip_value(scan_t *s)
{
    int depth = 0;
    skip_ws(s);
    do {
        if (s->p >= s->end)
            return -1;
        char c = *s->p;
        if (c == '"') {
            if (scan_string(s, NULL, 0, NULL) != 0)
                return -1;
        } else if (c == '{' || c == '[') {
            depth++;
            s->p++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return -1;
            depth--;
            s->p++;
        } else {
            s->p++; /* numbers, literals, commas, colons, blanks inside */
            if (depth == 0) {
                while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']')
                    s->p++;
                return 0;
            }
        }
    } while (depth > 0);
    return 0;
}

/* The "error" member of the JSON object body[0..n), if it is a string:
 * decoded into out[0..cap), its length in *len. 0 if found. */
static int json_error(const char *body, size_t n, char *out, size_t cap, size_t *len)
{
    scan_t s = { body, body + n };
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    s.p++;
    for (;;) {
        skip_ws(&s);
        if (s.p >= s.end || *s.p != '"')
            return -1;
        const char *key = s.p + 1;
        if (scan_string(&s, NULL, 0, NULL) != 0)
            return -1;
        int is_error = s.p - key - 1 == 5 && memcmp(key, "error", 5) == 0;
        skip_ws(&s);
        if (s.p >= s.end || *s.p != ':')
            return -1;
        s.p++;
        skip_ws(&s);
        if (is_error && s.p < s.end && *s.p == '"')
            return scan_string(&s, out, cap, len);
        if (skip_value(&s) != 0)
            return -1;
        skip_ws(&s);
        if (s.p >= s.end || *s.p != ',')
            return -1; /* '}': no "error" string */
        s.p++;
    }
}

/* n cut back to a UTF-8 character boundary of s, at most max. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

void mg_grpc_message(mg_buf_t *o, const char *body, size_t n, const char *fallback)
{
    char text[MG_GRPC_MESSAGE_MAX];
    size_t tn = 0;
    if (body && n && json_error(body, n, text, sizeof text, &tn) == 0) {
        mg_grpc_pct_encode(o, text, tn);
        return;
    }
    while (n > 0 && (body[n - 1] == '\n' || body[n - 1] == '\r' || body[n - 1] == ' ' ||
                     body[n - 1] == '\t'))
        n--;
    if (n == 0) {
        mg_grpc_pct_encode(o, fallback, strlen(fallback));
        return;
    }
    mg_grpc_pct_encode(o, body, utf8_cut(body, n, MG_GRPC_MESSAGE_MAX));
}
