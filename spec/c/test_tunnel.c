/* Unit tests for the WebSocket frame boundaries core/tunnel.c tracks (a
 * graceful stop inserts its 1001 close frame only between frames): every
 * length encoding, masked and not, whole and one byte at a time, and the
 * close opcode. No loop and no sockets. */
#include "mgtest.h"

#include "../../core/tunnel.c"

/* Appends a frame header for opcode/len (masked: 4 key bytes) and len
 * payload bytes to out; returns the new length. */
static size_t put_frame(unsigned char *out, size_t at, int opcode, uint64_t len, int masked)
{
    out[at++] = (unsigned char)(0x80 | opcode);
    unsigned char m = masked ? 0x80 : 0;
    if (len < 126) {
        out[at++] = (unsigned char)(m | len);
    } else if (len < 65536) {
        out[at++] = m | 126;
        out[at++] = (unsigned char)(len >> 8);
        out[at++] = (unsigned char)len;
    } else {
        out[at++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[at++] = (unsigned char)(len >> (8 * i));
    }
    if (masked)
        for (int i = 0; i < 4; i++)
            out[at++] = (unsigned char)(0x11 * (i + 1));
    memset(out + at, 'x', (size_t)len);
    return at + (size_t)len;
}

static unsigned char buf[3 * 70000 + 256];

static void test_lengths_whole_and_bytewise(void)
{
    const uint64_t lens[] = { 0, 1, 125, 126, 127, 65535, 65536, 70000 };
    for (int masked = 0; masked < 2; masked++) {
        for (size_t k = 0; k < MG_ARRAY_LEN(lens); k++) {
            size_t n = put_frame(buf, 0, 0x2, lens[k], masked);
            wsf_t f = { 0 };
            wsf_feed(&f, buf, n);
            CHECK(wsf_between(&f));
            CHECK(!f.closed);
            /* byte by byte: between frames only at the very end */
            wsf_t g = { 0 };
            int early = 0;
            for (size_t i = 0; i < n; i++) {
                wsf_feed(&g, buf + i, 1);
                if (i + 1 < n && wsf_between(&g))
                    early = 1;
            }
            CHECK(!early);
            CHECK(wsf_between(&g));
        }
    }
}

static void test_several_frames_and_close(void)
{
    size_t n = put_frame(buf, 0, 0x1, 5, 1);
    size_t a = n;
    n = put_frame(buf, n, 0x9, 3, 1);  /* ping */
    n = put_frame(buf, n, 0x0, 70000, 1);
    size_t before_close = n;
    n = put_frame(buf, n, 0x8, 2, 1);
    wsf_t f = { 0 };
    wsf_feed(&f, buf, a);
    CHECK(wsf_between(&f));
    wsf_feed(&f, buf + a, before_close - a - 10); /* inside the 70000-byte frame */
    CHECK(!wsf_between(&f));
    CHECK(!f.closed);
    wsf_feed(&f, buf + before_close - 10, 10);
    CHECK(wsf_between(&f));
    wsf_feed(&f, buf + before_close, 1); /* half a header */
    CHECK(!wsf_between(&f));
    wsf_feed(&f, buf + before_close + 1, n - before_close - 1);
    CHECK(wsf_between(&f));
    CHECK(f.closed);
}

int main(void)
{
    RUN(test_lengths_whole_and_bytewise);
    RUN(test_several_frames_and_close);
    return mgt_done("tunnel");
}
