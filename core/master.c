#include "master.h"
#include "config.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "notify.h"
#include "server.h"
#include "shdict.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS MG_MAX_LISTENERS

typedef struct worker {
    pid_t pid;              /* 0 when not running */
    double started;
    double respawn_at;      /* 0 = not waiting */
    int quick_deaths;       /* consecutive deaths soon after start */
} worker_t;

typedef struct master {
    mg_loop_t *cfg_loop;
    mg_met_shm_t *shm;
    sigset_t oldmask;
    int nworkers;
    worker_t w[MG_MET_MAX_WORKERS];
    pid_t draining[4 * MG_MET_MAX_WORKERS]; /* old workers finishing after a restart */
    int ndraining;
    int fds[MAX_FDS];
    mg_addr_t addrs[MAX_FDS];
    int admin[MAX_FDS];
    int nfds;
    int stopping;
    double stop_deadline;
} master_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* --- listening sockets ---------------------------------------------------- */

static int find_fd(master_t *m, const char *text, int admin)
{
    for (int i = 0; i < m->nfds; i++)
        if (m->admin[i] == admin && strcmp(m->addrs[i].text, text) == 0)
            return i;
    return -1;
}

/* Binds the config's listeners into a new set, reusing sockets already
 * open for the same address. 0, or -1 (the new set is closed again). */
static int bind_set(master_t *m, const mg_cfg_t *cfg, int *fds, mg_addr_t *addrs, int *admin,
                    int *n, char *err, size_t errlen)
{
    *n = 0;
    int total = cfg->nlisten + (cfg->has_admin ? 1 : 0);
    for (int i = 0; i < total && *n < MAX_FDS; i++) {
        int is_admin = i == cfg->nlisten;
        const mg_addr_t *a = is_admin ? &cfg->admin : &cfg->listen[i].addr;
        int old = find_fd(m, a->text, is_admin);
        int fd = old >= 0 ? m->fds[old] : mg_srv_bind(a, 0, err, errlen);
        if (fd < 0)
            goto fail;
        fds[*n] = fd;
        addrs[*n] = *a;
        admin[*n] = is_admin;
        (*n)++;
    }
    return 0;
fail:
    for (int i = 0; i < *n; i++)
        if (find_fd(m, addrs[i].text, admin[i]) < 0)
            close(fds[i]);
    return -1;
}

/* --- shared dictionaries -------------------------------------------------- */

/* Maps the config's gw.shared dictionaries (and rate_limit's) that are not
 * mapped yet, before workers are forked so they all share them. The count
 * created, or -1. */
static int ensure_shared(const mg_cfg_t *cfg, char *err, size_t errlen)
{
    int created = 0;
    int rc = mg_shd_ensure(MG_SHD_RATE_LIMIT, MG_SHD_RATE_LIMIT_SIZE, err, errlen);
    if (rc < 0)
        return -1;
    created += rc;
    for (int i = 0; i < cfg->nshared; i++) {
        int resized = mg_shd_find(cfg->shared[i].name, 0) != NULL;
        rc = mg_shd_ensure(cfg->shared[i].name, cfg->shared[i].size, err, errlen);
        if (rc < 0)
            return -1;
        if (rc > 0 && resized)
            mg_log_warn("shared dictionary %s: new size %zu; it starts empty",
                        cfg->shared[i].name, cfg->shared[i].size);
        created += rc;
    }
    return created;
}

/* --- workers ------------------------------------------------------------- */

static void worker_main(master_t *m, int idx) __attribute__((noreturn));
static void worker_main(master_t *m, int idx)
{
    pid_t master_pid = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the master */
    mg_shd_forked();
    /* a USR1 before the loop's handler is up must not kill the worker (its
     * logs are opened by path after this anyway) */
    signal(SIGUSR1, SIG_IGN);
    sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
    /* The worker is the master's loop, forked: it starts on the last config
     * the master accepted (already loaded, plugins included), even if the
     * file on disk has been broken since (nginx does the same). */
    mg_loop_t *loop = m->cfg_loop;
    ev_loop_fork(loop->ev);
    loop->inherited = 1;
    loop->master_pid = (int)master_pid;
    loop->worker_index = idx;
    loop->met_shm = m->shm;
    loop->met = &m->shm->w[idx];
    loop->gen->id = m->shm->generation;
    for (int i = 0; i < m->nfds; i++) {
        if (m->admin[i] && idx != 0)
            close(m->fds[i]); /* worker 0 serves the admin API */
        else
            mg_loop_adopt_listener(loop, m->fds[i], &m->addrs[i], m->admin[i]);
    }
    int rc = mg_loop_run(loop);
    fflush(stdout);
    _exit(rc);
}

