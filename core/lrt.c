#include "lrt.h"
#include "home.h"
#include "l_bindings.h"
#include "log.h"
#include "loop.h"
#include "req.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>


#define HOOK_EVERY 1000  /* instructions between count-hook calls */
#define WATCH_TICK_US 10000 /* CPU time between watchdog ticks */

/* The instruction budget's watchdog. A count hook makes the Lua VM check
 * every instruction it runs (10 to 17% of a Lua plugin's request), and
 * almost every stretch of Lua between two waits is short. So a request's
 * coroutine runs without a hook, and a CPU-time interval timer
 * (ITIMER_VIRTUAL: it only ticks while the worker runs user code, so an
 * idle worker gets no signals) looks at the thread running Lua: one that
 * has been running since the previous tick gets the count hook, which then
 * enforces lua.max_instructions as before. The hook goes again when the
 * stretch ends. lua_sethook may be called from a signal handler (Lua's
 * own lua.c stops scripts that way); these three are the signal handler's
 * view of the loop, the one state outside mg_loop_t. coroutine.resume and
 * coroutine.wrap are wrapped so that watch_co is the thread that runs. */
static lua_State *volatile watch_co;     /* the thread running Lua now, or NULL */
static volatile sig_atomic_t watch_serial; /* stretches started */
static volatile sig_atomic_t watch_seen;   /* the serial the last tick saw */

static void count_hook(lua_State *co, lua_Debug *ar);

static void watch_tick(int sig)
{
    (void)sig;
    lua_State *co = watch_co;
    if (co == NULL)
        return;
    if (watch_seen != watch_serial) {
        watch_seen = watch_serial;
        return;
    }
    if (lua_gethook(co) == NULL)
        lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* Runs `co` as the watched thread until it stops; returns the previous. */
static lua_State *watch_enter(lua_State *co)
{
    lua_State *prev = watch_co;
    watch_serial++;
    watch_co = co;
    return prev;
}

/* The stretch on `co` ended: the hook the watchdog set (if any) goes,
 * unless the thread was caught (killed threads keep checking). */
static void watch_leave(lua_State *co, lua_State *prev, int killed)
{
    watch_co = prev;
    watch_serial++;
    if (!killed && lua_gethook(co) != NULL)
        lua_sethook(co, NULL, 0, 0);
}

void mg_lrt_watch_start(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watch_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    struct itimerval it = { { 0, WATCH_TICK_US }, { 0, WATCH_TICK_US } };
    if (sigaction(SIGVTALRM, &sa, NULL) != 0 || setitimer(ITIMER_VIRTUAL, &it, NULL) != 0)
        mg_log_warn("no Lua watchdog timer; every coroutine carries the count hook");
}

/* coroutine.resume / a coroutine.wrap function (upvalue 1 the base
 * library's, upvalue 2 the thread for wrap): the base library's, with the
 * thread watched while it runs, and the caller's hook (a stretch the
 * watchdog caught) carried into it. */
static int watched_resume(lua_State *L)
{
    lua_State *co = lua_type(L, lua_upvalueindex(2)) == LUA_TTHREAD ? lua_tothread(L, lua_upvalueindex(2))
                                                                   : lua_tothread(L, 1);
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    if (co == NULL || co == L) /* the base library says what is wrong */
        return lua_call(L, n, LUA_MULTRET), lua_gettop(L);
    lua_Hook h = lua_gethook(L);
    if (h != NULL && lua_gethook(co) == NULL)
        lua_sethook(co, h, lua_gethookmask(L), lua_gethookcount(L));
    lua_State *prev = watch_enter(co);
    int st = lua_pcall(L, n, LUA_MULTRET, 0);
    mg_req_t *r = mg_lrt_loop(L)->cur_req;
    int killed = r && r->killed;
    watch_leave(co, prev, killed);
    if (killed && L == r->co && lua_gethook(L) == NULL) /* caught in there: stop here too */
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    if (st != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

static int watched_wrap(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1)); /* the base library's wrap */
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    lua_getupvalue(L, -1, 1); /* its thread */
    lua_pushcclosure(L, watched_resume, 2);
    return 1;
}

static void watch_coroutines(lua_State *L)
{
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "resume");
    lua_pushcclosure(L, watched_resume, 1);
    lua_setfield(L, -2, "resume");
    lua_getfield(L, -1, "wrap");
    lua_pushcclosure(L, watched_wrap, 1);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
}

