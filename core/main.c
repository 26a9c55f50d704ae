/* moongate [-c FILE] | -t -c FILE | --version */
#include "log.h"
#include "loop.h"
#include "lrt.h"
#include "master.h"
#include "req.h"
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: moongate [-c FILE]     run (FILE defaults to ./moongate.lua)\n"
               "       moongate -t -c FILE    check the config and plugins\n"
               "       moongate --script FILE [ARGS]  run a Lua file inside the runtime\n"
               "       moongate --version\n");
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
    if (mg_loop_load(loop, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        mg_loop_free(loop);
        return 1;
    }
    if (test) {
        printf("OK\n");
        mg_loop_free(loop);
        return 0;
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
