/* The Lua runtime: the worker's one lua_State (with a memory limit), request
 * coroutines and the one yield/resume mechanism every waiting binding uses
 * (STYLE.md b). C enters Lua only through mg_lrt_resume (lua_resume is
 * protected) or through protected calls for config and match functions. */
#ifndef MG_LRT_H
#define MG_LRT_H

typedef struct lua_State lua_State;
typedef struct mg_req mg_req_t;
typedef struct mg_loop mg_loop_t;

/* A new state: standard libraries, the runtime (lua/moongate), the gw
 * module, the traceback handler. NULL on failure (logged). */
lua_State *mg_lrt_new(mg_loop_t *loop);
void mg_lrt_close(lua_State *L);
/* Starts the instruction budget's watchdog timer (lrt.c) in the process
 * that runs requests: a worker, after the fork (timers are not inherited). */
void mg_lrt_watch_start(void);

/* What running a request coroutine came to (ngx-lua's run_thread model):
 * lrt runs Lua and reports; the request layer (req_lua.c) decides what the
 * client gets. */
enum {
    MG_LRT_WAITING = 0, /* yielded with its wait slot armed */
    MG_LRT_FINISHED,    /* ran to its end; the coroutine is gone */
    MG_LRT_FAILED,      /* Lua error, stray yield or instruction budget: logged
                         * with a traceback; the caller answers, then drops the
                         * coroutine with mg_lrt_abort */
    MG_LRT_GONE,        /* dropped because the request was aborted while Lua
                         * ran, or a --script step (handled here) */
};

/* Starts r's coroutine on the route's chain (a registry ref); returns the
 * outcome of its first run. The wait timer (r->wait.timer) must be set up
 * by the caller. On MG_LRT_FAILED, *ctx_ref is a registry ref to the
 * failed run's req.ctx (or LUA_NOREF): the caller passes it on to
 * mg_lrt_start_log or releases it. */
int mg_lrt_start(mg_req_t *r, int chain_ref, int *ctx_ref);
/* Runs the route's log phase in a new coroutine after a failure; ctx_ref
 * (taken over) becomes its req.ctx. Once per request. */
int mg_lrt_start_log(mg_req_t *r, int chain_ref, int ctx_ref, int *out_ctx);
/* The only caller of lua_resume. nargs values are on the coroutine's stack.
 * Never calls the request or connection layers: the caller acts on the
 * outcome (mg_req_resume does). */
int mg_lrt_resume(mg_req_t *r, int nargs, int *ctx_ref);
/* Arms r's pending-operation slot before a binding yields. `cancel` runs if
 * the request is aborted while waiting (NULL: nothing beyond the timer). */
void mg_lrt_wait(mg_req_t *r, int kind, void (*cancel)(mg_req_t *r));
/* The request ended under the coroutine (client gone): cancel the wait and
 * drop the coroutine, or mark it for dropping when inside Lua. Reached
 * through r->lua_abort (set by the request layer when Lua starts). */
void mg_lrt_abort(mg_req_t *r);
/* The request a coroutine runs, or NULL (main thread, user coroutines). */
mg_req_t *mg_lrt_current(lua_State *co);
/* The request whose own coroutine L is, when L can yield there; raises
 * "`what` needs a request coroutine" otherwise (the main thread: config
 * load and route match functions; a user coroutine; a metamethod or other
 * C boundary). Every binding that yields checks this before any side
 * effect. With `r` non-NULL, L must also be r's coroutine (a req object
 * kept from another request). may raise */
mg_req_t *mg_lrt_check_yield(lua_State *L, mg_req_t *r, const char *what);
/* Calls a route's match function synchronously: 1 if it matched, 0 if
 * not, -1 if it raised (logged). */
int mg_lrt_match(mg_req_t *r, int ref);
/* The loop a binding runs in (from the allocator's user data). */
mg_loop_t *mg_lrt_loop(lua_State *L);

/* `moongate --script FILE ARGS`: runs FILE as a coroutine inside the loop
 * (gw.sleep and the other waiting calls work), sets loop->exit_code from its
 * result and stops the loop when it ends. 0, or -1 if it could not start. */
int mg_lrt_script(mg_loop_t *loop, const char *file, int argc, char **argv);

/* Bindings (one Lua module each). */
int luaopen_moongate_core(lua_State *L);
/* Registers the req/res metatables; pushes nothing. */
void mg_lreq_register(lua_State *L);
/* Pushes the table of the runtime's private operations on req objects
 * (proxy, wait_done, ...): given to lua/moongate/runtime.lua once at boot,
 * never reachable from plugin code. */
void mg_lreq_push_ops(lua_State *L);
/* Pushes a new req object for r (a userdata with ctx/res slots). */
void mg_lreq_push(lua_State *co, mg_req_t *r);
/* The request of the req object at idx (for bindings that take one), or
 * NULL if the value is not a req object. Raises "request finished" when
 * its request has ended. */
mg_req_t *mg_lreq_to(lua_State *L, int idx);

#endif