mg_loop_t *mg_lrt_loop(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

mg_req_t *mg_lrt_current(lua_State *co)
{
    return *(mg_req_t **)lua_getextraspace(co);
}

mg_req_t *mg_lrt_check_yield(lua_State *L, mg_req_t *r, const char *what)
{
    mg_req_t *cur = mg_lrt_current(L);
    if (cur == NULL || cur->co != L || (r != NULL && cur != r) || !lua_isyieldable(L))
        luaL_error(L, "%s needs a request coroutine (not the main thread, a user coroutine, "
                      "a metamethod or another request's coroutine)", what);
    return cur;
}

/* The allocator enforces the per-worker Lua memory limit, but only while
 * plugin code runs: the runtime's own allocations (coroutines, tracebacks,
 * config) must not fail in unprotected places. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mg_loop_t *loop = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        loop->lua_mem -= old;
        return NULL;
    }
    if (loop->lua_limit_on && nsize > old &&
        (loop->lua_oom || loop->lua_mem + (nsize - old) > loop->lua_mem_limit)) {
        /* Stay failed until the resume ends: otherwise every allocation near
         * the limit runs an emergency full GC over the hog's heap. */
        loop->lua_oom = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    loop->lua_mem = loop->lua_mem - old + nsize;
    return p;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int panic(lua_State *L)
{
    mg_log_error("Lua panic: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    abort();
}

/* A plugin that runs too long without yielding: stop it. Yielding is
 * preferred, since pcall cannot catch a yield; where the coroutine cannot
 * yield (inside a C boundary) an error is raised instead, and the next
 * tick tries again. */
static void count_hook(lua_State *co, lua_Debug *ar)
{
    (void)ar;
    mg_loop_t *loop = mg_lrt_loop(co);
    mg_req_t *r = loop->cur_req;
    if (r == NULL || r->script)
        return;
    r->instr_ticks++;
    if (!r->killed && (long)r->instr_ticks * HOOK_EVERY < loop->gen->cfg->lua_max_instructions)
        return;
    if (!r->killed && co == r->co) {
        /* From now on check every instruction, so that the first one run
         * where the coroutine can yield (e.g. right after a pcall caught
         * the error below) yields. Killed threads are never reused. */
        lua_sethook(co, count_hook, LUA_MASKCOUNT, 1);
    }
    r->killed = 1;
    if (co == r->co && lua_isyieldable(co)) {
        /* from a hook lua_yield marks the yield and returns; Lua yields
         * when the hook returns */
        lua_yield(co, 0);
        return;
    }
    luaL_error(co, "execution timeout: plugin exceeded its instruction budget");
}

static int boot(lua_State *L)
{
    mg_loop_t *loop = lua_touserdata(L, 1);
    const mg_home_t *home = lua_touserdata(L, 2);
    luaL_openlibs(L);
    watch_coroutines(L);
    /* package.path: the runtime first */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;", home->lua);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_moongate_core);
    lua_setfield(L, -2, "moongate.core");
    lua_pop(L, 2);
    mg_lbindings_preload(L);
    lua_pushlightuserdata(L, loop);
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_loop");
    lua_pushcfunction(L, traceback);
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_traceback");
    mg_lreq_register(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.runtime");
    lua_call(L, 1, 1);
    lua_pushstring(L, home->plugins);
    lua_setfield(L, -2, "bundled_dir");
    /* runtime._init(ops) takes the private operations and hands back the
     * coroutine bodies; it removes itself, so plugins cannot get them */
    lua_getfield(L, -1, "_init");
    mg_lreq_push_ops(L);
    lua_call(L, 1, 2);
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_run_log");
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_run");
    lua_setfield(L, LUA_REGISTRYINDEX, "mg_runtime");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.gw");
    lua_call(L, 1, 0);
    return 0;
}

lua_State *mg_lrt_new(mg_loop_t *loop)
{
    mg_home_t *home = malloc(sizeof *home);
    if (home == NULL)
        return NULL;
    if (mg_home_find(home) != 0) {
        mg_log_error("cannot find the bundled Lua runtime in %s: %s", home->lua, home->from);
        free(home);
        return NULL;
    }
    lua_State *L = lua_newstate(l_alloc, loop);
    if (L == NULL) {
        free(home);
        return NULL;
    }
    lua_atpanic(L, panic);
    *(mg_req_t **)lua_getextraspace(L) = NULL;
    /* match functions run on the main thread: the budget applies there too */
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
    lua_pushcfunction(L, boot);
    lua_pushlightuserdata(L, loop);
    lua_pushlightuserdata(L, home);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        mg_log_error("cannot start the Lua runtime (from %s): %s", home->lua,
                     lua_tostring(L, -1));
        lua_close(L);
        free(home);
        return NULL;
    }
    free(home);
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_run");
    loop->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_run_log");
    loop->run_log_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return L;
}

void mg_lrt_close(lua_State *L)
{
    if (L)
        lua_close(L);
}

/* --- coroutines ----------------------------------------------------------- */

/* The wait timer of `moongate --script`'s pseudo request (a request's own
 * is the request layer's: mg_req_lua_start). */
static void script_wake_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    int ctx_ref;
    mg_lrt_resume(w->data, 0, &ctx_ref);
}

static lua_State *get_thread(mg_loop_t *loop, int *ref)
{
    lua_State *L = loop->L;
    if (loop->nthreads > 0) {
        *ref = loop->threads[--loop->nthreads];
        lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
        lua_State *co = lua_tothread(L, -1);
        lua_pop(L, 1);
        return co;
    }
    lua_State *co = lua_newthread(L);
    lua_sethook(co, NULL, 0, 0); /* not the main thread's: the watchdog sets one */
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return co;
}

static void drop_thread(mg_req_t *r, int reusable)
{
    mg_loop_t *loop = r->loop;
    lua_State *co = r->co;
    if (co == NULL)
        return;
    /* The req/res objects die with the coroutine: a GC may free their
     * userdata from now on, so stop pointing at it. */
    if (r->lua_handle)
        *r->lua_handle = NULL;
    if (r->res_handle)
        *r->res_handle = NULL;
    r->lua_handle = r->res_handle = NULL;
    if (!r->script)
        loop->stats.lua_busy--;
    *(mg_req_t **)lua_getextraspace(co) = NULL;
    if (reusable && loop->nthreads < MG_THREAD_CACHE) {
        lua_settop(co, 0);
        loop->threads[loop->nthreads++] = r->co_ref;
    } else {
        lua_resetthread(co); /* runs pending __close handlers, catches errors */
        luaL_unref(loop->L, LUA_REGISTRYINDEX, r->co_ref);
    }
    r->co = NULL;
    r->co_ref = LUA_NOREF;
    if (loop->lua_gc_pending) {
        loop->lua_gc_pending = 0;
        lua_gc(loop->L, LUA_GCCOLLECT, 0);
    }
}

/* Runs runtime function `fn_ref`(req, chain) in a fresh coroutine; a
 * `ctx_ref` other than LUA_NOREF becomes req.ctx (and is released).
 * Returns the first run's outcome (mg_lrt_resume). */
static int start_co(mg_req_t *r, int fn_ref, int chain_ref, int ctx_ref, int *out_ctx)
{
    mg_loop_t *loop = r->loop;
    int ref;
    lua_State *co = get_thread(loop, &ref);
    *(mg_req_t **)lua_getextraspace(co) = r;
    r->co = co;
    r->co_ref = ref;
    loop->stats.lua_busy++;
    lua_rawgeti(co, LUA_REGISTRYINDEX, fn_ref);
    mg_lreq_push(co, r);
    if (ctx_ref != LUA_NOREF) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, ctx_ref);
        lua_setiuservalue(co, -2, 1);
        luaL_unref(loop->L, LUA_REGISTRYINDEX, ctx_ref);
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, chain_ref);
    return mg_lrt_resume(r, 2, out_ctx);
}

