#include "buf.h"
#include "mg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mg_buf_compact(mg_buf_t *b)
{
    if (b->off == 0)
        return;
    if (b->len)
        memmove(b->base, b->base + b->off, b->len);
    b->off = 0;
}

int mg_buf_reserve(mg_buf_t *b, size_t extra)
{
    if (b->failed)
        return MG_ENOMEM;
    if (mg_buf_room(b) >= extra)
        return MG_OK;
    mg_buf_compact(b);
    if (b->cap - b->len >= extra)
        return MG_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    char *p = realloc(b->base, cap);
    if (p == NULL) {
        b->failed = 1;
        return MG_ENOMEM;
    }
    b->base = p;
    b->cap = cap;
    return MG_OK;
}

int mg_buf_append_grow(mg_buf_t *b, const void *p, size_t n)
{
    if (b->failed)
        return MG_ENOMEM;
    if (n == 0)
        return MG_OK;
    if (mg_buf_reserve(b, n) != MG_OK)
        return MG_ENOMEM;
    memcpy(b->base + b->off + b->len, p, n);
    b->len += n;
    return MG_OK;
}

int mg_buf_printf(mg_buf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return MG_ENOMEM;
    va_list ap;
    size_t room = mg_buf_room(b);
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->base + b->off + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        return MG_EINVAL;
    if ((size_t)n >= room) {
        if (mg_buf_reserve(b, (size_t)n + 1) != MG_OK)
            return MG_ENOMEM;
        va_start(ap, fmt);
        vsnprintf(b->base + b->off + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return MG_OK;
}

void mg_buf_consume(mg_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->off = 0;
        b->len = 0;
        return;
    }
    b->off += n;
    b->len -= n;
}

void mg_buf_reset(mg_buf_t *b)
{
    b->off = 0;
    b->len = 0;
    b->failed = 0;
}

void mg_buf_rollback(mg_buf_t *b, size_t len)
{
    if (len < b->len)
        b->len = len;
    if (b->len == 0)
        b->off = 0;
    b->failed = 0;
}

void mg_buf_free(mg_buf_t *b)
{
    if (b == NULL)
        return;
    free(b->base);
    b->base = NULL;
    b->off = b->len = b->cap = 0;
    b->failed = 0;
}

int mg_buf_puts(mg_buf_t *b, const char *s)
{
    return mg_buf_append(b, s, strlen(s));
}

int mg_buf_putu(mg_buf_t *b, unsigned long long v)
{
    char tmp[24];
    int i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return mg_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

int mg_buf_putx(mg_buf_t *b, unsigned long long v)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[20];
    int i = sizeof tmp;
    do {
        tmp[--i] = hex[v & 15];
        v >>= 4;
    } while (v);
    return mg_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

void mg_buf_json_str(mg_buf_t *b, const char *s)
{
    mg_buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            mg_buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            mg_buf_printf(b, "\\u%04x", c);
        else
            mg_buf_append(b, s, 1);
    }
    mg_buf_append(b, "\"", 1);
}

void mg_buf_prom_label(mg_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            mg_buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            mg_buf_puts(b, "\\n");
        else
            mg_buf_append(b, s, 1);
    }
}
