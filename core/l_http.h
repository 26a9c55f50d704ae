/* Shared by the gw.http binding's files: l_http.c (requests, templates)
 * and l_http_res.c (the response objects). */
#ifndef MG_L_HTTP_H
#define MG_L_HTTP_H

#include "buf.h"
#include "http1.h"

typedef struct lua_State lua_State;

/* Pushes the response for a finished exchange's head and body: a table,
 * or with `lazy` the read-only lazy_headers object. May raise (OOM). */
void mg_lhttp_push_response(lua_State *L, const mg_h1_head_t *h, const mg_buf_t *body, int lazy);
/* Registers the lazy responses' metatable (once per Lua state). */
void mg_lhttp_res_register(lua_State *L);

#endif