int mg_lrt_start(mg_req_t *r, int chain_ref, int *ctx_ref)
{
    return start_co(r, r->loop->run_ref, chain_ref, LUA_NOREF, ctx_ref);
}

/* Takes req.ctx out of a coroutine that failed (dead after an error, or
 * suspended by the instruction budget), before it is reset: the first
 * local of its outermost frame, runtime.run, is the req object. Returns a
 * registry ref to the table, or LUA_NOREF. Error path only. */
static int save_ctx(mg_req_t *r)
{
    lua_State *co = r->co;
    lua_Debug ar;
    int level = 0;
    while (lua_getstack(co, level + 1, &ar))
        level++;
    if (!lua_getstack(co, level, &ar) || !lua_checkstack(co, 2))
        return LUA_NOREF;
    if (lua_getlocal(co, &ar, 1) == NULL)
        return LUA_NOREF;
    if (luaL_testudata(co, -1, "moongate.req") == NULL) {
        lua_pop(co, 1);
        return LUA_NOREF;
    }
    if (lua_getiuservalue(co, -1, 1) != LUA_TTABLE) {
        lua_pop(co, 2);
        return LUA_NOREF;
    }
    lua_xmove(co, r->loop->L, 1);
    lua_pop(co, 1);
    return luaL_ref(r->loop->L, LUA_REGISTRYINDEX);
}

