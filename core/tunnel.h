/* A byte tunnel between two established transports (an upgraded client
 * connection and its upstream connection): bytes relayed both ways with
 * backpressure and bounded memory, half-close passed on, an idle timeout
 * covering both directions, bytes counted each way. Knows nothing of
 * requests: whoever starts it gets one callback when it ends. */
#ifndef MG_TUNNEL_H
#define MG_TUNNEL_H

#include <stdint.h>

#include "buf.h"

typedef struct mg_loop mg_loop_t;
typedef struct mg_tun mg_tun_t;
struct mg_tls;
struct ssl_st;

/* Directions, also indexes into the byte counters. */
enum { MG_TUN_UP = 0 /* client -> upstream */, MG_TUN_DOWN = 1 /* upstream -> client */ };

/* One end handed over to the tunnel. All of it is taken over by
 * mg_tun_start (on failure too): the fd, the TLS state (at most one of tls,
 * a server-side session, and ssl, a client-side one) and `out`. */
typedef struct mg_tun_end {
    int fd;
    struct mg_tls *tls;
    struct ssl_st *ssl;
    mg_buf_t out;          /* bytes already queued for this end (not counted) */
    const char *in;        /* bytes already read from this end, to relay (copied) */
    size_t in_n;
    int eof;               /* this end already sent its FIN */
} mg_tun_end_t;

/* Called once when the tunnel has ended (fds already closed). bytes[] are
 * the bytes relayed each way (MG_TUN_UP, MG_TUN_DOWN); `why` is a static
 * string ("closed", "idle timeout", "reset", "shutdown"). */
typedef void (*mg_tun_done_fn)(void *ud, const uint64_t bytes[2], const char *why);

/* Starts relaying between client and upstream. `websocket`: the tunnel
 * speaks RFC 6455, so a graceful stop sends close frames (1001). idle: the
 * seconds without a byte either way after which it closes. Returns the
 * tunnel, or NULL when out of memory: then both ends are closed and done
 * was not called. */
mg_tun_t *mg_tun_start(mg_loop_t *loop, mg_tun_end_t *client, mg_tun_end_t *upstream,
                       int websocket, double idle, mg_tun_done_fn done, void *ud);
/* Graceful stop reached drain_timeout: every tunnel of the loop says
 * goodbye (WebSocket: a close frame with 1001 to both sides, where the
 * stream is between frames), flushes what the sockets take at once, and
 * closes. Each done callback runs. */
void mg_tun_close_all(mg_loop_t *loop);

#endif
