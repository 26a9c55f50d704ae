/* A growable byte buffer with a consumed-prefix offset: live bytes are
 * base[off .. off+len). Used for connection read buffers, write queues and
 * head stores. Growing may move base: never keep pointers across an append.
 *
 * Out of memory, one rule: a failed append marks the buffer `failed`, and
 * every append after it fails too, until the writer takes the bytes since a
 * mark back (mg_buf_rollback) or resets the buffer. So a head or a body
 * piece is either queued whole or the buffer says so: a writer appends its
 * pieces unchecked and checks `failed` once at the end, and no message with
 * a piece missing in the middle can go out. */
#ifndef MG_BUF_H
#define MG_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

typedef struct mg_buf {
    char *base;   /* owned allocation, NULL until first use */
    size_t off;   /* bytes already consumed at the front */
    size_t len;   /* live bytes after off */
    size_t cap;   /* allocation size */
    int failed;   /* an append failed: appends refused until rollback/reset */
} mg_buf_t;

static inline char *mg_buf_data(const mg_buf_t *b) { return b->base + b->off; }
static inline size_t mg_buf_room(const mg_buf_t *b) { return b->cap - b->off - b->len; }

/* Ensures at least `extra` free bytes after the live data (compacting first).
 * Returns 0 or MG_ENOMEM. */
int mg_buf_reserve(mg_buf_t *b, size_t extra);
/* Appends n bytes; returns 0 or MG_ENOMEM. The common case (room left)
 * is inline: head writers call this once per piece. */
int mg_buf_append_grow(mg_buf_t *b, const void *p, size_t n);
static inline int mg_buf_append(mg_buf_t *b, const void *p, size_t n)
{
    if (n > mg_buf_room(b) || b->failed)
        return mg_buf_append_grow(b, p, n);
    if (n) {
        memcpy(b->base + b->off + b->len, p, n);
        b->len += n;
    }
    return 0;
}
int mg_buf_printf(mg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends a NUL-terminated string / an unsigned number in decimal or hex
 * (hot paths: cheaper than printf). */
int mg_buf_puts(mg_buf_t *b, const char *s);
int mg_buf_putu(mg_buf_t *b, unsigned long long v);
int mg_buf_putx(mg_buf_t *b, unsigned long long v);
/* Drops n bytes from the front; resets off when the buffer empties. */
void mg_buf_consume(mg_buf_t *b, size_t n);
/* Moves live bytes to the front of the allocation. */
void mg_buf_compact(mg_buf_t *b);
/* Empties the buffer (and clears `failed`). */
void mg_buf_reset(mg_buf_t *b);
/* Takes back everything appended after the buffer held `len` live bytes
 * (a writer's mark taken before it started), and clears `failed`. */
void mg_buf_rollback(mg_buf_t *b, size_t len);
/* Frees the allocation; NULL-tolerant and idempotent. */
void mg_buf_free(mg_buf_t *b);

/* Appends s as a JSON string (quoted; " \\ and control characters escaped). */
void mg_buf_json_str(mg_buf_t *b, const char *s);
/* Appends s as a Prometheus label value (unquoted; \\ " and newline escaped). */
void mg_buf_prom_label(mg_buf_t *b, const char *s);

#endif
