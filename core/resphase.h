/* The response phase of a request: one state, r->rs, and its transitions.
 * Everything that asks "may the gateway still answer?", "is a response
 * held for the response plugins?" or "has the head gone out?" reads it
 * here; everything that moves it calls one of the functions below.
 *
 *   OPEN ──proxy with response plugins──▶ HOLDING
 *    │                                       │ upstream head
 *    │ reply staged (stage_replies)          ▼
 *    ├────────────────────────────────▶ HELD ──upstream body ended──▶ HELD_DONE
 *    │                                       │                          │
 *    │ head sent (respond, upstream head,    │ send_held                │ send_held
 *    │ tunnel)                               ▼                          ▼
 *    └───────────────────────────────────▶ SENT ◀───────────────────────┘
 *
 *   OPEN      nothing decided: an error still becomes a clean error page.
 *   HOLDING   proxying; the upstream's head will be held (r_on_head).
 *   HELD      a head waits in r->res_head (the upstream's, or a reply
 *             staged by req:respond / a handler), body bytes in r->hold,
 *             unframed; res:set_header and res.status may change it.
 *   HELD_DONE the same, and the body is complete: sending it ends the
 *             response.
 *   SENT      the head went out (or a tunnel took the connection): no
 *             more error pages; a failure now cuts the connection.
 * A held response dropped by an error (mg_rs_drop_held) goes back to OPEN,
 * so the error page can replace it.
 *
 * Two modes are set once by the runtime before the phase starts and do
 * not change the state: r->stage_replies (req:respond and handler answers
 * are held, op.stage_replies) and r->keep_res_head (the upstream head is
 * copied for the log phase, op.proxy). The log phase waits for the end of
 * the response in the wait slot (MG_WAIT_DONE), woken by mg_req_finish. */
#ifndef MG_RESPHASE_H
#define MG_RESPHASE_H

/* Part of the request module: included at the end of req.h, where mg_req_t
 * is complete (so it does not include req.h back). */
#ifndef MG_REQ_H
#error "resphase.h is included through req.h"
#endif

#include "buf.h"

enum { MG_RS_OPEN, MG_RS_HOLDING, MG_RS_HELD, MG_RS_HELD_DONE, MG_RS_SENT };

/* --- questions -------------------------------------------------------------- */

/* The head went out: no error page is possible any more. */
static inline int mg_rs_sent(const mg_req_t *r) { return r->rs == MG_RS_SENT; }
/* A response is held for the response plugins. */
static inline int mg_rs_held(const mg_req_t *r)
{
    return r->rs == MG_RS_HELD || r->rs == MG_RS_HELD_DONE;
}
/* An answer is decided: held or sent. */
static inline int mg_rs_decided(const mg_req_t *r) { return r->rs >= MG_RS_HELD; }

/* --- transitions ------------------------------------------------------------ */

/* OPEN -> HOLDING (hold) or stays OPEN: the proxy starts. */
static inline void mg_rs_proxy(mg_req_t *r, int hold)
{
    if (r->rs == MG_RS_OPEN && hold)
        r->rs = MG_RS_HOLDING;
}
/* HOLDING -> HELD when the upstream head arrives; 1 if it is to be held. */
static inline int mg_rs_upstream_head(mg_req_t *r)
{
    if (r->rs != MG_RS_HOLDING)
        return 0;
    r->rs = MG_RS_HELD;
    return 1;
}
/* -> HELD_DONE: a complete reply was staged. */
static inline void mg_rs_staged(mg_req_t *r) { r->rs = MG_RS_HELD_DONE; }
/* HELD -> HELD_DONE: the held response's body ended. */
static inline void mg_rs_held_complete(mg_req_t *r)
{
    if (r->rs == MG_RS_HELD)
        r->rs = MG_RS_HELD_DONE;
}
/* A held response is dropped (an error replaces it): -> OPEN, with its
 * bytes. */
static inline void mg_rs_drop_held(mg_req_t *r)
{
    if (!mg_rs_held(r))
        return;
    r->rs = MG_RS_OPEN;
    mg_buf_free(&r->hold);
}
/* -> SENT: the head goes out now. Returns 1 if a held response was
 * complete (HELD_DONE). */
static inline int mg_rs_send(mg_req_t *r)
{
    int complete = r->rs == MG_RS_HELD_DONE;
    r->rs = MG_RS_SENT;
    return complete;
}

#endif
