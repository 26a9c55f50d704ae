/* Listening sockets and accept. */
#ifndef MG_SERVER_H
#define MG_SERVER_H

#include <ev.h>

#include "config.h"

typedef struct mg_loop mg_loop_t;

typedef struct mg_listener {
    mg_loop_t *loop;
    int fd;
    ev_io io;
    ev_timer retry;          /* re-enables accept after EMFILE */
    mg_addr_t addr;
    int admin;               /* serves the admin API, not routes */
    int keep;                /* sync mark while reloading */
} mg_listener_t;

/* Opens a nonblocking listening socket (SO_REUSEADDR; SO_REUSEPORT when
 * `shared`, so that every worker of a gateway can bind an address a reload
 * added). Returns the fd, or -1 with a reason in err. */
int mg_srv_bind(const mg_addr_t *addr, int shared, char *err, size_t errlen);
/* Starts accepting on an open fd. */
void mg_srv_start(mg_loop_t *loop, mg_listener_t *l, int fd, const mg_addr_t *addr, int admin);
/* Stops accepting and closes the fd. Idempotent. */
void mg_srv_close(mg_listener_t *l);
/* Raises RLIMIT_NOFILE's soft limit to the hard limit. */
void mg_srv_raise_nofile(void);

#endif
