#include "h1frame.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* RFC 9110 tchar; read-only, so not process state */
const unsigned char mg_h1f_tchar[256] = {
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1,
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

static int bad(mg_h1f_t *f, const char *why, size_t at, size_t *used)
{
    f->why = why;
    *used = at;
    return MG_H1F_BAD;
}

/* --- the head ------------------------------------------------------------ */

void mg_h1f_head_start(mg_h1f_t *f)
{
    f->cr = 0;
    f->bol = 1;
    f->started = 0;
    f->why = NULL;
}

/* The offset of the first CR or LF in p[i..n), or n. Heads are short
 * lines: 16 bytes per step where SSE2 is there (x86-64 always), the last
 * partial step as an overlapping load of the buffer's last 16 bytes; a
 * plain loop elsewhere. */
static inline size_t find_crlf(const char *p, size_t i, size_t n)
{
#ifdef __SSE2__
    if (n >= 16) {
        const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
            if (m)
                return i + (size_t)__builtin_ctz(m);
            i += 16;
        }
        if (i < n) {
            size_t base = n - 16;
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + base));
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
            m &= ~0u << (i - base); /* only bytes from i on */
            if (m)
                return base + (size_t)__builtin_ctz(m);
        }
        return n;
    }
#endif
    while (i < n && p[i] != '\r' && p[i] != '\n')
        i++;
    return i;
}

/* Most head bytes are inside a line: find_crlf skips them in bulk, and the
 * loop below goes round once per line. A line begun in an earlier read is
 * finished first. */
int mg_h1f_head(mg_h1f_t *f, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    if (n == 0) {
        *used = 0;
        return MG_H1F_MORE;
    }
    if (f->cr) {
        /* reported at the byte after the CR, so the CR reaches llhttp
         * first however the bytes are split (llhttp may refuse it on its
         * own, for instance inside a name) */
        if (p[0] != '\n')
            return bad(f, "bare CR in request head", 0, used);
        f->cr = 0;
        i = 1;
        if (!f->bol) {
            f->bol = 1;
            f->started = 1;
        } else if (f->started) {
            *used = 1; /* the empty line: the head ends here */
            return MG_H1F_END;
        } /* else an empty line before the request line (RFC 9112 2.2) */
    } else if (!f->bol) {
        size_t j = find_crlf(p, 0, n);
        if (j == n) {
            *used = n;
            return MG_H1F_MORE;
        }
        if (p[j] == '\n')
            return bad(f, "bare LF in request head", j, used);
        if (j + 1 == n) {
            f->cr = 1;
            *used = n;
            return MG_H1F_MORE;
        }
        if (p[j + 1] != '\n')
            return bad(f, "bare CR in request head", j + 1, used);
        i = j + 2;
        f->bol = 1;
        f->started = 1;
    }
    /* at the start of a line */
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r') {
            if (i + 1 == n) {
                f->cr = 1;
                break;
            }
            if (p[i + 1] != '\n')
                return bad(f, "bare CR in request head", i + 1, used);
            i += 2;
            if (f->started) {
                *used = i; /* the empty line: the head ends here */
                return MG_H1F_END;
            }
            continue; /* an empty line before the request line */
        }
        if (c == '\n')
            return bad(f, "bare LF in request head", i, used);
        if (f->started && (c == ' ' || c == '\t'))
            return bad(f, "obsolete line folding in request head", i, used);
        size_t j = find_crlf(p, i + 1, n);
        if (j == n) {
            f->bol = 0;
            break;
        }
        if (p[j] == '\n')
            return bad(f, "bare LF in request head", j, used);
        if (j + 1 == n) {
            f->cr = 1;
            f->bol = 0;
            break;
        }
        if (p[j + 1] != '\n')
            return bad(f, "bare CR in request head", j + 1, used);
        i = j + 2;
        f->started = 1;
    }
    *used = n;
    return MG_H1F_MORE;
}

/* --- the chunked body ----------------------------------------------------- */

enum {
    C_SIZE0,     /* the first hex digit of a chunk size */
    C_SIZE,      /* more hex digits */
    C_EXT_WS,    /* BWS before ";" or the CR */
    C_EXT_NAME0, /* after ";": BWS, then the extension name */
    C_EXT_NAME,  /* in the name */
    C_EXT_POST,  /* BWS after the name */
    C_EXT_VAL0,  /* after "=": BWS, then a token or a quoted string */
    C_EXT_VAL,   /* in a token value */
    C_EXT_QS,    /* in a quoted string */
    C_EXT_QP,    /* after a backslash in a quoted string */
    C_SIZE_LF,   /* the LF of the size line */
    C_DATA,      /* `left` data bytes */
    C_DATA_CR,   /* the CR after the data */
    C_DATA_LF,   /* the LF after the data */
    C_TR_BOL,    /* the start of a trailer line, or the final CRLF */
    C_TR_NAME,   /* in a trailer field name */
    C_TR_VAL,    /* in a trailer field value */
    C_TR_LF,     /* the LF of a trailer line */
    C_END_LF,    /* the final LF */
};

