/* Strict RFC 9112 framing of requests, checked on the raw bytes before
 * llhttp sees them. llhttp 8.1 (Debian's) is lenient where a proxy must not
 * be: a bare CR ends a header block, a bare LF ends the request line or the
 * head, and any two bytes after a chunk's data are taken as its CRLF. The
 * parser in http1.c feeds llhttp only bytes this checker has accepted, and
 * splits llhttp's input where the checker says a head or a chunked body
 * ends, so the two always agree on where a message ends (CVE-2023-30589
 * class). No I/O, no allocation; a few bytes of state. */
#ifndef MG_H1FRAME_H
#define MG_H1FRAME_H

#include <stddef.h>
#include <stdint.h>

enum {
    MG_H1F_MORE = 0, /* all bytes are fine, the head or body goes on */
    MG_H1F_END = 1,  /* the head or chunked body ends inside the bytes */
    MG_H1F_BAD = -1, /* a byte breaks the framing: 400 */
};

typedef struct mg_h1f {
    uint64_t left;      /* chunk data bytes still to come */
    uint8_t st;         /* state (h1frame.c) */
    uint8_t cr;         /* head: the previous byte was a CR */
    uint8_t bol;        /* head: at the start of a line */
    uint8_t started;    /* head: the request line is complete */
    const char *why;    /* reason of MG_H1F_BAD (static string) */
} mg_h1f_t;

/* Starts checking a new message head (and the empty lines before it). */
void mg_h1f_head_start(mg_h1f_t *f);
/* Checks head bytes p[0..n). Lines end with CRLF and nothing else; no CR
 * or LF elsewhere; no line folding. Returns MG_H1F_END with *used = bytes up
 * to and including the head's final LF, MG_H1F_MORE with *used = n, or
 * MG_H1F_BAD with *used = the offset of the offending byte and f->why. */
int mg_h1f_head(mg_h1f_t *f, const char *p, size_t n, size_t *used);

/* Starts checking a chunked body. */
void mg_h1f_chunked_start(mg_h1f_t *f);
/* Checks chunked-body bytes p[0..n) (RFC 9112 7.1): hex size, extensions
 * made of tokens and quoted strings, CRLF, exactly `size` data bytes then
 * CRLF, the last chunk, trailer lines, the final CRLF. Results as for
 * mg_h1f_head; MG_H1F_END's *used ends at the final LF. */
int mg_h1f_chunked(mg_h1f_t *f, const char *p, size_t n, size_t *used);

#endif
