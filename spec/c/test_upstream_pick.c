/* Unit tests for mg_up_pick (core/upstream): round robin, least_conn and
 * hash balancing, and the `tried` mask that retries use. No loop and no
 * sockets: mg_up_init only lays out the servers. */
#include "mgtest.h"
#include "req.h"
#include "upstream.h"

#include <stdlib.h>
#include <string.h>

#define TRIED(i) ((uint64_t)1 << (i))

static mg_addr_t addrs[70];

static void setup(mg_up_t *up, mg_cfg_upstream_t *ucfg, int n, int balance, const char *key)
{
    memset(ucfg, 0, sizeof *ucfg);
    ucfg->name = "test";
    ucfg->servers = addrs;
    ucfg->nservers = n;
    ucfg->balance = balance;
    ucfg->hash_key = (char *)key;
    ucfg->keepalive = 4;
    CHECK_INT(mg_up_init(up, NULL, ucfg), MG_OK);
    CHECK_INT(up->nservers, n);
}

static void test_round_robin(void)
{
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 3, MG_BAL_ROUND_ROBIN, NULL);
    CHECK(up.servers[2].addr == &addrs[2]);
    CHECK(up.servers[0].up == &up);
    /* cycles 0, 1, 2, 0, 1, 2 */
    char seq[16] = "";
    for (int k = 0; k < 6; k++)
        seq[k] = (char)('0' + mg_up_pick(&up, 0, 0));
    CHECK_STR(seq, "012012");

    /* tried servers are skipped */
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0)), 1);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0) | TRIED(1)), 2);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0) | TRIED(1)), 2);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(1) | TRIED(2)), 0);
    /* every server tried: -1 */
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0) | TRIED(1) | TRIED(2)), -1);
    CHECK_INT(mg_up_pick(&up, 0, ~(uint64_t)0), -1);

    /* a retry picks a different server than the first try */
    for (int k = 0; k < 5; k++) {
        int first = mg_up_pick(&up, 0, 0);
        int second = mg_up_pick(&up, 0, TRIED(first));
        CHECK(second >= 0 && second != first);
    }

    /* active connections do not matter to round robin */
    up.servers[0].active = 100;
    int seen[3] = { 0 };
    for (int k = 0; k < 30; k++)
        seen[mg_up_pick(&up, 0, 0)]++;
    CHECK(seen[0] == 10 && seen[1] == 10 && seen[2] == 10);
    mg_up_close(&up);
    mg_up_close(&up); /* idempotent */
}

static void test_single_and_empty(void)
{
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 1, MG_BAL_ROUND_ROBIN, NULL);
    CHECK_INT(mg_up_pick(&up, 0, 0), 0);
    CHECK_INT(mg_up_pick(&up, 0, 0), 0);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0)), -1);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(5)), 0); /* bits past the servers are ignored */
    mg_up_close(&up);

    for (int b = MG_BAL_ROUND_ROBIN; b <= MG_BAL_HASH; b++) {
        setup(&up, &ucfg, 0, b, "remote_addr");
        CHECK_INT(mg_up_pick(&up, 0, 0), -1);
        mg_up_close(&up);
    }
}

static void test_least_conn(void)
{
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 4, MG_BAL_LEAST_CONN, NULL);
    up.servers[0].active = 5;
    up.servers[1].active = 2;
    up.servers[2].active = 7;
    up.servers[3].active = 3;
    for (int k = 0; k < 8; k++) /* wherever the rotation starts */
        CHECK_INT(mg_up_pick(&up, 0, 0), 1);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(1)), 3);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(1) | TRIED(3)), 0);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0) | TRIED(1) | TRIED(3)), 2);
    CHECK_INT(mg_up_pick(&up, 0, TRIED(0) | TRIED(1) | TRIED(2) | TRIED(3)), -1);

    /* following the counts as connections come and go */
    up.servers[1].active = 9;
    CHECK_INT(mg_up_pick(&up, 0, 0), 3);
    up.servers[3].active = 9;
    CHECK_INT(mg_up_pick(&up, 0, 0), 0);

    /* ties are spread over the tied servers, never to a busier one */
    for (int i = 0; i < 4; i++)
        up.servers[i].active = 1;
    up.servers[2].active = 4;
    int seen[4] = { 0 };
    for (int k = 0; k < 30; k++)
        seen[mg_up_pick(&up, 0, 0)]++;
    CHECK_INT(seen[2], 0);
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[3] > 0);
    CHECK_INT(seen[0] + seen[1] + seen[3], 30);
    mg_up_close(&up);
}

