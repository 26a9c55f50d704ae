/* The worker's listening sockets: adopting the master's, and keeping the
 * set in step with the config across reloads. */
#include "worker.h"
#include "log.h"
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mg_listener_t *find_listener(mg_loop_t *loop, const char *text, int admin)
{
    for (int i = 0; i < loop->nlisteners; i++)
        if (loop->listeners[i] && loop->listeners[i]->admin == admin &&
            strcmp(loop->listeners[i]->addr.text, text) == 0)
            return loop->listeners[i];
    return NULL;
}

int mg_loop_adopt_listener(mg_loop_t *loop, int fd, const mg_addr_t *addr, int admin)
{
    if (loop->nlisteners == MG_MAX_LISTENERS)
        return -1;
    mg_listener_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -1;
    mg_srv_start(loop, l, fd, addr, admin);
    loop->listeners[loop->nlisteners++] = l;
    return 0;
}

static int bind_one(mg_loop_t *loop, const mg_addr_t *addr, int admin, char *err, size_t errlen)
{
    mg_listener_t *l = find_listener(loop, addr->text, admin);
    if (l) {
        l->keep = 1;
        return 0;
    }
    /* a worker of a multi-worker gateway binds what a reload added itself,
     * next to its siblings */
    int fd = mg_srv_bind(addr, loop->inherited, err, errlen);
    if (fd < 0)
        return -1;
    if (mg_loop_adopt_listener(loop, fd, addr, admin) != 0) {
        close(fd);
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    loop->listeners[loop->nlisteners - 1]->keep = 1;
    mg_log_info("listening on %s%s", addr->text,
                admin ? " (admin)" : mg_gen_tls(loop->gen, addr->text) ? " (TLS)" : "");
    return 0;
}

/* Makes the open listeners match the current config: binds new addresses,
 * closes ones the config no longer names. Existing sockets are kept, so no
 * connection is refused across a reload. */
int mg_worker_sync_listeners(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_cfg_t *cfg = loop->gen->cfg;
    for (int i = 0; i < loop->nlisteners; i++)
        loop->listeners[i]->keep = 0;
    for (int i = 0; i < cfg->nlisten; i++) {
        if (bind_one(loop, &cfg->listen[i].addr, 0, err, errlen) != 0)
            return -1;
    }
    if (cfg->has_admin && loop->worker_index == 0 &&
        bind_one(loop, &cfg->admin, 1, err, errlen) != 0)
        return -1;
    int k = 0;
    for (int i = 0; i < loop->nlisteners; i++) {
        mg_listener_t *l = loop->listeners[i];
        if (l->keep) {
            loop->listeners[k++] = l;
        } else {
            mg_log_info("no longer listening on %s", l->addr.text);
            mg_srv_close(l);
            free(l);
        }
    }
    loop->nlisteners = k;
    return 0;
}
