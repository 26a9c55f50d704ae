/* The loop's own state: the deferred-free queue and generation
 * references. Nothing here calls a module above: the worker (worker.c and
 * its job files) builds generations, runs the loop and drains it, and plugs
 * in what the lower modules trigger (a generation's release, the drain
 * check) as callbacks. */
#include "loop.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

void mg_loop_run_deferred(mg_loop_t *loop)
{
    /* A free function may defer more. */
    while (loop->deferred) {
        mg_defer_t *d = loop->deferred;
        loop->deferred = NULL;
        while (d) {
            mg_defer_t *next = d->next;
            d->fn(d->p);
            free(d);
            d = next;
        }
    }
}

void mg_loop_defer(mg_loop_t *loop, void (*fn)(void *), void *p)
{
    mg_defer_t *d = malloc(sizeof *d);
    if (d == NULL) {
        /* cannot defer: leak rather than free under a running callback */
        mg_log_error("out of memory deferring a free");
        return;
    }
    d->fn = fn;
    d->p = p;
    d->next = loop->deferred;
    loop->deferred = d;
}

void mg_gen_ref(mg_gen_t *g)
{
    g->refs++;
}

void mg_gen_unref(mg_gen_t *g)
{
    if (g == NULL || --g->refs > 0)
        return;
    g->release(g);
}

struct ssl_ctx_st *mg_gen_tls(const mg_gen_t *g, const char *addr)
{
    if (g->ntls == 0)
        return NULL;
    for (int i = 0; i < g->cfg->nlisten; i++)
        if (g->tls[i] && strcmp(g->cfg->listen[i].addr.text, addr) == 0)
            return g->tls[i];
    return NULL;
}

void mg_loop_check_drained(mg_loop_t *loop)
{
    if (loop->stopping && loop->drain_check)
        loop->drain_check(loop);
}
