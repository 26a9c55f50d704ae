/* Tunnels: two sockets relayed byte for byte.
 *
 * Each side has a read and a write watcher and `out`, the bytes read from
 * the other side that this side has not taken yet. A read goes into the
 * loop's scratch buffer and is written to the other side at once; only what
 * that side does not take is copied into its `out`, and while `out` holds
 * bytes the reading side is paused. So memory per tunnel is bounded by one
 * read per direction, and an idle tunnel holds no buffer at all.
 *
 * A FIN (or TLS close_notify) from one side is passed on once that side's
 * bytes are delivered: close_notify then shutdown(SHUT_WR) on the other
 * side, whose own direction keeps flowing. The tunnel ends when both
 * directions ended, on any error or reset, on the idle timeout, or at a
 * graceful stop's drain_timeout.
 *
 * The idle timer is started once and never re-armed per byte: each I/O
 * stamps last_io, and the timer callback re-arms itself for the remaining
 * time when it fires early (libev "be smart about timeouts").
 *
 * WebSocket tunnels track frame boundaries of each direction (headers only;
 * payload is skipped by length) so that a stop can insert a close frame
 * without cutting a frame in two. */
#include "tunnel.h"
#include "log.h"
#include "mg.h"
#include "loop.h"
#include "sock.h"
#include "tls.h"
#include "tls_client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Frame boundary tracking of one direction (RFC 6455 5.2). */
typedef struct wsf {
    uint64_t left;        /* payload bytes left in the current frame */
    uint8_t hdr[14];
    uint8_t hn;           /* header bytes collected */
    unsigned closed : 1;  /* a close frame went this way */
} wsf_t;

typedef struct side {
    struct mg_tun *t;
    mg_sock_t sk;         /* fd and TLS: server side at the client end, client side upstream */
    ev_io rio, wio;
    mg_buf_t out;         /* bytes for this side not written yet */
    wsf_t frames;         /* frames of the bytes read from this side */
    unsigned eof : 1;     /* this side sent its FIN */
    unsigned shut : 1;    /* we sent this side our FIN */
    unsigned rio_on : 1, wio_on : 1;
} side_t;

struct mg_tun {
    mg_loop_t *loop;
    side_t s[2];          /* [0] client, [1] upstream */
    ev_timer timer;
    double idle, last_io;
    uint64_t bytes[2];    /* MG_TUN_UP, MG_TUN_DOWN */
    mg_tun_done_fn done;
    void *ud;
    struct mg_tun *prev, *next; /* loop->tunnels */
    unsigned websocket : 1;
    unsigned closed : 1;
};

static void tun_free(void *p);
static void update(side_t *s);
static void tun_close(mg_tun_t *t, const char *why);

static inline side_t *peer(side_t *s)
{
    mg_tun_t *t = s->t;
    return s == &t->s[0] ? &t->s[1] : &t->s[0];
}

/* Direction of the bytes read from s. */
static inline int dir_from(side_t *s)
{
    return s == &s->t->s[0] ? MG_TUN_UP : MG_TUN_DOWN;
}

/* --- WebSocket frame boundaries ------------------------------------------ */

/* The length of the frame header that starts at h (h[0..2) present). */
static inline size_t wsf_need(const unsigned char *h)
{
    unsigned len7 = h[1] & 0x7f;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
}

/* A whole frame header h[0..wsf_need(h)): its payload follows. */
static inline void wsf_begin(wsf_t *f, const unsigned char *h)
{
    uint64_t len = h[1] & 0x7f;
    if (len == 126)
        len = (uint64_t)h[2] << 8 | h[3];
    else if (len == 127)
        for (int i = 0; i < 8; i++)
            len = (i ? len << 8 : 0) | h[2 + i];
    if ((h[0] & 0x0f) == 8)
        f->closed = 1;
    f->left = len;
}

static void wsf_feed(wsf_t *f, const unsigned char *p, size_t n)
{
    while (n > 0) {
        if (f->left > 0) {
            size_t k = f->left < n ? (size_t)f->left : n;
            f->left -= k;
            p += k;
            n -= k;
            continue;
        }
        size_t need;
        if (f->hn == 0 && n >= 2 && n >= (need = wsf_need(p))) {
            /* fast path: the whole header is in this read (the usual case) */
            wsf_begin(f, p);
            p += need;
            n -= need;
            continue;
        }
        f->hdr[f->hn++] = *p++;
        n--;
        if (f->hn < 2 || f->hn < wsf_need(f->hdr))
            continue;
        wsf_begin(f, f->hdr);
        f->hn = 0;
    }
}

