/* Writes a config text to a temporary .lua file and loads it with
 * mg_cfg_load in a fresh Lua state, for test_config.c and test_router.c. */
#ifndef MG_TEST_CFGFILE_H
#define MG_TEST_CFGFILE_H

#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct cfgfile {
    char path[64];
    char err[2048];
    lua_State *L;
    mg_cfg_t *cfg;   /* NULL when loading failed; err says why */
} cfgfile_t;

/* Loads `text`; the file stays until cfgfile_close so error lines can be
 * looked at. */
static __attribute__((unused)) mg_cfg_t *cfgfile_load(cfgfile_t *f, const char *text)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "/tmp/mgtest-cfg-XXXXXX.lua");
    int fd = mkstemps(f->path, 4);
    if (fd < 0) {
        perror("mkstemps");
        exit(2);
    }
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n) {
        perror("write");
        exit(2);
    }
    close(fd);
    f->L = luaL_newstate();
    luaL_openlibs(f->L);
    f->cfg = mg_cfg_load(f->L, f->path, f->err, sizeof f->err);
    return f->cfg;
}

static __attribute__((unused)) void cfgfile_close(cfgfile_t *f)
{
    mg_cfg_free(f->cfg);
    f->cfg = NULL;
    if (f->L)
        lua_close(f->L);
    f->L = NULL;
    unlink(f->path);
}

#endif