/* After a Lua error was answered with a 500, the route's log plugins still
 * see the request (with res.status 500), as OpenResty's log_by_lua does after
 * an error in access_by_lua. The failed coroutine is gone (its stack may be
 * anywhere), so they run in a new one, with a fresh instruction budget. Only
 * once per request: an error in that run is just logged. */
int mg_lrt_start_log(mg_req_t *r, int chain_ref, int ctx_ref, int *out_ctx)
{
    r->log_after_error = 1;
    r->killed = 0;
    return start_co(r, r->loop->run_log_ref, chain_ref, ctx_ref, out_ctx);
}

void mg_lrt_wait(mg_req_t *r, int kind, void (*cancel)(mg_req_t *r))
{
    r->wait.armed = 1;
    r->wait.kind = kind;
    r->wait.cancel = cancel;
    r->wait.status = MG_OK;
    r->wait.err = NULL;
}

/* The coroutine failed: log why with its traceback and keep its req.ctx for
 * the log phase that may follow (*ctx_ref). What the client gets is the
 * request layer's business; it drops the coroutine (mg_lrt_abort) once it
 * answered, so the request is not freed under it meanwhile. */
static int failed(mg_req_t *r, const char *what, const char *msg, int *ctx_ref)
{
    mg_loop_t *loop = r->loop;
    lua_State *L = loop->L;
    luaL_traceback(L, r->co, msg, 0);
    const char *route = r->route >= 0 ? r->gen->cfg->routes[r->route].name : "?";
    mg_log_error("route %s: %s: %s", route, what, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!r->log_after_error)
        *ctx_ref = save_ctx(r);
    return MG_LRT_FAILED;
}

static void script_step(mg_req_t *r, int st, int nres)
{
    mg_loop_t *loop = r->loop;
    lua_State *co = r->co;
    if (st == LUA_YIELD) {
        lua_pop(co, nres);
        if (r->wait.armed)
            return;
        fprintf(stderr, "script yielded outside a gw call\n");
        loop->exit_code = 1;
    } else if (st != LUA_OK) {
        luaL_traceback(loop->L, co, lua_tostring(co, -1), 0);
        fprintf(stderr, "%s\n", lua_tostring(loop->L, -1));
        lua_pop(loop->L, 1);
        loop->exit_code = 1;
    } else if (nres > 0 && lua_isinteger(co, -nres)) {
        loop->exit_code = (int)lua_tointeger(co, -nres);
    } else if (nres > 0 && lua_isboolean(co, -nres)) {
        loop->exit_code = lua_toboolean(co, -nres) ? 0 : 1;
    }
    drop_thread(r, 0);
    ev_break(loop->ev, EVBREAK_ALL);
}