/* --- hash ------------------------------------------------------------- */

static mg_h1_head_t head;

/* A request with URL `url`, one header `X-User: user` (if user) and a
 * client address. */
static mg_req_t *fake_req(mg_req_t *r, const char *url, const char *user, const char *remote)
{
    static mg_h1_hdr_t hdrs[1];
    memset(r, 0, sizeof *r);
    mg_h1_head_reset(&head);
    head.hdrs = hdrs;
    head.hcap = 1;
    mg_buf_append(&head.store, url, strlen(url));
    head.url_off = 0;
    head.url_len = (uint32_t)strlen(url);
    if (user) {
        uint32_t off = (uint32_t)head.store.len;
        mg_buf_append(&head.store, "X-User", 6);
        mg_buf_append(&head.store, user, strlen(user));
        hdrs[0] = (mg_h1_hdr_t){ off, 6, off + 6, (uint32_t)strlen(user) };
        head.nhdrs = 1;
    }
    r->head = &head;
    snprintf(r->remote, sizeof r->remote, "%s", remote ? remote : "");
    return r;
}

static void test_hash(void)
{
    static const char *const keys[] = { "uri", "header:x-user", "remote_addr" };
    mg_req_t r;
    for (size_t k = 0; k < MG_ARRAY_LEN(keys); k++) {
        mg_up_t up;
        mg_cfg_upstream_t ucfg;
        setup(&up, &ucfg, 5, MG_BAL_HASH, keys[k]);
        int hits[5] = { 0 };
        for (int i = 0; i < 50; i++) {
            char v[32];
            snprintf(v, sizeof v, "/item/%d", i);
            const char *url = k == 0 ? v : "/same";
            const char *user = k == 1 ? v : "same";
            const char *remote = k == 2 ? v : "10.0.0.1";
            uint32_t h = mg_req_hash(fake_req(&r, url, user, remote), ucfg.hash_key);
            int s = mg_up_pick(&up, h, 0);
            CHECK(s >= 0 && s < 5);
            if (s < 0)
                continue;
            hits[s]++;
            /* the same key always goes to the same server */
            h = mg_req_hash(fake_req(&r, url, user, remote), ucfg.hash_key);
            CHECK_INT(mg_up_pick(&up, h, 0), s);
            /* a retry goes to the next server, wrapping around */
            CHECK_INT(mg_up_pick(&up, h, TRIED(s)), (s + 1) % 5);
            CHECK_INT(mg_up_pick(&up, h, TRIED(s) | TRIED((s + 1) % 5)), (s + 2) % 5);
            CHECK_INT(mg_up_pick(&up, h, 0x1f), -1);
        }
        /* 50 keys over 5 servers: every server gets some */
        for (int s = 0; s < 5; s++)
            if (!mgt_report(hits[s] > 0, __FILE__, __LINE__, "keys spread over servers"))
                fprintf(stderr, "     key %s: server %d got none\n", keys[k], s);
        mg_up_close(&up);
    }

    /* A missing header or a gone client hashes as "": still a server. */
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 5, MG_BAL_HASH, "header:x-user");
    int s = mg_up_pick(&up, mg_req_hash(fake_req(&r, "/", NULL, NULL), ucfg.hash_key), 0);
    CHECK(s >= 0);
    ucfg.hash_key = "remote_addr";
    CHECK_INT(mg_up_pick(&up, mg_req_hash(fake_req(&r, "/", NULL, NULL), ucfg.hash_key), 0), s);
    mg_up_close(&up);
    mg_buf_free(&head.store);
}

static void test_many_servers(void)
{
    /* The tried mask has 64 bits. With more servers, those past 63 can
     * never be marked tried; they are still picked. */
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 70, MG_BAL_ROUND_ROBIN, NULL);
    int s = mg_up_pick(&up, 0, ~(uint64_t)0);
    CHECK(s >= 64 && s < 70);
    mg_up_close(&up);
}

