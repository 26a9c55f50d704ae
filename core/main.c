/* moongate [-c FILE] | -t [-c FILE] | --script FILE [ARGS] | --version | --help */
#include "admin.h"
#include "home.h"
#include "log.h"
#include "worker.h"
#include "lrt.h"
#include "master.h"
#include "config.h"
#include "netcheck.h"
#include "req.h"
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moongate [-c FILE]              run (FILE defaults to ./moongate.lua)\n"
            "       moongate -t [-c FILE]           check the config and its plugins\n"
            "       moongate --script FILE [ARGS]   run a Lua file inside the runtime\n"
            "       moongate --version | --help\n"
            "\n"
            "options:\n"
            "  -c FILE          the config file (a Lua file returning a table)\n"
            "  -t               load and check FILE and every plugin it names, print OK or\n"
            "                   every error as file:line: path: why, exit 0 or 1; serves\n"
            "                   nothing\n"
            "  --script FILE [ARGS]\n"
            "                   run FILE in the gateway's Lua runtime (gw.* available,\n"
            "                   e.g. --script /usr/bin/busted for plugin tests); ARGS go to\n"
            "                   FILE's arg table\n"
            "  -v, --version    print the version\n"
            "  -h, --help       print this help\n"
            "\n"
            "signals (in multi-worker mode, to the master: it forwards them):\n"
            "  HUP              reload config and plugins (no connection dropped), reopen\n"
            "                   the logs\n"
            "  TERM, INT, QUIT  graceful stop: stop accepting, finish in-flight requests\n"
            "                   within limits.drain_timeout, exit 0\n"
            "  second INT       stop at once\n"
            "  USR1             reopen the access and error log files (logrotate)\n"
            "\n"
            "environment:\n"
            "  MOONGATE_LOG_LEVEL   error, warn, info (default) or debug; overrides\n"
            "                       error_log.level; anything else stops the start\n"
            "  MOONGATE_HOME        folder holding the bundled lua/ and plugins/\n"
            "                       (default: ../share/moongate from the binary's folder)\n"
            "  MOONGATE_LUA_DIR, MOONGATE_PLUGIN_DIR   override one of the two\n"
            "  NOTIFY_SOCKET        set by systemd (Type=notify): READY=1, RELOADING=1 and\n"
            "                       STOPPING=1 are sent to it\n"
            "\n");
    mg_home_t *home = malloc(sizeof *home);
    if (home == NULL)
        return;
    int found = mg_home_find(home) == 0;
    fprintf(f,
            "files:\n"
            "  Lua runtime        %s\n"
            "  bundled plugins    %s\n"
            "                     (%s%s)\n"
            "  config             ./moongate.lua unless -c names another\n"
            "\n"
            "moongate(8) has the details; doc/ in the source tree has the manuals.\n",
            home->lua, home->plugins, found ? "found " : "NOT FOUND: ", home->from);
    free(home);
}

int main(int argc, char **argv)
{
    const char *file = "moongate.lua";
    int test = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "-t") == 0) {
            test = 1;
        } else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
            printf("moongate %s\n", MG_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--script") == 0 && i + 1 < argc) {
            /* run a Lua file inside the loop: tests and tools */
            char lerr[256];
            if (mg_log_init(lerr, sizeof lerr) != 0) {
                fprintf(stderr, "moongate: %s\n", lerr);
                return 1;
            }
            signal(SIGPIPE, SIG_IGN);
            mg_loop_t *loop = mg_loop_new(file);
            if (loop == NULL)
                return 1;
            int rc = 1;
            if (mg_lrt_script(loop, argv[i + 1], argc - i - 2, argv + i + 2) == 0) {
                if (loop->script && ((mg_req_t *)loop->script)->co)
                    ev_run(loop->ev, 0);
                rc = loop->exit_code;
            }
            fflush(stdout);
            mg_loop_free(loop);
            return rc;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            if (strcmp(argv[i], "-c") == 0)
                fprintf(stderr, "moongate: -c needs a FILE\n");
            else
                fprintf(stderr, "moongate: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    char err[8192];
    if (mg_log_init(err, sizeof err) != 0) {
        fprintf(stderr, "moongate: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN); /* until the loop reopens logs on it */
    mg_loop_t *loop = mg_loop_new(file);
    if (loop == NULL) {
        fprintf(stderr, "moongate: cannot initialise\n");
        return 1;
    }
    loop->admin_handler = mg_admin_handle;
    if (mg_loop_load(loop, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        if (test) {
            /* -t reports every error: the host names of what could be read
             * are checked too (the config runs a second time for that) */
            char scratch[256];
            mg_cfg_t *partial = NULL;
            mg_cfg_free(mg_cfg_load_ex(loop->L, file, scratch, sizeof scratch, &partial));
            mg_netcheck_partial(loop, partial, 10.0, stderr);
            mg_cfg_free(partial);
        }
        mg_loop_free(loop);
        return 1;
    }
    /* host names: -t reports those that do not resolve; a start waits a
     * moment for their first answers so the first requests have addresses */
    int unresolved = mg_netcheck(loop, test, test ? 10.0 : 5.0, stderr);
    if (test) {
        if (unresolved == 0)
            printf("OK\n");
        mg_loop_free(loop);
        return unresolved ? 1 : 0;
    }
    if (mg_log_configure(loop->gen->cfg->error_log, loop->gen->cfg->error_log_level, err,
                         sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        mg_loop_free(loop);
        return 1;
    }
    mg_srv_raise_nofile();
    int workers = loop->gen->cfg->workers;
    if (workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        workers = n > 0 ? (int)n : 1;
    }
    if (workers > 64) {
        mg_log_warn("workers = %d: using 64, the most supported", workers);
        workers = 64;
    }
    int rc = workers > 1 ? mg_master_run(loop, workers) : mg_loop_run(loop);
    mg_loop_free(loop);
    return rc;
}
