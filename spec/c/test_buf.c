/* Unit tests for core/buf: append, consume, compact, reserve and printf,
 * with attention to when the allocation grows or moves. */
#include "buf.h"
#include "mg.h"
#include "mgtest.h"

#include <stdlib.h>
#include <string.h>

#define CHECK_BUF(b, want) CHECK_MEM(mg_buf_data(b), (b)->len, (want))

static void test_empty(void)
{
    mg_buf_t b = { 0 };
    CHECK(b.base == NULL);
    CHECK_INT(mg_buf_room(&b), 0);
    CHECK_INT(mg_buf_append(&b, "", 0), MG_OK); /* no allocation for nothing */
    CHECK(b.base == NULL);
    mg_buf_consume(&b, 10); /* consuming more than there is empties it */
    CHECK_INT(b.len, 0);
    CHECK_INT(b.off, 0);
    mg_buf_free(&b);
    mg_buf_free(&b); /* idempotent */
    mg_buf_free(NULL);
    CHECK(b.base == NULL);
}

static void test_append_and_grow(void)
{
    mg_buf_t b = { 0 };
    CHECK_INT(mg_buf_append(&b, "hello", 5), MG_OK);
    CHECK_BUF(&b, "hello");
    CHECK_INT(b.cap, 256); /* first allocation */
    CHECK_INT(mg_buf_room(&b), 251);
    char chunk[100];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 10; i++)
        CHECK_INT(mg_buf_append(&b, chunk, sizeof chunk), MG_OK);
    CHECK_INT(b.len, 1005);
    CHECK_INT(b.cap, 1024); /* doubled 256 -> 512 -> 1024 */
    CHECK(memcmp(mg_buf_data(&b), "hellox", 6) == 0);
    CHECK(mg_buf_data(&b)[1004] == 'x');
    /* one append much larger than the buffer */
    static char huge[10000];
    memset(huge, 'y', sizeof huge);
    CHECK_INT(mg_buf_append(&b, huge, sizeof huge), MG_OK);
    CHECK_INT(b.len, 11005);
    CHECK_INT(b.cap, 16384);
    CHECK(mg_buf_data(&b)[11004] == 'y');
    mg_buf_free(&b);
    CHECK_INT(b.cap, 0);
    CHECK_INT(b.len, 0);
}

static void test_consume(void)
{
    mg_buf_t b = { 0 };
    mg_buf_append(&b, "abcdefgh", 8);
    mg_buf_consume(&b, 3);
    CHECK_BUF(&b, "defgh");
    CHECK_INT(b.off, 3);
    mg_buf_consume(&b, 0);
    CHECK_BUF(&b, "defgh");
    mg_buf_consume(&b, 5); /* exactly all: off resets so the space is reused */
    CHECK_INT(b.len, 0);
    CHECK_INT(b.off, 0);
    mg_buf_append(&b, "xyz", 3);
    CHECK_BUF(&b, "xyz");
    CHECK_INT(b.off, 0);
    mg_buf_reset(&b);
    CHECK_INT(b.len, 0);
    CHECK(b.base != NULL); /* reset keeps the allocation */
    mg_buf_free(&b);
}

static void test_compact(void)
{
    mg_buf_t b = { 0 };
    mg_buf_append(&b, "0123456789", 10);
    mg_buf_consume(&b, 4);
    char *base = b.base;
    mg_buf_compact(&b);
    CHECK_INT(b.off, 0);
    CHECK(b.base == base); /* compacting never reallocates */
    CHECK_BUF(&b, "456789");
    mg_buf_compact(&b); /* already compact: nothing to do */
    CHECK_BUF(&b, "456789");
    mg_buf_free(&b);
}

static void test_reserve(void)
{
    mg_buf_t b = { 0 };
    CHECK_INT(mg_buf_reserve(&b, 1), MG_OK);
    CHECK_INT(b.cap, 256);
    CHECK(mg_buf_room(&b) >= 1);

    /* Consumed space at the front is reused by compacting, not by growing. */
    char fill[200];
    memset(fill, 'f', sizeof fill);
    mg_buf_append(&b, fill, sizeof fill);
    mg_buf_append(&b, "tail", 4);
    mg_buf_consume(&b, 200);
    CHECK_INT(mg_buf_room(&b), 52);
    CHECK_INT(mg_buf_reserve(&b, 100), MG_OK);
    CHECK_INT(b.cap, 256);
    CHECK_INT(b.off, 0);
    CHECK_BUF(&b, "tail");
    CHECK(mg_buf_room(&b) >= 100);

    /* Enough room already: nothing moves. */
    char *base = b.base;
    size_t off = b.off;
    CHECK_INT(mg_buf_reserve(&b, 10), MG_OK);
    CHECK(b.base == base);
    CHECK_INT(b.off, off);

    /* More than the allocation: grows by doubling until it fits. */
    CHECK_INT(mg_buf_reserve(&b, 1000), MG_OK);
    CHECK_INT(b.cap, 1024);
    CHECK(mg_buf_room(&b) >= 1000);
    CHECK_BUF(&b, "tail");
    mg_buf_free(&b);
}

