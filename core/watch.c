/* Dev mode (watch = true): polls the config file and every plugin file
 * the generation loaded, and reloads once an edit settles. */
#include "worker.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>

static void add_plugin_watches(mg_loop_t *loop);

static void watch_fire(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    char err[1024];
    mg_log_info("watch: a config or plugin file changed; reloading");
    mg_loop_request_reload(loop, err, sizeof err);
}

/* A file's identity for change detection: libev's ev_stat compares whole
 * seconds, which misses a quick same-size save, so we poll ourselves. */
static void stat_sig(const char *path, mg_watch_t *w)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        memset(&w->sig, 0, sizeof w->sig);
        return;
    }
    w->sig.ino = st.st_ino;
    w->sig.size = st.st_size;
    w->sig.sec = st.st_mtim.tv_sec;
    w->sig.nsec = st.st_mtim.tv_nsec;
}

static void watch_poll(struct ev_loop *ev, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    int changed = 0;
    for (int i = 0; i < loop->nwatch; i++) {
        mg_watch_t now = loop->watch[i];
        stat_sig(loop->watch[i].path, &now);
        if (memcmp(&now.sig, &loop->watch[i].sig, sizeof now.sig) != 0) {
            loop->watch[i].sig = now.sig;
            changed = 1;
        }
    }
    if (changed) {
        /* editors write in several steps: reload once things settle */
        ev_timer_stop(ev, &loop->watch_debounce);
        ev_timer_set(&loop->watch_debounce, 0.2, 0.);
        ev_timer_start(ev, &loop->watch_debounce);
    }
}

static void add_watch(mg_loop_t *loop, const char *path)
{
    if (loop->nwatch == MG_MAX_WATCH)
        return;
    for (int i = 0; i < loop->nwatch; i++)
        if (strcmp(loop->watch[i].path, path) == 0)
            return;
    char *copy = strdup(path);
    if (copy == NULL)
        return;
    mg_watch_t *w = &loop->watch[loop->nwatch++];
    w->path = copy;
    stat_sig(copy, w);
}

void mg_worker_clear_watch(mg_loop_t *loop)
{
    for (int i = 0; i < loop->nwatch; i++)
        free(loop->watch[i].path);
    loop->nwatch = 0;
    if (loop->ev)
        ev_timer_stop(loop->ev, &loop->watch_timer);
}

/* Watches the config file and every plugin file the generation loaded.
 * Only one process watches (worker 0, or the single process). */
void mg_worker_setup_watch(mg_loop_t *loop)
{
    if (loop->ev == NULL || loop->worker_index != 0 || loop->script)
        return;
    /* keep the files' last known state across the reload, so an edit
     * made while reloading is still seen */
    mg_watch_t keep[MG_MAX_WATCH];
    int nkeep = loop->nwatch;
    for (int i = 0; i < nkeep; i++) {
        keep[i] = loop->watch[i];
        keep[i].path = strdup(loop->watch[i].path);
    }
    mg_worker_clear_watch(loop);
    if (loop->gen->cfg->watch) {
        ev_init(&loop->watch_debounce, watch_fire);
        add_watch(loop, loop->config_file);
        for (int i = 0; i < loop->gen->cfg->nfiles; i++)
            add_watch(loop, loop->gen->cfg->files[i]);
        add_plugin_watches(loop);
        for (int i = 0; i < loop->nwatch; i++)
            for (int k = 0; k < nkeep; k++)
                if (keep[k].path && strcmp(keep[k].path, loop->watch[i].path) == 0)
                    loop->watch[i].sig = keep[k].sig;
        ev_timer_init(&loop->watch_timer, watch_poll, 0.25, 0.25);
        ev_timer_start(loop->ev, &loop->watch_timer);
    }
    for (int i = 0; i < nkeep; i++)
        free(keep[i].path);
}

static void add_plugin_watches(mg_loop_t *loop)
{
    lua_State *L = loop->L;
    lua_getfield(L, LUA_REGISTRYINDEX, "mg_runtime");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "loaded_files");
        if (lua_istable(L, -1)) {
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_isstring(L, -1))
                    add_watch(loop, lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}
