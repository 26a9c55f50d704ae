/* Config generations: loading the config file into a new generation
 * (its upstream pools and TLS listener contexts), reloading, and
 * releasing a generation when its last request lets go. */
#include "worker.h"
#include "cfgnames.h"
#include "dns.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "tls.h"
#include "upstream.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* g->release: the last reference went. */
static void gen_free(mg_gen_t *g)
{
    if (g->ups) {
        for (int i = 0; i < g->cfg->nupstreams; i++)
            mg_up_close(&g->ups[i]);
        free(g->ups);
    }
    if (g->tls) {
        for (int i = 0; i < g->cfg->nlisten; i++)
            mg_tls_ctx_free(g->tls[i]);
        free(g->tls);
    }
    for (int i = 0; i < g->nnames; i++)
        mg_dns_name_unref(g->names[i]);
    free(g->names);
    mg_cfg_free(g->cfg);
    free(g);
}

/* Builds the generation's TLS contexts: reads the certificates and keys
 * now, so a reload picks up renewed files and a bad one fails the load
 * (with the config line naming it) while the old generation serves on.
 * 0, or -1 with "file:line: why" in err. */
static int build_tls(mg_gen_t *g, char *err, size_t errlen)
{
    const mg_cfg_t *cfg = g->cfg;
    g->tls = calloc((size_t)cfg->nlisten + 1, sizeof *g->tls);
    if (g->tls == NULL) {
        snprintf(err, errlen, "%s:0: out of memory", cfg->file);
        return -1;
    }
    for (int i = 0; i < cfg->nlisten; i++) {
        const mg_cfg_listen_t *l = &cfg->listen[i];
        if (l->tls_cert == NULL)
            continue;
        char why[512];
        int key_at_fault = 0;
        g->tls[i] = mg_tls_ctx_new(l->tls_cert, l->tls_key, &key_at_fault, why, sizeof why);
        if (g->tls[i] == NULL) {
            snprintf(err, errlen, "%s:%d: listen[%d].tls: %s", cfg->file,
                     key_at_fault ? l->tls_key_line : l->tls_cert_line, i + 1, why);
            return -1;
        }
        mg_tls_ctx_h2(g->tls[i], l->http2);
        g->ntls++;
    }
    return 0;
}

int mg_loop_load(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_cfg_t *cfg = mg_cfg_load(loop->L, loop->config_file, err, errlen);
    if (cfg == NULL)
        return -1;
    mg_gen_t *g = calloc(1, sizeof *g);
    if (g == NULL)
        goto fail;
    g->cfg = cfg;
    g->loop = loop;
    g->release = gen_free;
    g->refs = 1;
    g->id = ++loop->next_gen_id;
    if (loop->dns) {
        mg_dns_configure(loop->dns, cfg->resolver, cfg->resolver_valid);
        g->nnames = mg_cfgnames_hold_redis(loop->L, loop->dns, &g->names);
    }
    g->ups = calloc((size_t)cfg->nupstreams + 1, sizeof *g->ups);
    if (g->ups == NULL)
        goto fail;
    for (int i = 0; i < cfg->nupstreams; i++)
        if (mg_up_init(&g->ups[i], loop, &cfg->upstreams[i]) != MG_OK) {
            /* mg_up_init logged why (e.g. an unusable tls_ca) */
            snprintf(err, errlen, "%s: upstream %s could not be set up (see the log above)",
                     loop->config_file, cfg->upstreams[i].name);
            goto fail_msg;
        }
    if (build_tls(g, err, errlen) != 0) {
        mg_gen_unref(g);
        return -1;
    }
    if (loop->gen)
        mg_gen_unref(loop->gen);
    loop->gen = g;
    mg_worker_busy_poll_apply(loop);
    return 0;
fail:
    snprintf(err, errlen, "%s:0: out of memory", loop->config_file);
fail_msg:
    if (g) {
        g->refs = 1;
        mg_gen_unref(g);
    } else {
        mg_cfg_free(cfg);
    }
    return -1;
}

static int reload_gen(mg_loop_t *loop, char *err, size_t errlen)
{
    mg_gen_t *old = loop->gen;
    mg_gen_ref(old);
    int rc = mg_loop_load(loop, err, errlen);
    if (rc == 0 && loop->ev && loop->nlisteners > 0 && mg_worker_sync_listeners(loop, err, errlen) != 0) {
        /* the new listeners cannot be had: back to the old generation */
        mg_gen_t *bad = loop->gen;
        loop->gen = old;
        mg_gen_ref(old);
        mg_gen_unref(bad);
        char ignored[256];
        mg_worker_sync_listeners(loop, ignored, sizeof ignored);
        rc = -1;
    }
    mg_gen_unref(old);
    double now = ev_time();
    if (rc != 0) {
        mg_log_error("reload failed, keeping generation %u: %s", loop->gen->id, err);
        if (loop->met_shm && !loop->inherited)
            mg_met_reload(loop->met_shm, 0, err, now);
        return -1;
    }
    if (loop->met_shm) {
        if (loop->inherited) {
            loop->gen->id = loop->met_shm->generation; /* the master's count */
        } else {
            loop->met_shm->generation = loop->gen->id;
            mg_met_reload(loop->met_shm, 1, NULL, now);
        }
    }
    if (loop->met)
        loop->met->generation = loop->gen->id;
    for (int i = 0; loop->met && i < loop->gen->cfg->nupstreams; i++) /* their series, at 0 */
        mg_met_upstream(loop->met, loop->gen->cfg->upstreams[i].name, MG_MET_UP_N);
    /* checked by the config walk; a failure here keeps the old error log */
    if (mg_log_configure(loop->gen->cfg->error_log, loop->gen->cfg->error_log_level, err,
                         errlen) != 0)
        mg_log_error("%s", err);
    mg_worker_reopen_access_log(loop);
    mg_worker_setup_watch(loop);
    mg_log_info("reloaded: generation %u", loop->gen->id);
    return 0;
}

int mg_loop_reload(mg_loop_t *loop, char *err, size_t errlen)
{
    /* the single process tells systemd (Type=notify) a reload is running;
     * a worker's reload is the master's to report */
    if (!loop->master_pid)
        mg_notify_reloading();
    int rc = reload_gen(loop, err, errlen);
    if (!loop->master_pid)
        mg_notify_ready();
    return rc;
}

int mg_loop_request_reload(mg_loop_t *loop, char *err, size_t errlen)
{
    if (!loop->master_pid)
        return mg_loop_reload(loop, err, errlen);
    /* The master checks the config and signals every worker; the verdict
     * shows in the metrics region (see admin.c). */
    if (kill(loop->master_pid, SIGHUP) != 0) {
        snprintf(err, errlen, "cannot signal the master: %s", strerror(errno));
        return -1;
    }
    return 0;
}
