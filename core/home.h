/* Where the bundled Lua runtime (lua/) and plugins (plugins/) are, found at
 * run time so an installed tree can be moved: MOONGATE_HOME, else the
 * folder next to the binary (PREFIX/bin/moongate -> PREFIX/share/moongate),
 * else, for a binary run from its build tree, the source tree.
 * MOONGATE_LUA_DIR and MOONGATE_PLUGIN_DIR override each part. */
#ifndef MG_HOME_H
#define MG_HOME_H

#define MG_HOME_PATH_MAX 4096

typedef struct {
    char lua[MG_HOME_PATH_MAX];     /* holds moongate/runtime.lua */
    char plugins[MG_HOME_PATH_MAX]; /* the bundled plugins */
    const char *from;               /* how it was found, for --help and errors */
} mg_home_t;

/* Startup only (it reads the file system). Returns 0, or -1 when the
 * runtime is nowhere: h then names where it was expected and from says
 * what to do, for the error message. */
int mg_home_find(mg_home_t *h);

#endif
