/* Graceful stop: stop accepting, close idle connections, let requests in
 * flight (and log phases, and tunnels) finish within drain_timeout, then
 * end the loop; at drain_timeout the open tunnels are closed (a WebSocket
 * gets its 1001). */
#include "worker.h"
#include "conn.h"
#include "h2conn.h"
#include "log.h"
#include "notify.h"
#include "server.h"

static void drain_timeout_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    mg_log_warn("drain_timeout reached with %d requests in flight and %d tunnels; exiting",
                loop->stats.active, loop->stats.tunnels);
    if (loop->close_tunnels)
        loop->close_tunnels(loop);
    ev_break(ev, EVBREAK_ALL);
}

/* loop->drain_check: a request or connection ended while stopping. */
static void drain_check(mg_loop_t *loop)
{
    if (loop->stats.active == 0) {
        /* close connections that finished their last request */
        mg_conn_t *c = loop->conns;
        while (c) {
            mg_conn_t *next = c->next;
            mg_conn_close_idle(c);
            c = next;
        }
        mg_h2_close_idle_all(loop);
        /* log phases still running keep the worker up (within drain_timeout) */
        if (loop->conns == NULL && loop->h2conns == NULL && loop->stats.lua_busy == 0 &&
            loop->stats.tunnels == 0)
            ev_break(loop->ev, EVBREAK_ALL);
    }
}

void mg_loop_stop(mg_loop_t *loop)
{
    if (loop->stopping)
        return;
    loop->stopping = 1;
    loop->drain_check = drain_check;
    if (!loop->master_pid)
        mg_notify("STOPPING=1");
    for (int i = 0; i < loop->nlisteners; i++)
        mg_srv_close(loop->listeners[i]);
    mg_worker_clear_watch(loop);
    mg_conn_t *c = loop->conns;
    while (c) {
        mg_conn_t *next = c->next;
        mg_conn_close_idle(c);
        c = next;
    }
    mg_h2_stop_all(loop); /* GOAWAY: the streams in flight finish */
    ev_timer_init(&loop->drain_timer, drain_timeout_cb, loop->gen->cfg->limits.drain_timeout, 0.);
    ev_timer_start(loop->ev, &loop->drain_timer);
    mg_loop_check_drained(loop);
}