static void test_printf(void)
{
    mg_buf_t b = { 0 };
    CHECK_INT(mg_buf_printf(&b, "%s %d", "status", 200), MG_OK); /* from no allocation */
    CHECK_BUF(&b, "status 200");
    CHECK_INT(mg_buf_printf(&b, "|%05x|", 0xbeef), MG_OK);
    CHECK_BUF(&b, "status 200|0beef|");
    CHECK_INT(mg_buf_printf(&b, "%s", ""), MG_OK);
    CHECK_INT(b.len, 17);

    /* Output that does not fit: grows and writes it all, once. */
    char big[3000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_INT(mg_buf_printf(&b, "[%s]", big), MG_OK);
    CHECK_INT(b.len, 17 + 3001);
    CHECK(mg_buf_data(&b)[17] == '[');
    CHECK(mg_buf_data(&b)[17 + 3000] == ']');
    CHECK(mg_buf_data(&b)[17 + 1] == 'z');

    /* Exactly filling the room: vsnprintf wants one more byte for its NUL. */
    mg_buf_t e = { 0 };
    mg_buf_reserve(&e, 1);
    size_t room = mg_buf_room(&e);
    char exact[512];
    memset(exact, 'e', room);
    exact[room] = '\0';
    CHECK_INT(mg_buf_printf(&e, "%s", exact), MG_OK);
    CHECK_INT(e.len, room);
    CHECK(memcmp(mg_buf_data(&e), exact, room) == 0);
    CHECK_INT(mg_buf_printf(&e, "!"), MG_OK);
    CHECK_INT(e.len, room + 1);
    CHECK(mg_buf_data(&e)[room] == '!');
    CHECK(mg_buf_data(&e)[room - 1] == 'e');

    /* After a consume, printf writes after the live bytes. */
    mg_buf_t c = { 0 };
    mg_buf_append(&c, "drop-keep", 9);
    mg_buf_consume(&c, 5);
    CHECK_INT(mg_buf_printf(&c, "+%d", 7), MG_OK);
    CHECK_BUF(&c, "keep+7");
    mg_buf_free(&c);
    mg_buf_free(&e);
    mg_buf_free(&b);
}

/* Out of memory, one rule (buf.h): after a failed append every append
 * fails until the writer rolls back to its mark, so a message is queued
 * whole or not at all. */
static void test_failed_is_sticky(void)
{
    mg_buf_t b = { 0 };
    CHECK_INT(mg_buf_append(&b, "HTTP/1.1 200 OK\r\n", 17), MG_OK);
    size_t mark = b.len;
    CHECK_INT(mg_buf_append(&b, "A: 1\r\n", 6), MG_OK);
    b.failed = 1; /* as a failed realloc leaves it */
    /* small pieces that would fit in the room left are refused too */
    CHECK(mg_buf_room(&b) >= 8);
    CHECK_INT(mg_buf_append(&b, "B: 2\r\n", 6), MG_ENOMEM);
    CHECK_INT(mg_buf_puts(&b, "\r\n"), MG_ENOMEM);
    CHECK_INT(mg_buf_putu(&b, 42), MG_ENOMEM);
    CHECK_INT(mg_buf_printf(&b, "%d", 7), MG_ENOMEM);
    CHECK_INT(mg_buf_reserve(&b, 1), MG_ENOMEM);
    CHECK_INT((int)b.len, (int)mark + 6);
    /* consuming does not clear it: a gap would still be in the stream */
    mg_buf_consume(&b, 3);
    CHECK_INT(mg_buf_append(&b, "x", 1), MG_ENOMEM);
    /* the writer takes its pieces back: appends work again */
    mg_buf_rollback(&b, mark - 3);
    CHECK_INT(b.failed, 0);
    CHECK_INT((int)b.len, (int)mark - 3);
    CHECK_INT(mg_buf_append(&b, "C: 3\r\n", 6), MG_OK);
    CHECK(memcmp(mg_buf_data(&b), "P/1.1 200 OK\r\nC: 3\r\n", b.len) == 0);
    b.failed = 1;
    mg_buf_reset(&b);
    CHECK_INT(b.failed, 0);
    mg_buf_free(&b);
#ifndef __SANITIZE_ADDRESS__
    /* a real allocation failure sets it (ASan aborts on such a size) */
    mg_buf_t big = { 0 };
    CHECK_INT(mg_buf_append(&big, "x", 1), MG_OK);
    CHECK_INT(mg_buf_reserve(&big, (size_t)1 << 62), MG_ENOMEM);
    CHECK_INT(big.failed, 1);
    CHECK_INT(mg_buf_append(&big, "y", 1), MG_ENOMEM);
    mg_buf_free(&big);
#endif
}

int main(void)
{
    RUN(test_failed_is_sticky);
    RUN(test_empty);
    RUN(test_append_and_grow);
    RUN(test_consume);
    RUN(test_compact);
    RUN(test_reserve);
    RUN(test_printf);
    return mgt_done("buf");
}
