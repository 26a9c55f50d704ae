/* The access log line: one per request, text (space-separated, as before)
 * or one JSON object per line (PRODUCT.md "Logs"). A leaf: it formats what
 * req.c hands it into one stack buffer and writes it with one fwrite, so a
 * line costs no allocation. */
#ifndef MG_ACCESSLOG_H
#define MG_ACCESSLOG_H

#include <stdint.h>
#include <stdio.h>

#include "mg.h"

enum { MG_ALOG_TEXT = 0, MG_ALOG_JSON = 1 };

/* What one line says. Every pointer is borrowed for the call. A missing
 * value is NULL (strings) or p == NULL (views): "-" in text, null in JSON. */
typedef struct mg_alog_entry {
    double time;             /* wall clock (s) */
    const char *remote;      /* the client, after trusted_proxies */
    const char *method;      /* "-" when the request was refused before its method was read */
    mg_str_t path;           /* request-target as sent */
    int status;
    uint64_t bytes_sent;     /* head + body queued to the client */
    const char *upstream;    /* "host:port" of the upstream server, or NULL */
    double duration;         /* s */
    const char *route;       /* route name, or NULL */
    mg_str_t request_id;     /* set by the request_id plugin, or p == NULL */
    mg_str_t user_agent;     /* or p == NULL */
    int http_major, http_minor; /* 0.0: unknown */
    int tunnel;              /* the request became a tunnel: the two counts follow */
    uint64_t tunnel_up, tunnel_down; /* bytes relayed client -> upstream, upstream -> client */
} mg_alog_entry_t;

/* Formats e as one line and writes it to f (buffered; the caller flushes).
 * A field is cut after 2 KiB of escaped text, so a line stays whole. */
void mg_alog_write(FILE *f, int format, const mg_alog_entry_t *e);
/* The same line into out[0..cap) without the newline; returns its length.
 * For tests and callers with their own sink. */
size_t mg_alog_format(char *out, size_t cap, int format, const mg_alog_entry_t *e);

#endif
