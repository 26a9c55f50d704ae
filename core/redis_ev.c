/* hiredis ↔ libev with batched writes (see redis_ev.h). */
#include "redis_ev.h"

#include <stdlib.h>

#include <hiredis/hiredis.h>

typedef struct {
    struct ev_loop *ev;
    redisAsyncContext *ac;
    ev_io rio, wio;
    ev_prepare flush;  /* writes what was queued during this iteration */
    int flushing;      /* inside redisAsyncHandleWrite called by flush */
} mg_rds_ev_t;

static void on_read(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_rds_ev_t *a = w->data;
    redisAsyncHandleRead(a->ac);
}

static void on_write(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_rds_ev_t *a = w->data;
    redisAsyncHandleWrite(a->ac);
}

static void on_flush(struct ev_loop *ev, ev_prepare *w, int revents)
{
    (void)revents;
    mg_rds_ev_t *a = w->data;
    ev_prepare_stop(ev, w);
    /* hiredis answers with delWrite (all written: the flag drops) or
     * addWrite (socket full: the write watcher takes over). On a write
     * error it frees the context, and a with it: a is not touched after. */
    a->flushing = 1;
    redisAsyncHandleWrite(a->ac);
}

static void add_read(void *p)
{
    mg_rds_ev_t *a = p;
    if (!ev_is_active(&a->rio))
        ev_io_start(a->ev, &a->rio);
}

static void del_read(void *p)
{
    mg_rds_ev_t *a = p;
    ev_io_stop(a->ev, &a->rio);
}

static void add_write(void *p)
{
    mg_rds_ev_t *a = p;
    if (ev_is_active(&a->wio))
        return; /* the socket is full: EPOLLOUT will write it all */
    if (a->flushing || !(a->ac->c.flags & REDIS_CONNECTED)) {
        /* a flush left data behind, or the connect is in progress */
        ev_io_start(a->ev, &a->wio);
        return;
    }
    if (!ev_is_active(&a->flush))
        ev_prepare_start(a->ev, &a->flush);
}

static void del_write(void *p)
{
    mg_rds_ev_t *a = p;
    ev_io_stop(a->ev, &a->wio);
    a->flushing = 0;
}

static void cleanup(void *p)
{
    mg_rds_ev_t *a = p;
    ev_io_stop(a->ev, &a->rio);
    ev_io_stop(a->ev, &a->wio);
    ev_prepare_stop(a->ev, &a->flush);
    free(a);
}

int mg_rds_ev_attach(struct ev_loop *ev, redisAsyncContext *ac)
{
    if (ac->ev.data != NULL)
        return -1;
    mg_rds_ev_t *a = calloc(1, sizeof *a);
    if (a == NULL)
        return -1;
    a->ev = ev;
    a->ac = ac;
    ev_io_init(&a->rio, on_read, ac->c.fd, EV_READ);
    ev_io_init(&a->wio, on_write, ac->c.fd, EV_WRITE);
    ev_prepare_init(&a->flush, on_flush);
    a->rio.data = a->wio.data = a->flush.data = a;
    ac->ev.data = a;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}

void mg_rds_ev_detach_dead(redisAsyncContext *ac)
{
    free(ac->ev.data);
    ac->ev.data = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.addRead = ac->ev.delRead = ac->ev.addWrite = ac->ev.delWrite = NULL;
}