static inline int wsf_between(const wsf_t *f)
{
    return f->left == 0 && f->hn == 0;
}

/* --- transport ------------------------------------------------------------ */

/* Reads like recv(2), writes like send(2) (sock.h): the TLS flags the
 * watchers follow are in s->sk. */
static inline ssize_t side_read(side_t *s, char *p, size_t n)
{
    return mg_sock_recv(&s->sk, p, n);
}

static inline ssize_t side_write(side_t *s, const char *p, size_t n)
{
    return mg_sock_send(&s->sk, p, n);
}

/* Passes a FIN on to s: close_notify on TLS, then a TCP half-close. */
static void side_shut(side_t *s)
{
    if (s->shut)
        return;
    s->shut = 1;
    if (s->sk.tls)
        mg_tls_shutdown(s->sk.tls);
    else if (s->sk.ssl)
        mg_tlsc_shutdown(s->sk.ssl);
    shutdown(s->sk.fd, SHUT_WR);
}

/* --- relaying ------------------------------------------------------------- */

/* Both directions ended: the tunnel is done. */
static int finished(mg_tun_t *t)
{
    return t->s[0].eof && t->s[1].eof && t->s[0].shut && t->s[1].shut;
}

/* Writes what s has queued. 0, or -1 after closing the tunnel. */
static int flush(side_t *s)
{
    mg_tun_t *t = s->t;
    s->sk.wr_wr = 0;
    while (s->out.len > 0) {
        ssize_t n = side_write(s, mg_buf_data(&s->out), s->out.len);
        if (n > 0) {
            mg_buf_consume(&s->out, (size_t)n);
            t->last_io = ev_now(t->loop->ev);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        tun_close(t, "reset");
        return -1;
    }
    mg_buf_free(&s->out); /* an idle tunnel holds no buffer */
    if (peer(s)->eof && !s->shut) {
        side_shut(s);
        if (finished(t)) {
            tun_close(t, "closed");
            return -1;
        }
    }
    return 0;
}

/* Relays p[0..n), read from `from`, to its peer: written at once where the
 * socket takes it, the rest queued (which pauses `from`). 0, or -1 after
 * closing the tunnel. */
static int relay(side_t *from, const char *p, size_t n)
{
    mg_tun_t *t = from->t;
    side_t *to = peer(from);
    t->bytes[dir_from(from)] += n;
    if (t->websocket)
        wsf_feed(&from->frames, (const unsigned char *)p, n);
    if (to->out.len == 0) {
        while (n > 0) {
            ssize_t w = side_write(to, p, n);
            if (w > 0) {
                p += w;
                n -= (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                break;
            tun_close(t, "reset");
            return -1;
        }
    }
    if (n > 0 && mg_buf_append(&to->out, p, n) != MG_OK) {
        tun_close(t, "out of memory");
        return -1;
    }
    return 0;
}

/* Reads from s what it has while its peer takes the bytes. */
static void on_readable(side_t *s)
{
    mg_tun_t *t = s->t;
    mg_loop_t *loop = t->loop;
    s->sk.rd_ww = 0;
    /* a few reads per event, so one busy tunnel does not hold the loop */
    for (int round = 0; round < 4 && !s->eof && peer(s)->out.len == 0; round++) {
        ssize_t n = side_read(s, loop->scratch, loop->scratch_cap);
        if (n > 0) {
            t->last_io = ev_now(loop->ev);
            if (relay(s, loop->scratch, (size_t)n) != 0)
                return;
            if (!s->sk.more && !s->sk.tls && !s->sk.ssl && (size_t)n < loop->scratch_cap)
                break; /* plain TCP: the socket is drained */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            tun_close(t, "reset");
            return;
        }
        /* FIN: passed on once the peer has everything read before it */
        s->eof = 1;
        s->sk.more = 0;
        side_t *p = peer(s);
        if (p->out.len == 0 && !p->shut) {
            side_shut(p);
            if (finished(t)) {
                tun_close(t, "closed");
                return;
            }
        }
    }
    update(s);
    update(peer(s));
}

/* Starts and stops s's watchers to match its state. */
static void update(side_t *s)
{
    mg_tun_t *t = s->t;
    if (t->closed)
        return;
    struct ev_loop *ev = t->loop->ev;
    int reading = !s->eof && peer(s)->out.len == 0;
    int want_r = reading || s->sk.wr_wr;
    int want_w = (s->out.len > 0 && !s->sk.wr_wr) || s->sk.rd_ww;
    if (want_r && !s->rio_on) {
        ev_io_start(ev, &s->rio);
        s->rio_on = 1;
    } else if (!want_r && s->rio_on) {
        ev_io_stop(ev, &s->rio);
        s->rio_on = 0;
    }
    if (want_w && !s->wio_on) {
        ev_io_start(ev, &s->wio);
        s->wio_on = 1;
    } else if (!want_w && s->wio_on) {
        ev_io_stop(ev, &s->wio);
        s->wio_on = 0;
    }
    if (reading && s->sk.more) /* already decrypted: the socket will not say */
        ev_feed_event(ev, &s->rio, EV_READ);
}

static void rio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    side_t *s = w->data;
    mg_tun_t *t = s->t;
    if (s->sk.wr_wr) { /* a TLS write waited for this */
        if (flush(s) != 0)
            return;
        update(s);
        update(peer(s));
    }
    if (!t->closed)
        on_readable(s);
}

static void wio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    side_t *s = w->data;
    mg_tun_t *t = s->t;
    if (s->sk.rd_ww) { /* a TLS read waited for this */
        on_readable(s);
        if (t->closed)
            return;
    }
    if (s->out.len > 0 && flush(s) != 0)
        return;
    update(s);
    side_t *p = peer(s);
    update(p);
    if (s->out.len == 0 && !p->eof && p->rio_on)
        ev_feed_event(t->loop->ev, &p->rio, EV_READ); /* resumed: read what waited */
}

static void timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_tun_t *t = w->data;
    double left = t->last_io + t->idle - ev_now(ev);
    if (left > 1e-3) {
        w->repeat = left;
        ev_timer_again(ev, w);
        return;
    }
    tun_close(t, "idle timeout");
}

