#include "h1frame.h"

#include <string.h>

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

/* Most head bytes are inside a line: each line costs two memchr calls (the
 * line's CR, and a check that no LF comes before it), not a loop per byte. */
int mg_h1f_head(mg_h1f_t *f, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        if (f->cr) {
            if (c != '\n')
                return bad(f, "bare CR in request head", i - (i > 0), used);
            f->cr = 0;
            i++;
            if (!f->bol) {
                f->bol = 1;
                f->started = 1;
            } else if (f->started) {
                *used = i; /* the empty line: the head ends here */
                return MG_H1F_END;
            }
            /* else an empty line before the request line (RFC 9112 2.2) */
            continue;
        }
        if (c == '\r') {
            f->cr = 1;
            i++;
            continue;
        }
        if (c == '\n')
            return bad(f, "bare LF in request head", i, used);
        if (f->bol && f->started && (c == ' ' || c == '\t'))
            return bad(f, "obsolete line folding in request head", i, used);
        f->bol = 0;
        const char *cr = memchr(p + i, '\r', n - i);
        size_t e = cr ? (size_t)(cr - p) : n;
        const char *lf = memchr(p + i, '\n', e - i);
        if (lf)
            return bad(f, "bare LF in request head", (size_t)(lf - p), used);
        i = e;
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
