/* The loop's own state: the deferred-free queue and generation
 * references, the Date header cache. Nothing here calls a module above: the worker (worker.c and
 * its job files) builds generations, runs the loop and drains it, and plugs
 * in what the lower modules trigger (a generation's release, the drain
 * check) as callbacks. */
#include "loop.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

const char *mg_loop_date(mg_loop_t *loop)
{
    double now = loop->ev ? ev_now(loop->ev) : ev_time();
    long long sec = (long long)now;
    if (sec != loop->date_sec) { /* once a second, not per response */
        static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(loop->http_date, sizeof loop->http_date,
                 "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        loop->date_sec = sec;
    }
    return loop->http_date;
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
