#include "admin.h"
#include "health.h"
#include "log.h"
#include "worker.h"
#include "metrics.h"
#include "req.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void status_json(mg_req_t *r)
{
    mg_loop_t *loop = r->loop;
    const mg_met_shm_t *m = loop->met_shm;
    mg_buf_t b = { 0 };
    double started = m && m->started ? m->started : loop->started;
    mg_buf_printf(&b, "{\"version\":\"%s\",\"pid\":%d,\"uptime\":%.3f,\"workers\":%d,"
                      "\"generation\":%u,",
                  MG_VERSION, loop->master_pid ? loop->master_pid : (int)getpid(),
                  ev_now(loop->ev) - started, m ? m->nworkers : 1,
                  m ? m->generation : loop->gen->id);
    mg_buf_printf(&b, "\"reloads\":{\"ok\":%llu,\"failed\":%llu},\"last_reload\":",
                  m ? (unsigned long long)m->reloads_ok : 0ULL,
                  m ? (unsigned long long)m->reloads_failed : 0ULL);
    if (m == NULL || m->last_reload_ok < 0) {
        mg_buf_printf(&b, "null");
    } else {
        mg_buf_printf(&b, "{\"ok\":%s,\"at\":%.3f,\"error\":", m->last_reload_ok ? "true" : "false",
                      m->last_reload_at);
        if (m->last_reload_ok)
            mg_buf_printf(&b, "null}");
        else {
            mg_buf_json_str(&b, m->last_reload_error);
            mg_buf_printf(&b, "}");
        }
    }
    mg_buf_printf(&b, ",\"connections\":%d,\"requests_active\":%d,\"lua_memory\":%zu,",
                  loop->stats.conns, loop->stats.active, loop->lua_mem);
    mg_health_status_json(loop, &b);
    mg_buf_puts(&b, "}\n");
    mg_req_respond(r, 200, "application/json", b.base, b.len, NULL);
    mg_buf_free(&b);
}

static void answer_reload(mg_req_t *r, int ok, unsigned gen, const char *err)
{
    mg_buf_t b = { 0 };
    if (ok) {
        mg_buf_printf(&b, "{\"ok\":true,\"generation\":%u}\n", gen);
    } else {
        mg_buf_printf(&b, "{\"ok\":false,\"error\":");
        mg_buf_json_str(&b, err);
        mg_buf_printf(&b, "}\n");
    }
    mg_req_respond(r, ok ? 200 : 400, "application/json", b.base, b.len, NULL);
    mg_buf_free(&b);
}

#define RELOAD_POLL 0.005
#define RELOAD_WAIT 30.0

/* Multi-worker mode: the master decides. Poll the shared counters until
 * it has recorded a verdict for our request. */
static void reload_poll(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_req_t *r = w->data;
    const mg_met_shm_t *m = r->loop->met_shm;
    r->wait.armed = 0;
    if (m->reloads_ok > r->reload_ok0) {
        answer_reload(r, 1, m->generation, NULL);
    } else if (m->reloads_failed > r->reload_failed0) {
        answer_reload(r, 0, 0, m->last_reload_error);
    } else if (ev_now(ev) - r->t_start > RELOAD_WAIT) {
        mg_req_error(r, 504, "the master did not answer");
    } else {
        r->wait.armed = 1;
        ev_timer_set(w, RELOAD_POLL, 0.);
        ev_timer_start(ev, w);
        return;
    }
    mg_req_maybe_free(r);
}

static void reload(mg_req_t *r)
{
    char err[1024];
    mg_loop_t *loop = r->loop;
    if (!loop->master_pid || !loop->met_shm) {
        int ok = mg_loop_reload(loop, err, sizeof err) == 0;
        answer_reload(r, ok, loop->gen->id, err);
        return;
    }
    r->reload_ok0 = loop->met_shm->reloads_ok;
    r->reload_failed0 = loop->met_shm->reloads_failed;
    if (mg_loop_request_reload(loop, err, sizeof err) != 0) {
        answer_reload(r, 0, 0, err);
        return;
    }
    /* the request waits in its timer slot; an abort stops the timer */
    ev_init(&r->wait.timer, reload_poll);
    r->wait.timer.data = r;
    r->wait.armed = 1;
    ev_timer_set(&r->wait.timer, RELOAD_POLL, 0.);
    ev_timer_start(loop->ev, &r->wait.timer);
}

/* 405 with the Allow header RFC 9110 requires. */
static void not_allowed(mg_req_t *r, const char *allow)
{
    char body[96], hdr[64];
    int n = snprintf(body, sizeof body, "{\"error\":\"method not allowed: use %s\"}", allow);
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    mg_req_respond(r, 405, "application/json", body, (size_t)n, hdr);
}

void mg_admin_handle(mg_req_t *r)
{
    int m = r->head->method;
    mg_str_t p = r->path;
    if (MG_STR_EQ_CI(p, "/metrics")) {
        if (m != HTTP_GET && m != HTTP_HEAD) {
            not_allowed(r, "GET, HEAD");
            return;
        }
        mg_buf_t b = { 0 };
        if (r->loop->met_shm)
            mg_met_render(r->loop->met_shm, MG_VERSION, &b);
        mg_health_metrics(r->loop, &b);
        if (b.failed)
            mg_req_error(r, 500, "out of memory");
        else
            mg_req_respond(r, 200, "text/plain; version=0.0.4", b.base ? b.base : "", b.len, NULL);
        mg_buf_free(&b);
    } else if (MG_STR_EQ_CI(p, "/status")) {
        if (m != HTTP_GET && m != HTTP_HEAD) {
            not_allowed(r, "GET, HEAD");
            return;
        }
        status_json(r);
    } else if (MG_STR_EQ_CI(p, "/reload")) {
        if (m != HTTP_POST) {
            not_allowed(r, "POST");
            return;
        }
        reload(r);
    } else {
        mg_req_error(r, 404, "no such admin endpoint");
    }
}
