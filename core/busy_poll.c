#include "worker.h"

/* Busy polling. On a virtual machine, a CPU that goes idle in epoll_wait is
 * halted, and waking it for the next packet costs tens of microseconds: at
 * low concurrency that is most of a proxied request's latency. So after an
 * iteration that had events, the loop keeps polling without sleeping for
 * `busy_poll` seconds (an idle watcher at the lowest priority: libev then
 * polls with a zero timeout), and sleeps only once that long passed with
 * nothing to do. Under load there is always something to do, so this costs
 * nothing there; an idle worker spins at most busy_poll after its last
 * event. It only spins while few requests are in flight
 * (MG_BUSY_POLL_MAX_ACTIVE): with more, events arrive often enough, and
 * polling without sleeping would only make each poll return fewer of them. */
#define MG_BUSY_POLL_MAX_ACTIVE 4

static void spin_cb(struct ev_loop *ev, ev_idle *w, int revents)
{
    (void)revents;
    mg_loop_t *loop = mg_loop_of(ev);
    if (ev_now(ev) - loop->last_active >= loop->gen->cfg->busy_poll ||
        loop->stats.active > MG_BUSY_POLL_MAX_ACTIVE)
        ev_idle_stop(ev, w);
}

static void invoke_cb(struct ev_loop *ev)
{
    mg_loop_t *loop = mg_loop_of(ev);
    /* Only after a poll (loop->prepare is pending in the pre-poll phase):
     * events other than the spin itself mean activity. */
    if (!ev_is_pending(&loop->prepare) &&
        ev_pending_count(ev) > (ev_is_pending(&loop->spin) ? 1u : 0u)) {
        loop->last_active = ev_now(ev);
        if (!ev_is_active(&loop->spin) && loop->stats.active <= MG_BUSY_POLL_MAX_ACTIVE)
            ev_idle_start(ev, &loop->spin);
    }
    ev_invoke_pending(ev);
}

void mg_worker_busy_poll_init(mg_loop_t *loop)
{
    ev_idle_init(&loop->spin, spin_cb);
    ev_set_priority(&loop->spin, EV_MINPRI);
}

/* The busy-poll bookkeeping runs only when it is on (spin_cb stops a spin
 * left over from a config that had it). */
void mg_worker_busy_poll_apply(mg_loop_t *loop)
{
    ev_set_invoke_pending_cb(loop->ev, loop->gen->cfg->busy_poll > 0 ? invoke_cb
                                                                     : ev_invoke_pending);
}