static int spawn(master_t *m, int idx)
{
    pid_t pid = fork();
    if (pid < 0) {
        mg_log_error("fork: %s", strerror(errno));
        m->w[idx].respawn_at = now_s() + 1;
        return -1;
    }
    if (pid == 0)
        worker_main(m, idx);
    m->w[idx].pid = pid;
    m->w[idx].started = now_s();
    m->w[idx].respawn_at = 0;
    m->shm->w[idx].pid = pid;
    return 0;
}

static void signal_all(master_t *m, int sig)
{
    for (int i = 0; i < m->nworkers; i++)
        if (m->w[i].pid)
            kill(m->w[i].pid, sig);
    for (int i = 0; i < m->ndraining; i++)
        kill(m->draining[i], sig);
}

static int running(master_t *m)
{
    int n = m->ndraining;
    for (int i = 0; i < m->nworkers; i++)
        if (m->w[i].pid)
            n++;
    return n;
}

static void describe(int status, char *buf, size_t n)
{
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "stopped (status %d)", status);
}

static void reap(master_t *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < m->ndraining; i++)
            if (m->draining[i] == pid) {
                m->draining[i] = m->draining[--m->ndraining];
                pid = 0;
                break;
            }
        if (pid == 0)
            continue;
        for (int i = 0; i < m->nworkers; i++) {
            if (m->w[i].pid != pid)
                continue;
            m->w[i].pid = 0;
            if (m->stopping)
                break;
            char why[128];
            describe(status, why, sizeof why);
            /* Back off a crash loop: a worker that dies within 2 s of
             * starting waits 0.1, 0.2, 0.4 ... up to 10 s before the next try. */
            double now = now_s();
            if (now - m->w[i].started < 2.0)
                m->w[i].quick_deaths++;
            else
                m->w[i].quick_deaths = 0;
            double delay = 0;
            if (m->w[i].quick_deaths > 0) {
                delay = 0.1 * (double)(1 << (m->w[i].quick_deaths < 7 ? m->w[i].quick_deaths : 7));
                if (delay > 10)
                    delay = 10;
            }
            mg_log_error("worker %d (pid %d) %s; restarting it%s", i, (int)pid, why,
                         delay > 0 ? " after a back-off" : "");
            m->shm->w[i].restarts++;
            m->w[i].respawn_at = now + delay;
            break;
        }
    }
}

/* A new listener set or worker count: new workers start on the new
 * sockets, the old ones get SIGTERM and drain their in-flight requests. */
static void rolling_restart(master_t *m, int *fds, mg_addr_t *addrs, int *admin, int n,
                            int nworkers)
{
    for (int i = 0; i < m->nworkers; i++) {
        if (m->w[i].pid && m->ndraining < (int)(sizeof m->draining / sizeof m->draining[0]))
            m->draining[m->ndraining++] = m->w[i].pid;
        m->w[i].pid = 0;
    }
    /* close sockets the new set no longer has */
    for (int i = 0; i < m->nfds; i++) {
        int kept = 0;
        for (int j = 0; j < n; j++)
            if (fds[j] == m->fds[i])
                kept = 1;
        if (!kept) {
            mg_log_info("no longer listening on %s", m->addrs[i].text);
            close(m->fds[i]);
        }
    }
    memcpy(m->fds, fds, sizeof(int) * (size_t)n);
    memcpy(m->addrs, addrs, sizeof(mg_addr_t) * (size_t)n);
    memcpy(m->admin, admin, sizeof(int) * (size_t)n);
    m->nfds = n;
    m->nworkers = nworkers;
    m->shm->nworkers = nworkers;
    for (int i = 0; i < nworkers; i++) {
        m->w[i].quick_deaths = 0;
        spawn(m, i);
    }
    for (int i = 0; i < m->ndraining; i++)
        kill(m->draining[i], SIGTERM);
}

