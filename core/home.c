#include "home.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MG_HOME_REL
#define MG_HOME_REL "../share/moongate" /* from the bin folder, set by CMake */
#endif

static int has_runtime(const char *lua_dir)
{
    char p[MG_HOME_PATH_MAX + 32];
    struct stat st;
    snprintf(p, sizeof p, "%s/moongate/runtime.lua", lua_dir);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int set_home(mg_home_t *h, const char *home, const char *from)
{
    int a = snprintf(h->lua, sizeof h->lua, "%s/lua", home);
    int b = snprintf(h->plugins, sizeof h->plugins, "%s/plugins", home);
    h->from = from;
    return a > 0 && (size_t)a < sizeof h->lua && b > 0 && (size_t)b < sizeof h->plugins;
}

/* The folder of the running binary (resolved: symlinks followed). */
static int exe_dir(char *out, size_t n)
{
    ssize_t len = readlink("/proc/self/exe", out, n - 1);
    if (len <= 0)
        return -1;
    out[len] = '\0';
    char *slash = strrchr(out, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    return 0;
}

/* True when dir is `top` or below it. */
static int under(const char *dir, const char *top)
{
    char real[PATH_MAX];
    if (realpath(top, real) == NULL)
        return 0;
    size_t n = strlen(real);
    return strncmp(dir, real, n) == 0 && (dir[n] == '\0' || dir[n] == '/');
}

static int find_home(mg_home_t *h)
{
    const char *env = getenv("MOONGATE_HOME");
    if (env && *env) {
        if (!set_home(h, env, "from MOONGATE_HOME"))
            return -1;
        if (has_runtime(h->lua))
            return 0;
        h->from = "MOONGATE_HOME names a folder without lua/moongate/runtime.lua";
        return -1;
    }
    char dir[PATH_MAX];
    if (exe_dir(dir, sizeof dir) != 0) {
        set_home(h, "/usr/local/share/moongate", "");
        h->from = "cannot read /proc/self/exe; set MOONGATE_HOME";
        return -1;
    }
    char rel[PATH_MAX + sizeof MG_HOME_REL + 1], real[PATH_MAX];
    snprintf(rel, sizeof rel, "%s/%s", dir, MG_HOME_REL);
    if (realpath(rel, real) && set_home(h, real, "next to the binary") && has_runtime(h->lua))
        return 0;
#if defined(MG_SOURCE_DIR) && defined(MG_BUILD_DIR)
    /* a binary of the build tree (or a test program in it) uses the sources */
    if (under(dir, MG_BUILD_DIR) &&
        set_home(h, MG_SOURCE_DIR, "in the source tree, for a build-tree binary") &&
        has_runtime(h->lua))
        return 0;
#else
    (void)under;
#endif
    set_home(h, rel, "");
    h->from = "not installed next to the binary; set MOONGATE_HOME to the folder "
              "holding lua/ and plugins/";
    return -1;
}

int mg_home_find(mg_home_t *h)
{
    int rc = find_home(h);
    const char *lua = getenv("MOONGATE_LUA_DIR"), *plugins = getenv("MOONGATE_PLUGIN_DIR");
    if (plugins && *plugins)
        snprintf(h->plugins, sizeof h->plugins, "%s", plugins);
    if (lua && *lua) {
        snprintf(h->lua, sizeof h->lua, "%s", lua);
        h->from = "from MOONGATE_LUA_DIR";
        rc = has_runtime(h->lua) ? 0 : -1;
        if (rc)
            h->from = "MOONGATE_LUA_DIR names a folder without moongate/runtime.lua";
    }
    return rc;
}
