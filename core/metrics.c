#include "metrics.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

const double mg_met_bounds[MG_MET_BUCKETS] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                0.05,   0.1,   0.25,   0.5,   1,    5 };

mg_met_shm_t *mg_met_create(int nworkers)
{
    void *p = mmap(NULL, sizeof(mg_met_shm_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    mg_met_shm_t *m = p; /* mmap gives zeroed pages */
    m->nworkers = nworkers > MG_MET_MAX_WORKERS ? MG_MET_MAX_WORKERS : nworkers;
    m->last_reload_ok = -1;
    return m;
}

void mg_met_destroy(mg_met_shm_t *m)
{
    if (m)
        munmap(m, sizeof *m);
}

static uint32_t hash_name(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* The length `name` is kept with (cut to fit the slots' arrays). */
static size_t name_len(const char *name)
{
    size_t n = strlen(name);
    return n >= MG_MET_ROUTE_LEN ? MG_MET_ROUTE_LEN - 1 : n;
}

/* Route histograms and upstream counters are open-addressed tables keyed
 * by name: the same probe order in every worker, so a reader finds a name
 * in any worker's table the way its writer placed it. A table has `cap`
 * entries of `size` bytes, each starting with its `used` word, its name
 * at `name_off`. `claim`: take a free slot for a name not there yet (the
 * writer only). NULL: not there (or the table is full). */
static void *find_slot(void *tab, size_t size, int cap, size_t name_off, const char *name,
                       size_t n, uint32_t h, int claim)
{
    for (int p = 0; p < cap; p++) {
        char *e = (char *)tab + size * ((h + (uint32_t)p) % (uint32_t)cap);
        uint32_t *used = (uint32_t *)(void *)e;
        char *nm = e + name_off;
        if (!__atomic_load_n(used, __ATOMIC_ACQUIRE)) {
            if (!claim)
                return NULL;
            memcpy(nm, name, n);
            nm[n] = '\0';
            __atomic_store_n(used, 1, __ATOMIC_RELEASE);
            return e;
        }
        if (strncmp(nm, name, n) == 0 && nm[n] == '\0')
            return e;
    }
    return NULL;
}

/* n: name_len(name), h: hash_name(name, n) (the caller may have them). */
static mg_met_route_t *route_slot_h(const mg_met_route_t *tab, const char *name, size_t n,
                                    uint32_t h, int claim)
{
    return find_slot((void *)tab, sizeof *tab, MG_MET_ROUTES, offsetof(mg_met_route_t, route),
                     name, n, h, claim);
}

static mg_met_route_t *route_slot(const mg_met_route_t *tab, const char *name, int claim)
{
    size_t n = name_len(name);
    return route_slot_h(tab, name, n, hash_name(name, n), claim);
}

static mg_met_up_t *up_slot(const mg_met_up_t *tab, const char *name, int claim)
{
    size_t n = name_len(name);
    return find_slot((void *)tab, sizeof *tab, MG_MET_UPS, offsetof(mg_met_up_t, name), name,
                     n, hash_name(name, n), claim);
}

void mg_met_upstream(mg_met_worker_t *w, const char *name, int what)
{
    mg_met_up_t *u = w && what >= 0 && what <= MG_MET_UP_N ? up_slot(w->ups, name, 1) : NULL;
    if (u && what < MG_MET_UP_N)
        u->n[what]++;
}

void mg_met_request(mg_met_worker_t *w, const char *route, int status, double seconds)
{
    w->requests++;
    int b = 0;
    while (b < MG_MET_BUCKETS && seconds > mg_met_bounds[b])
        b++;
    size_t rl = name_len(route);
    uint32_t rh = hash_name(route, rl); /* once, for both tables */
    mg_met_route_t *rt = route_slot_h(w->routes, route, rl, rh, 1);
    if (rt) {
        rt->hist[b]++;
        rt->sum += seconds;
        rt->count++;
    } else {
        w->route_overflow++;
    }
    uint32_t h = (rh ^ (uint32_t)status) * 16777619u; /* the (route, status) pair */
    for (int probe = 0; probe < MG_MET_KEYS; probe++) {
        mg_met_key_t *k = &w->keys[(h + (uint32_t)probe) % MG_MET_KEYS];
        if (!k->used) {
            memcpy(k->route, route, rl);
            k->route[rl] = '\0';
            k->status = (uint16_t)status;
            k->count = 1;
            __atomic_store_n(&k->used, 1, __ATOMIC_RELEASE);
            return;
        }
        if (k->status == status && strncmp(k->route, route, rl) == 0 && k->route[rl] == '\0') {
            k->count++;
            return;
        }
    }
    w->overflow++;
}

void mg_met_reload(mg_met_shm_t *m, int ok, const char *err, double now)
{
    if (ok)
        m->reloads_ok++;
    else
        m->reloads_failed++;
    m->last_reload_ok = ok;
    m->last_reload_at = now;
    snprintf(m->last_reload_error, sizeof m->last_reload_error, "%s", ok || !err ? "" : err);
}

/* --- rendering ------------------------------------------------------------ */

/* Whether `name` appears in a worker's table before worker wi: it was
 * rendered with that worker's. */
#define SEEN_BEFORE(m, wi, table, slotfn, name, seen)                                     \
    do {                                                                                   \
        seen = 0;                                                                          \
        for (int pw_ = 0; pw_ < (wi) && !seen; pw_++)                                      \
            seen = slotfn((m)->w[pw_].table, (name), 0) != NULL;                           \
    } while (0)

/* The latency histogram, one per route (summed over the workers). */
static void render_histograms(mg_buf_t *o, const mg_met_shm_t *m)
{
    int n = m->nworkers;
    mg_buf_printf(o, "# HELP moongate_request_duration_seconds Time from request head to "
                     "response end, by route.\n"
                     "# TYPE moongate_request_duration_seconds histogram\n");
    for (int wi = 0; wi < n; wi++) {
        for (int k = 0; k < MG_MET_ROUTES; k++) {
            const mg_met_route_t *rt = &m->w[wi].routes[k];
            if (!__atomic_load_n(&rt->used, __ATOMIC_ACQUIRE))
                continue;
            int seen;
            SEEN_BEFORE(m, wi, routes, route_slot, rt->route, seen);
            if (seen)
                continue;
            uint64_t hist[MG_MET_BUCKETS + 1] = { 0 }, count = 0;
            double sum = 0;
            for (int ow = wi; ow < n; ow++) {
                const mg_met_route_t *q = route_slot(m->w[ow].routes, rt->route, 0);
                if (q == NULL)
                    continue;
                for (int b = 0; b <= MG_MET_BUCKETS; b++)
                    hist[b] += q->hist[b];
                count += q->count;
                sum += q->sum;
            }
            uint64_t cum = 0;
            for (int b = 0; b <= MG_MET_BUCKETS; b++) {
                cum += hist[b];
                mg_buf_printf(o, "moongate_request_duration_seconds_bucket{route=\"");
                mg_buf_prom_label(o, rt->route);
                if (b < MG_MET_BUCKETS)
                    mg_buf_printf(o, "\",le=\"%g\"} %llu\n", mg_met_bounds[b],
                                  (unsigned long long)cum);
                else
                    mg_buf_printf(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
            }
            mg_buf_printf(o, "moongate_request_duration_seconds_sum{route=\"");
            mg_buf_prom_label(o, rt->route);
            mg_buf_printf(o, "\"} %.6f\n", sum);
            mg_buf_printf(o, "moongate_request_duration_seconds_count{route=\"");
            mg_buf_prom_label(o, rt->route);
            mg_buf_printf(o, "\"} %llu\n", (unsigned long long)count);
        }
    }
}

/* Upstream errors and retries, by upstream (summed over the workers). */
static void render_upstreams(mg_buf_t *o, const mg_met_shm_t *m)
{
    static const struct {
        const char *name, *help;
        int what;
    } fams[] = {
        { "moongate_upstream_connect_errors_total", "Failed upstream connects, by upstream.",
          MG_MET_UP_CONNECT },
        { "moongate_upstream_timeouts_total", "Upstream connect or read timeouts, by upstream.",
          MG_MET_UP_TIMEOUT },
        { "moongate_upstream_retries_total", "Requests retried on another server, by upstream.",
          MG_MET_UP_RETRY },
    };
    static const char *const kinds[] = { "connect", "timeout", "reset", "invalid" };
    int n = m->nworkers;
    for (size_t f = 0; f <= sizeof fams / sizeof fams[0]; f++) {
        if (f < sizeof fams / sizeof fams[0])
            mg_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n", fams[f].name, fams[f].help,
                fams[f].name);
        else
            mg_buf_printf(o, "# HELP moongate_upstream_errors_total Upstream failures, by "
                             "upstream and kind (connect, timeout, reset, invalid).\n"
                             "# TYPE moongate_upstream_errors_total counter\n");
        for (int wi = 0; wi < n; wi++) {
            for (int k = 0; k < MG_MET_UPS; k++) {
                const mg_met_up_t *u = &m->w[wi].ups[k];
                if (!__atomic_load_n(&u->used, __ATOMIC_ACQUIRE))
                    continue;
                int seen;
                SEEN_BEFORE(m, wi, ups, up_slot, u->name, seen);
                if (seen)
                    continue;
                uint64_t tot[MG_MET_UP_N] = { 0 };
                for (int ow = wi; ow < n; ow++) {
                    const mg_met_up_t *q = up_slot(m->w[ow].ups, u->name, 0);
                    for (int i = 0; q && i < MG_MET_UP_N; i++)
                        tot[i] += q->n[i];
                }
                if (f < sizeof fams / sizeof fams[0]) {
                    mg_buf_printf(o, "%s{upstream=\"", fams[f].name);
                    mg_buf_prom_label(o, u->name);
                    mg_buf_printf(o, "\"} %llu\n", (unsigned long long)tot[fams[f].what]);
                    continue;
                }
                for (int i = 0; i < 4; i++) {
                    mg_buf_printf(o, "moongate_upstream_errors_total{upstream=\"");
                    mg_buf_prom_label(o, u->name);
                    mg_buf_printf(o, "\",kind=\"%s\"} %llu\n", kinds[i],
                                  (unsigned long long)tot[i]);
                }
            }
        }
    }
}

void mg_met_render(const mg_met_shm_t *m, const char *version, mg_buf_t *out)
{
    int n = m->nworkers;
    mg_buf_printf(out, "# HELP moongate_build_info moongate version.\n# TYPE moongate_build_info gauge\n"
            "moongate_build_info{version=\"%s\"} 1\n", version);
    mg_buf_printf(out, "# HELP moongate_requests_total Requests answered, by route and status.\n"
            "# TYPE moongate_requests_total counter\n");
    /* merge the workers' (route, status) pairs */
    for (int wi = 0; wi < n; wi++) {
        for (int k = 0; k < MG_MET_KEYS; k++) {
            const mg_met_key_t *key = &m->w[wi].keys[k];
            if (!__atomic_load_n(&key->used, __ATOMIC_ACQUIRE))
                continue;
            int seen = 0; /* already printed for an earlier worker? */
            for (int pw = 0; pw < wi && !seen; pw++)
                for (int pk = 0; pk < MG_MET_KEYS && !seen; pk++) {
                    const mg_met_key_t *q = &m->w[pw].keys[pk];
                    if (q->used && q->status == key->status && strcmp(q->route, key->route) == 0)
                        seen = 1;
                }
            if (seen)
                continue;
            uint64_t total = 0;
            for (int ow = wi; ow < n; ow++)
                for (int ok = 0; ok < MG_MET_KEYS; ok++) {
                    const mg_met_key_t *q = &m->w[ow].keys[ok];
                    if (q->used && q->status == key->status && strcmp(q->route, key->route) == 0)
                        total += q->count;
                }
            mg_buf_printf(out, "moongate_requests_total{route=\"");
            mg_buf_prom_label(out, key->route);
            mg_buf_printf(out, "\",status=\"%d\"} %llu\n", key->status, (unsigned long long)total);
        }
    }
    uint64_t restarts = 0;
    int64_t conns = 0, active = 0, idle = 0, busy = 0, tunnels = 0;
    for (int wi = 0; wi < n; wi++) {
        const mg_met_worker_t *w = &m->w[wi];
        restarts += w->restarts;
        conns += w->conns;
        active += w->active;
        idle += w->up_idle;
        busy += w->lua_busy;
        tunnels += w->tunnels;
    }
    render_histograms(out, m);
    render_upstreams(out, m);
    mg_buf_printf(out, "# HELP moongate_connections_active Open client connections.\n"
            "# TYPE moongate_connections_active gauge\nmoongate_connections_active %lld\n",
        (long long)conns);
    mg_buf_printf(out, "# HELP moongate_requests_active Requests in flight.\n"
            "# TYPE moongate_requests_active gauge\nmoongate_requests_active %lld\n",
        (long long)active);
    mg_buf_printf(out, "# HELP moongate_tunnels_active Open tunnels (WebSocket and other upgrades).\n"
            "# TYPE moongate_tunnels_active gauge\nmoongate_tunnels_active %lld\n",
        (long long)tunnels);
    /* aborts must bring this back to 0 too: a request whose wait was not
     * cancelled keeps its coroutine */
    mg_buf_printf(out, "# HELP moongate_lua_coroutines Request coroutines alive, log phases included.\n"
            "# TYPE moongate_lua_coroutines gauge\nmoongate_lua_coroutines %lld\n",
        (long long)busy);
    mg_buf_printf(out, "# HELP moongate_upstream_connections_idle Idle keep-alive upstream connections.\n"
            "# TYPE moongate_upstream_connections_idle gauge\n"
            "moongate_upstream_connections_idle %lld\n", (long long)idle);
    mg_buf_printf(out, "# HELP moongate_lua_memory_bytes Lua heap per worker.\n"
            "# TYPE moongate_lua_memory_bytes gauge\n");
    for (int wi = 0; wi < n; wi++)
        mg_buf_printf(out, "moongate_lua_memory_bytes{worker=\"%d\"} %lld\n", wi, (long long)m->w[wi].lua_mem);
    mg_buf_printf(out, "# HELP moongate_reloads_total Config reloads by result.\n"
            "# TYPE moongate_reloads_total counter\n"
            "moongate_reloads_total{result=\"ok\"} %llu\n"
            "moongate_reloads_total{result=\"failed\"} %llu\n",
        (unsigned long long)m->reloads_ok, (unsigned long long)m->reloads_failed);
    mg_buf_printf(out, "# HELP moongate_config_generation The config generation in force.\n"
            "# TYPE moongate_config_generation gauge\nmoongate_config_generation %u\n",
        m->generation);
    mg_buf_printf(out, "# HELP moongate_workers Worker processes.\n# TYPE moongate_workers gauge\n"
            "moongate_workers %d\n", n);
    mg_buf_printf(out, "# HELP moongate_worker_restarts_total Workers restarted after dying.\n"
            "# TYPE moongate_worker_restarts_total counter\n"
            "moongate_worker_restarts_total %llu\n", (unsigned long long)restarts);
}