static int want_workers(const mg_cfg_t *cfg)
{
    int n = cfg->workers;
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    return n > MG_MET_MAX_WORKERS ? MG_MET_MAX_WORKERS : n;
}

/* Checks that every address the new config adds can be bound (workers
 * bind them themselves, with SO_REUSEPORT, next to each other). */
static int can_bind_new(master_t *m, const mg_cfg_t *cfg, char *err, size_t errlen)
{
    int total = cfg->nlisten + (cfg->has_admin ? 1 : 0);
    for (int i = 0; i < total; i++) {
        int is_admin = i == cfg->nlisten;
        const mg_addr_t *a = is_admin ? &cfg->admin : &cfg->listen[i].addr;
        if (find_fd(m, a->text, is_admin) >= 0)
            continue;
        int fd = mg_srv_bind(a, 1, err, errlen);
        if (fd < 0)
            return -1;
        close(fd);
    }
    return 0;
}

/* Closes the master's copies of sockets the new config dropped, so the
 * kernel stops queueing connections nobody will accept. */
static void close_dropped(master_t *m, const mg_cfg_t *cfg)
{
    int k = 0;
    for (int i = 0; i < m->nfds; i++) {
        int kept = 0;
        if (m->admin[i])
            kept = cfg->has_admin && strcmp(cfg->admin.text, m->addrs[i].text) == 0;
        for (int j = 0; !m->admin[i] && j < cfg->nlisten; j++)
            if (strcmp(cfg->listen[j].addr.text, m->addrs[i].text) == 0)
                kept = 1;
        if (kept) {
            m->fds[k] = m->fds[i];
            m->addrs[k] = m->addrs[i];
            m->admin[k] = m->admin[i];
            k++;
        } else {
            close(m->fds[i]);
        }
    }
    m->nfds = k;
}

static void reload(master_t *m)
{
    char err[1024];
    mg_gen_t *old = m->cfg_loop->gen;
    mg_gen_ref(old);
    int new_dicts = 0; /* a new shared dictionary: workers forked from now on have it */
    if (mg_loop_load(m->cfg_loop, err, sizeof err) != 0 ||
        can_bind_new(m, m->cfg_loop->gen->cfg, err, sizeof err) != 0 ||
        (new_dicts = ensure_shared(m->cfg_loop->gen->cfg, err, sizeof err)) < 0) {
        if (m->cfg_loop->gen != old) { /* back to the last good config */
            mg_gen_t *bad = m->cfg_loop->gen;
            m->cfg_loop->gen = old;
            mg_gen_ref(old);
            mg_gen_unref(bad);
        }
        mg_gen_unref(old);
        mg_log_error("reload failed, workers keep the previous config: %s", err);
        mg_met_reload(m->shm, 0, err, ev_time());
        return;
    }
    mg_gen_unref(old);
    const mg_cfg_t *cfg = m->cfg_loop->gen->cfg;
    if (mg_log_configure(cfg->error_log, cfg->error_log_level, err, sizeof err) != 0)
        mg_log_error("%s", err);
    m->shm->generation = m->cfg_loop->gen->id;
    int nworkers = want_workers(cfg);
    if (nworkers != m->nworkers || new_dicts > 0) {
        int fds[MAX_FDS], admin[MAX_FDS], n;
        mg_addr_t addrs[MAX_FDS];
        if (bind_set(m, cfg, fds, addrs, admin, &n, err, sizeof err) != 0) {
            mg_log_error("reload failed, workers keep the previous config: %s", err);
            mg_met_reload(m->shm, 0, err, ev_time());
            return;
        }
        mg_met_reload(m->shm, 1, NULL, ev_time());
        mg_log_info("reload: generation %u with %d workers; restarting workers",
                    m->shm->generation, nworkers);
        rolling_restart(m, fds, addrs, admin, n, nworkers);
        return;
    }
    /* Workers reload in place: kept sockets are untouched, added ones they
     * bind, dropped ones they (and we) close. */
    close_dropped(m, cfg);
    mg_met_reload(m->shm, 1, NULL, ev_time());
    mg_log_info("reload: generation %u; signalling %d workers", m->shm->generation, m->nworkers);
    for (int i = 0; i < m->nworkers; i++)
        if (m->w[i].pid)
            kill(m->w[i].pid, SIGHUP);
}

