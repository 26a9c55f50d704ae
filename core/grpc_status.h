/* gRPC's way of failing a call, for the answers the gateway or a plugin
 * makes to a gRPC request (PRODUCT.md "Errors users see"): which
 * grpc-status an HTTP error becomes, and the grpc-message text. Pure
 * helpers (no request, no I/O); req.c builds the answer with them. */
#ifndef MG_GRPC_STATUS_H
#define MG_GRPC_STATUS_H

#include <stddef.h>

#include "buf.h"
#include "mg.h"

/* grpc-message carries at most this many bytes of text (before
 * percent-encoding); a longer message is cut at a UTF-8 boundary. */
#define MG_GRPC_MESSAGE_MAX 512

/* 1 if a request with this Content-Type value is a gRPC call: it starts
 * with "application/grpc" (any case), so "application/grpc+proto" and
 * gRPC-Web's types count too. */
int mg_grpc_is_call(mg_str_t ctype);

/* The grpc-status code of an HTTP error status (>= 400): 401 -> 16
 * UNAUTHENTICATED, 403 -> 7 PERMISSION_DENIED, 429 -> 8
 * RESOURCE_EXHAUSTED, 404 -> 12 UNIMPLEMENTED, 502/503 -> 14 UNAVAILABLE,
 * 504 -> 4 DEADLINE_EXCEEDED, any other -> 13 INTERNAL. */
int mg_grpc_code(int http_status);

/* Appends to o the grpc-message value for an answer whose body is
 * body[0..n): the "error" string of a JSON object body (the gateway's
 * {"error": "..."} and the bundled plugins' answers), else the body's
 * text, else `fallback` (the reason phrase) when the body is empty. At
 * most MG_GRPC_MESSAGE_MAX bytes of text, percent-encoded as gRPC's HTTP/2
 * protocol spec says. o->failed on out of memory (buf.h). */
void mg_grpc_message(mg_buf_t *o, const char *body, size_t n, const char *fallback);

/* Appends s[0..n) percent-encoded: every byte outside 0x20..0x7E, and
 * '%', as %XX (upper-case hex). */
void mg_grpc_pct_encode(mg_buf_t *o, const char *s, size_t n);

#endif
