/* The request layer's side of the Lua runtime: starts and resumes a
 * request's coroutine through lrt, then acts on what the run came to
 * (ngx-lua's run_thread returning to its caller). lrt only runs Lua and
 * reports; here a failure becomes a 500 (or cuts off a response already
 * started), the route's log phase runs after an error, the connection goes
 * on to its next request once Lua has returned, and the request is freed
 * when nothing holds it any more. */
#include "log.h"
#include "lrt.h"
#include "req.h"

#include <lauxlib.h>
#include <lua.h>

/* The wait slot's timer: gw.sleep's delay, and mg_req_wake's zero-delay
 * wake-ups. */
static void wake_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_req_resume(w->data, 0);
}

/* A run failed (logged by lrt): the client gets a 500 if nothing was sent
 * yet, else the connection is cut (a half-sent response cannot be fixed). */
static void answer_failure(mg_req_t *r)
{
    if (!r->done && !mg_rs_sent(r)) {
        mg_rs_drop_held(r);
        mg_req_error(r, 500, "internal error");
    } else if (!r->done) {
        mg_req_cut(r);
    }
}

/* Acts on the outcome of one run of r's coroutine (and, after a failure,
 * of the log phase's first run). May free r. */
static void settle(mg_req_t *r, int out, int ctx_ref)
{
    for (;;) {
        mg_req_release_conn(r); /* finished inside Lua: conn goes on now */
        if (out == MG_LRT_WAITING)
            return;
        if (out == MG_LRT_FINISHED && !r->done && r->up == NULL && !mg_rs_held(r) && !r->tunnel) {
            mg_log_error("route %s: the request coroutine ended without a response",
                         r->route >= 0 ? r->gen->cfg->routes[r->route].name : "?");
            mg_req_error(r, 500, "internal error");
        }
        if (out != MG_LRT_FAILED)
            break;
        answer_failure(r); /* r cannot be freed yet: the coroutine holds it */
        mg_lrt_abort(r);
        if (r->log_after_error || r->aborted || !r->done || r->route < 0 ||
            r->gen->cfg->routes[r->route].chain_ref < 0)
            break;
        out = mg_lrt_start_log(r, r->gen->cfg->routes[r->route].chain_ref, ctx_ref, &ctx_ref);
    }
    if (ctx_ref != LUA_NOREF)
        luaL_unref(r->loop->L, LUA_REGISTRYINDEX, ctx_ref);
    mg_req_maybe_free(r);
}

void mg_req_lua_start(mg_req_t *r, int chain_ref)
{
    ev_init(&r->wait.timer, wake_cb);
    r->wait.timer.data = r;
    r->lua_abort = mg_lrt_abort;
    int ctx_ref;
    int out = mg_lrt_start(r, chain_ref, &ctx_ref);
    settle(r, out, ctx_ref);
}

void mg_req_resume(mg_req_t *r, int nargs)
{
    int ctx_ref;
    int out = mg_lrt_resume(r, nargs, &ctx_ref);
    if (r->script)
        return; /* lrt ran the script's step to its end */
    settle(r, out, ctx_ref);
}

int mg_req_lua_match(mg_req_t *r, int ref)
{
    int rc = mg_lrt_match(r, ref);
    if (rc < 0)
        mg_req_error(r, 500, "internal error");
    mg_req_release_conn(r); /* answered inside the match function */
    return rc > 0;
}