void mg_h1f_chunked_start(mg_h1f_t *f)
{
    f->st = C_SIZE0;
    f->left = 0;
    f->why = NULL;
}

static inline int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static inline int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* qdtext and quoted-pair's second byte (RFC 9110 5.6.4), and a field
 * value's bytes: HTAB, SP, VCHAR, obs-text */
static inline int is_text(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

int mg_h1f_chunked(mg_h1f_t *f, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    unsigned st = f->st;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        switch (st) {
        case C_DATA: {
            size_t k = n - i;
            if (k > f->left)
                k = (size_t)f->left;
            f->left -= k;
            i += k;
            if (f->left == 0)
                st = C_DATA_CR;
            continue;
        }
        case C_SIZE0:
        case C_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (f->left > (UINT64_MAX >> 4)) {
                    f->st = (uint8_t)st;
                    return bad(f, "chunk size too large", i, used);
                }
                f->left = f->left << 4 | (uint64_t)v;
                st = C_SIZE;
                break;
            }
            if (st == C_SIZE0)
                goto fail_size;
            if (c == '\r')
                st = C_SIZE_LF;
            else if (c == ';')
                st = C_EXT_NAME0;
            else if (is_ws(c))
                st = C_EXT_WS;
            else
                goto fail_size;
            break;
        }
        case C_EXT_WS:
            if (c == '\r')
                st = C_SIZE_LF;
            else if (c == ';')
                st = C_EXT_NAME0;
            else if (!is_ws(c))
                goto fail_ext;
            break;
        case C_EXT_NAME0:
            if (mg_h1f_tchar[c])
                st = C_EXT_NAME;
            else if (!is_ws(c))
                goto fail_ext;
            break;
        case C_EXT_NAME:
        case C_EXT_POST:
            if (st == C_EXT_NAME && mg_h1f_tchar[c])
                break;
            if (c == '\r')
                st = C_SIZE_LF;
            else if (c == ';')
                st = C_EXT_NAME0;
            else if (c == '=')
                st = C_EXT_VAL0;
            else if (is_ws(c))
                st = C_EXT_POST;
            else
                goto fail_ext;
            break;
        case C_EXT_VAL0:
            if (c == '"')
                st = C_EXT_QS;
            else if (mg_h1f_tchar[c])
                st = C_EXT_VAL;
            else if (!is_ws(c))
                goto fail_ext;
            break;
        case C_EXT_VAL:
            if (mg_h1f_tchar[c])
                break;
            if (c == '\r')
                st = C_SIZE_LF;
            else if (c == ';')
                st = C_EXT_NAME0;
            else if (is_ws(c))
                st = C_EXT_WS;
            else
                goto fail_ext;
            break;
        case C_EXT_QS:
            if (c == '"')
                st = C_EXT_WS;
            else if (c == '\\')
                st = C_EXT_QP;
            else if (!is_text(c))
                goto fail_ext;
            break;
        case C_EXT_QP:
            if (!is_text(c))
                goto fail_ext;
            st = C_EXT_QS;
            break;
        case C_SIZE_LF:
            if (c != '\n')
                goto fail_size;
            st = f->left ? C_DATA : C_TR_BOL;
            break;
        case C_DATA_CR:
            if (c != '\r')
                goto fail_data;
            st = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (c != '\n')
                goto fail_data;
            st = C_SIZE0;
            break;
        case C_TR_BOL:
            if (c == '\r')
                st = C_END_LF;
            else if (mg_h1f_tchar[c])
                st = C_TR_NAME;
            else
                goto fail_trailer;
            break;
        case C_TR_NAME:
            if (c == ':')
                st = C_TR_VAL;
            else if (!mg_h1f_tchar[c])
                goto fail_trailer;
            break;
        case C_TR_VAL:
            if (c == '\r')
                st = C_TR_LF;
            else if (!is_text(c))
                goto fail_trailer;
            break;
        case C_TR_LF:
            if (c != '\n')
                goto fail_trailer;
            st = C_TR_BOL;
            break;
        case C_END_LF:
            if (c != '\n')
                goto fail_trailer;
            f->st = (uint8_t)st;
            *used = i + 1;
            return MG_H1F_END;
        }
        i++;
    }
    f->st = (uint8_t)st;
    *used = n;
    return MG_H1F_MORE;
fail_size:
    f->st = (uint8_t)st;
    return bad(f, "invalid chunk size line", i, used);
fail_ext:
    f->st = (uint8_t)st;
    return bad(f, "invalid chunk extension", i, used);
fail_data:
    f->st = (uint8_t)st;
    return bad(f, "chunk data not followed by CRLF", i, used);
fail_trailer:
    f->st = (uint8_t)st;
    return bad(f, "invalid chunked trailer", i, used);
}
