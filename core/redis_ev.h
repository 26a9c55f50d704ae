/* Attaches a hiredis async context to a libev loop. Unlike hiredis's own
 * libev adapter, commands are not written on EPOLLOUT: every command queued
 * during a loop iteration goes out in one write() just before the loop next
 * polls (an ev_prepare watcher), and the write watcher is only used while the
 * socket is full or the connect is in progress. That saves two epoll_ctl
 * calls and a poll round per command. */
#ifndef MG_REDIS_EV_H
#define MG_REDIS_EV_H

#include <ev.h>
#include <hiredis/async.h>

/* 0, or -1 (out of memory, or already attached). */
int mg_rds_ev_attach(struct ev_loop *ev, redisAsyncContext *ac);
/* Forgets the adapter without touching libev (the loop may be gone). */
void mg_rds_ev_detach_dead(redisAsyncContext *ac);

#endif
