/* The Lua runtime: the worker's one lua_State, and calls from requests into
 * Lua (route match functions, handlers). C enters Lua only through
 * protected calls here. */
#ifndef MG_LRT_H
#define MG_LRT_H

typedef struct lua_State lua_State;
typedef struct mg_req mg_req_t;
typedef struct mg_loop mg_loop_t;

/* A new state with the standard libraries and the traceback handler. */
lua_State *mg_lrt_new(mg_loop_t *loop);
void mg_lrt_close(lua_State *L);
/* Calls a route's match function with the request: 1 if it matched. A Lua
 * error answers the request 500 (the caller checks r->done). */
int mg_lrt_match(mg_req_t *r, int ref);
/* Runs a handler route: function(req) returning status, body[, headers]. */
void mg_lrt_handle(mg_req_t *r, int ref);

#endif