int mg_master_run(mg_loop_t *cfg_loop, int nworkers)
{
    master_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return 1;
    m->cfg_loop = cfg_loop;
    m->nworkers = nworkers;
    /* blocked before the listeners are bound: once a client can connect,
     * a signal is taken by the loop below, never by its default action */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &m->oldmask);
    char err[512];
    if (bind_set(m, cfg_loop->gen->cfg, m->fds, m->addrs, m->admin, &m->nfds, err, sizeof err)) {
        mg_log_error("%s", err);
        free(m);
        return 1;
    }
    for (int i = 0; i < m->nfds; i++)
        mg_log_info("listening on %s%s", m->addrs[i].text,
                    m->admin[i]                                   ? " (admin)"
                    : mg_gen_tls(cfg_loop->gen, m->addrs[i].text) ? " (TLS)"
                                                                  : "");
    m->shm = mg_met_create(nworkers);
    if (m->shm == NULL) {
        mg_log_error("cannot map the metrics region");
        free(m);
        return 1;
    }
    m->shm->started = ev_time();
    m->shm->generation = cfg_loop->gen->id;
    if (ensure_shared(cfg_loop->gen->cfg, err, sizeof err) < 0) {
        mg_log_error("%s", err);
        mg_met_destroy(m->shm);
        free(m);
        return 1;
    }
    mg_log_info("moongate %s master (pid %d) starting %d workers", MG_VERSION, (int)getpid(),
                nworkers);
    fflush(stdout);
    for (int i = 0; i < nworkers; i++)
        spawn(m, i);
    /* sockets bound (connections queue from now on) and workers forked */
    mg_notify_ready();
    int exit_code = 0;
    for (;;) {
        if (m->stopping && running(m) == 0)
            break;
        double now = now_s(), next = now + 1.0;
        for (int i = 0; i < m->nworkers && !m->stopping; i++) {
            if (m->w[i].pid == 0 && m->w[i].respawn_at > 0) {
                if (m->w[i].respawn_at <= now)
                    spawn(m, i);
                else if (m->w[i].respawn_at < next)
                    next = m->w[i].respawn_at;
            }
        }
        if (m->stopping && now > m->stop_deadline) {
            mg_log_warn("workers still running after drain_timeout; killing them");
            signal_all(m, SIGKILL);
            m->stop_deadline = now + 60;
        }
        double wait = next - now;
        if (wait < 0.001)
            wait = 0.001;
        struct timespec ts = { (time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9) };
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        if (sig < 0)
            continue;
        switch (sig) {
        case SIGCHLD:
            reap(m);
            break;
        case SIGHUP:
            if (!m->stopping) {
                mg_notify_reloading();
                reload(m);
                mg_notify_ready();
            }
            break;
        case SIGUSR1: /* logrotate: every process reopens its own files */
            mg_log_reopen();
            mg_log_info("signal USR1: reopening the log files in %d workers", running(m));
            signal_all(m, SIGUSR1);
            break;
        case SIGTERM:
        case SIGINT:
        case SIGQUIT:
            if (m->stopping && sig == SIGINT) {
                mg_log_info("second SIGINT: stopping workers now");
                signal_all(m, SIGINT);
                break;
            }
            if (!m->stopping) {
                mg_log_info("signal %d: stopping %d workers gracefully", sig, running(m));
                m->stopping = 1;
                mg_notify("STOPPING=1");
                /* refuse new connections now: the workers close theirs too */
                for (int i = 0; i < m->nfds; i++)
                    close(m->fds[i]);
                m->nfds = 0;
                m->stop_deadline = now_s() + cfg_loop->gen->cfg->limits.drain_timeout + 5;
                signal_all(m, sig);
            }
            break;
        }
    }
    mg_log_info("master stopped");
    for (int i = 0; i < m->nfds; i++)
        close(m->fds[i]);
    mg_met_destroy(m->shm);
    free(m);
    return exit_code;
}