int mg_lrt_script(mg_loop_t *loop, const char *file, int argc, char **argv)
{
    lua_State *L = loop->L;
    lua_createtable(L, argc, 1);
    lua_pushstring(L, file);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    mg_req_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return -1;
    r->loop = loop;
    r->script = 1;
    r->route = -1;
    r->done = 1;
    ev_init(&r->wait.timer, script_wake_cb);
    r->wait.timer.data = r;
    int ref;
    lua_State *co = get_thread(loop, &ref);
    lua_sethook(co, NULL, 0, 0);
    if (luaL_loadfile(co, file) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(co, -1));
        free(r);
        return -1;
    }
    *(mg_req_t **)lua_getextraspace(co) = r;
    r->co = co;
    r->co_ref = ref;
    loop->script = r;
    for (int i = 0; i < argc; i++)
        lua_pushstring(co, argv[i]);
    int ctx_ref;
    mg_lrt_resume(r, argc, &ctx_ref);
    return 0;
}

int mg_lrt_resume(mg_req_t *r, int nargs, int *ctx_ref)
{
    mg_loop_t *loop = r->loop;
    lua_State *co = r->co;
    *ctx_ref = LUA_NOREF;
    r->wait.armed = 0;
    r->wait.cancel = NULL;
    r->in_lua = 1;
    r->instr_ticks = 0;
    mg_req_t *prev = loop->cur_req;
    int prev_limit = loop->lua_limit_on;
    loop->cur_req = r;
    loop->lua_mem_limit = r->gen ? r->gen->cfg->lua_memory_limit : (size_t)1 << 40;
    loop->lua_limit_on = 1;
    loop->lua_oom = 0;
    int nres = 0;
    lua_State *watch_prev = r->script ? NULL : watch_enter(co);
    int st = lua_resume(co, NULL, nargs, &nres);
    if (!r->script)
        watch_leave(co, watch_prev, r->killed);
    loop->lua_limit_on = prev_limit;
    loop->lua_oom = 0;
    loop->cur_req = prev;
    r->in_lua = 0;

    if (r->script) {
        script_step(r, st, nres);
        return MG_LRT_GONE;
    }
    if (r->lua_dead) {
        drop_thread(r, 0);
        return MG_LRT_GONE;
    }
    if (st == LUA_YIELD && !r->killed) {
        lua_pop(co, nres);
        if (r->wait.armed)
            return MG_LRT_WAITING;
        return failed(r, "plugin error",
                      "a request coroutine yielded outside a gw call "
                      "(coroutine.yield at the top of a plugin?)", ctx_ref);
    }
    if (st == LUA_YIELD || st != LUA_OK) {
        const char *msg = st == LUA_YIELD ? "execution timeout: plugin exceeded its instruction budget"
                                          : lua_tostring(co, -1);
        failed(r, r->killed ? "plugin stopped" : "plugin error",
               msg ? msg : "(error object is not a string)", ctx_ref);
        if (st == LUA_ERRMEM)
            loop->lua_gc_pending = 1; /* the hog's heap goes with its coroutine */
        return MG_LRT_FAILED;
    }
    drop_thread(r, 1);
    return MG_LRT_FINISHED;
}

void mg_lrt_abort(mg_req_t *r)
{
    if (r->wait.armed) {
        ev_timer_stop(r->loop->ev, &r->wait.timer);
        if (r->wait.cancel)
            r->wait.cancel(r);
        r->wait.armed = 0;
        r->wait.cancel = NULL;
    }
    if (r->co == NULL)
        return;
    if (r->in_lua) {
        r->lua_dead = 1; /* mg_lrt_resume drops it when lua_resume returns */
        return;
    }
    drop_thread(r, 0);
}

/* --- synchronous calls ---------------------------------------------------- */

int mg_lrt_match(mg_req_t *r, int ref)
{
    lua_State *L = r->loop->L;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_traceback");
    int h = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    mg_lreq_push(L, r);
    r->in_lua = 1;
    r->loop->cur_req = r;
    int rc = lua_pcall(L, 1, 1, h);
    r->loop->cur_req = NULL;
    r->in_lua = 0;
    if (r->lua_handle) { /* the match function's req object ends here */
        *r->lua_handle = NULL;
        r->lua_handle = NULL;
    }
    int ok = 0;
    if (rc != LUA_OK) {
        mg_log_error("route match function failed: %s", lua_tostring(L, -1));
        ok = -1;
    } else {
        ok = lua_toboolean(L, -1);
    }
    lua_settop(L, top);
    return ok;
}