/* Passive health with a fake clock: max_fails failed connects within
 * fail_timeout mark a server down for fail_timeout; the balancer skips it;
 * when every server is down nothing is picked; one server is never down. */
static void test_passive_health(void)
{
    mg_up_t up;
    mg_cfg_upstream_t ucfg;
    setup(&up, &ucfg, 3, MG_BAL_ROUND_ROBIN, NULL);
    ucfg.max_fails = 2;
    ucfg.fail_timeout = 10;
    double t = 1000;
    /* one failure is not enough; a second one after the window starts over */
    CHECK_INT(mg_up_server_failed(&up, 1, t), 0);
    CHECK_INT(mg_up_server_failed(&up, 1, t + 11), 0);
    CHECK_INT(mg_up_any_up(&up, t + 11), 1);
    /* a success starts the count over too */
    mg_up_server_ok(&up.servers[1]);
    CHECK_INT(mg_up_server_failed(&up, 1, t + 12), 0);
    CHECK_INT(mg_up_server_failed(&up, 1, t + 13), 1); /* down until t+23 */
    for (int k = 0; k < 6; k++)
        CHECK(mg_up_pick_at(&up, 0, 0, t + 14) != 1);
    /* down servers count as tried: only 0 is left when 2 was tried */
    CHECK_INT(mg_up_pick_at(&up, 0, TRIED(2), t + 14), 0);
    /* failures of a server already down do not extend its window */
    CHECK_INT(mg_up_server_failed(&up, 1, t + 15), 0);
    /* every server down: nothing to pick, any_up says so */
    mg_up_server_failed(&up, 0, t + 15);
    CHECK_INT(mg_up_server_failed(&up, 0, t + 15), 1);
    mg_up_server_failed(&up, 2, t + 16);
    CHECK_INT(mg_up_server_failed(&up, 2, t + 16), 1);
    CHECK_INT(mg_up_pick_at(&up, 0, 0, t + 17), -1);
    CHECK_INT(mg_up_any_up(&up, t + 17), 0);
    /* after the window, server 1 is tried again; then all of them */
    CHECK_INT(mg_up_pick_at(&up, 0, 0, t + 23), 1);
    CHECK_INT(mg_up_any_up(&up, t + 23), 1);
    int seen[3] = { 0 };
    for (int k = 0; k < 6; k++)
        seen[mg_up_pick_at(&up, 0, 0, t + 30)]++;
    CHECK(seen[0] == 2 && seen[1] == 2 && seen[2] == 2);
    mg_up_close(&up);

    /* least_conn skips a down server too */
    setup(&up, &ucfg, 2, MG_BAL_LEAST_CONN, NULL);
    ucfg.max_fails = 1;
    ucfg.fail_timeout = 5;
    up.servers[1].active = 0;
    up.servers[0].active = 9;
    CHECK_INT(mg_up_server_failed(&up, 1, t), 1);
    CHECK_INT(mg_up_pick_at(&up, 0, 0, t + 1), 0);
    mg_up_close(&up);

    /* max_fails = 0 never marks down; one server is never marked down */
    setup(&up, &ucfg, 2, MG_BAL_ROUND_ROBIN, NULL);
    ucfg.max_fails = 0;
    ucfg.fail_timeout = 10;
    CHECK_INT(mg_up_server_failed(&up, 0, t), 0);
    CHECK_INT(mg_up_pick_at(&up, 0, TRIED(1), t), 0);
    mg_up_close(&up);
    setup(&up, &ucfg, 1, MG_BAL_ROUND_ROBIN, NULL);
    ucfg.max_fails = 1;
    CHECK_INT(mg_up_server_failed(&up, 0, t), 0);
    CHECK_INT(mg_up_pick_at(&up, 0, 0, t), 0);
    mg_up_close(&up);
}

int main(void)
{
    RUN(test_round_robin);
    RUN(test_single_and_empty);
    RUN(test_least_conn);
    RUN(test_hash);
    RUN(test_many_servers);
    RUN(test_passive_health);
    return mgt_done("upstream_pick");
}