/* --- lifecycle ------------------------------------------------------------- */

static void side_init(mg_tun_t *t, side_t *s, mg_tun_end_t *e)
{
    s->t = t;
    s->sk.fd = e->fd;
    s->sk.tls = e->tls;
    s->sk.ssl = e->ssl;
    s->out = e->out;
    s->eof = e->eof ? 1 : 0;
    e->out = (mg_buf_t){ 0 };
    ev_io_init(&s->rio, rio_cb, s->sk.fd, EV_READ);
    s->rio.data = s;
    ev_io_init(&s->wio, wio_cb, s->sk.fd, EV_WRITE);
    s->wio.data = s;
}

static void end_close(mg_tun_end_t *e)
{
    mg_tls_free(e->tls);
    mg_tlsc_close(e->ssl, 1);
    if (e->fd >= 0)
        close(e->fd);
    mg_buf_free(&e->out);
}

mg_tun_t *mg_tun_start(mg_loop_t *loop, mg_tun_end_t *client, mg_tun_end_t *upstream,
                       int websocket, double idle, mg_tun_done_fn done, void *ud)
{
    mg_tun_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        end_close(client);
        end_close(upstream);
        return NULL;
    }
    t->loop = loop;
    t->idle = idle;
    t->websocket = websocket ? 1 : 0;
    t->done = done;
    t->ud = ud;
    side_init(t, &t->s[0], client);
    side_init(t, &t->s[1], upstream);
    loop->close_tunnels = mg_tun_close_all; /* loop.c reaches us only through this */
    t->next = loop->tunnels;
    if (loop->tunnels)
        loop->tunnels->prev = t;
    loop->tunnels = t;
    loop->stats.tunnels++;
    t->last_io = ev_now(loop->ev);
    ev_init(&t->timer, timer_cb);
    t->timer.data = t;
    t->timer.repeat = idle;
    ev_timer_again(loop->ev, &t->timer);
    /* bytes each end sent before the tunnel existed go first */
    mg_tun_end_t *ends[2] = { client, upstream };
    for (int i = 0; i < 2; i++) {
        if (ends[i]->in_n > 0) {
            t->bytes[i] += ends[i]->in_n;
            if (t->websocket)
                wsf_feed(&t->s[i].frames, (const unsigned char *)ends[i]->in, ends[i]->in_n);
            if (mg_buf_append(&peer(&t->s[i])->out, ends[i]->in, ends[i]->in_n) != MG_OK) {
                tun_close(t, "out of memory");
                return t;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        side_t *s = &t->s[i];
        if (s->out.len == 0 && peer(s)->eof && !s->shut)
            side_shut(s);
        update(s);
        /* the queued bytes go out, and bytes the kernel or TLS already
         * hold are read, from the loop rather than from this call stack */
        if (s->wio_on)
            ev_feed_event(loop->ev, &s->wio, EV_WRITE);
        if (s->rio_on)
            ev_feed_event(loop->ev, &s->rio, EV_READ);
    }
    if (finished(t))
        tun_close(t, "closed");
    return t;
}

static void tun_close(mg_tun_t *t, const char *why)
{
    if (t->closed)
        return;
    t->closed = 1;
    mg_loop_t *loop = t->loop;
    for (int i = 0; i < 2; i++) {
        side_t *s = &t->s[i];
        ev_io_stop(loop->ev, &s->rio);
        ev_io_stop(loop->ev, &s->wio);
        /* a clean end says goodbye on TLS; after an error it would make a
         * cut stream look complete */
        int clean = why != NULL && (strcmp(why, "closed") == 0 || strcmp(why, "shutdown") == 0);
        if (s->sk.tls) {
            if (clean)
                mg_tls_shutdown(s->sk.tls);
            mg_tls_free(s->sk.tls);
            s->sk.tls = NULL;
        }
        if (s->sk.ssl) {
            mg_tlsc_close(s->sk.ssl, !clean || s->shut);
            s->sk.ssl = NULL;
        }
        if (s->sk.fd >= 0)
            close(s->sk.fd);
        s->sk.fd = -1;
        mg_buf_free(&s->out);
    }
    ev_timer_stop(loop->ev, &t->timer);
    if (t->prev)
        t->prev->next = t->next;
    else
        loop->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    loop->stats.tunnels--;
    mg_log_debug("tunnel closed (%s): %llu bytes up, %llu down", why,
                 (unsigned long long)t->bytes[MG_TUN_UP],
                 (unsigned long long)t->bytes[MG_TUN_DOWN]);
    if (t->done)
        t->done(t->ud, t->bytes, why);
    mg_loop_defer(loop, tun_free, t);
    mg_loop_check_drained(loop);
}

static void tun_free(void *p)
{
    free(p);
}

/* Appends a close frame with status 1001 (going away) for s, unless the
 * stream towards s is inside a frame or already carried a close frame.
 * Frames to the upstream (a server) are masked, to the client not. */
static void say_going_away(side_t *s)
{
    const wsf_t *f = &peer(s)->frames;
    if (!wsf_between(f) || f->closed || s->shut)
        return;
    unsigned char fr[8];
    size_t n;
    if (s == &s->t->s[0]) {
        const unsigned char c[4] = { 0x88, 0x02, 0x03, 0xe9 };
        memcpy(fr, c, 4);
        n = 4;
    } else {
        uintptr_t seed = (uintptr_t)s ^ (uintptr_t)(ev_time() * 1e6);
        unsigned char mask[4] = { (unsigned char)seed, (unsigned char)(seed >> 8),
                                  (unsigned char)(seed >> 16), (unsigned char)(seed >> 24) };
        fr[0] = 0x88;
        fr[1] = 0x82;
        memcpy(fr + 2, mask, 4);
        fr[6] = 0x03 ^ mask[0];
        fr[7] = 0xe9 ^ mask[1];
        n = 8;
    }
    mg_buf_append(&s->out, fr, n);
}

void mg_tun_close_all(mg_loop_t *loop)
{
    while (loop->tunnels) {
        mg_tun_t *t = loop->tunnels;
        for (int i = 0; i < 2 && !t->closed; i++) {
            side_t *s = &t->s[i];
            if (t->websocket)
                say_going_away(s);
            /* one attempt each: the process is about to exit */
            while (s->out.len > 0 && !s->shut) {
                ssize_t n = side_write(s, mg_buf_data(&s->out), s->out.len);
                if (n <= 0)
                    break;
                mg_buf_consume(&s->out, (size_t)n);
            }
        }
        tun_close(t, "shutdown");
    }
}
