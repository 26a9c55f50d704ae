/* Unit tests for core/shdict: values of every type and size (chains of
 * chunks), LRU eviction, expiry, atomic incr from several processes, the
 * token bucket, and a process that dies holding the lock. */
#include "shdict.h"
#include "mgtest.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *vbuf;
static size_t vcap;

static mg_shd_t *dict(const char *name, size_t size)
{
    char err[256];
    CHECK(mg_shd_ensure(name, size, err, sizeof err) >= 0);
    return mg_shd_find(name, size);
}

static mg_shd_val_t str(const char *s)
{
    mg_shd_val_t v = { .type = MG_SHD_STR, .s = s, .len = strlen(s) };
    return v;
}

static mg_shd_val_t integer(int64_t i)
{
    mg_shd_val_t v = { .type = MG_SHD_INT, .i = i };
    return v;
}

static void sleep_s(double s)
{
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    nanosleep(&ts, NULL);
}

static void test_types_and_chains(void)
{
    mg_shd_t *d = dict("types", 65536);
    int forcible;
    size_t full = mg_shd_free_space(d);
    CHECK(full > 60000);
    /* strings from empty to many chunks long, keys too */
    char key[300], val[3000];
    for (int n = 0; n < 40; n++) {
        int kl = 1 + (n * 37) % 299, vl = (n * 211) % 3000;
        memset(key, 'a' + n % 26, (size_t)kl);
        key[kl] = '\0';
        for (int i = 0; i < vl; i++)
            val[i] = (char)('0' + (i + n) % 10);
        val[vl] = '\0';
        mg_shd_val_t v = str(val);
        CHECK_INT(mg_shd_set(d, key, (size_t)kl, &v, 0, 0, &forcible), MG_SHD_OK);
        mg_shd_val_t out;
        CHECK_INT(mg_shd_get(d, key, (size_t)kl, &out, &vbuf, &vcap), MG_SHD_OK);
        CHECK_INT(out.type, MG_SHD_STR);
        CHECK_MEM(out.s, out.len, val);
    }
    mg_shd_val_t b = { .type = MG_SHD_BOOL, .i = 1 }, f = { .type = MG_SHD_NUM, .n = 2.5 }, out;
    CHECK_INT(mg_shd_set(d, "b", 1, &b, 0, 0, &forcible), MG_SHD_OK);
    CHECK_INT(mg_shd_set(d, "f", 1, &f, 0, 0, &forcible), MG_SHD_OK);
    CHECK_INT(mg_shd_get(d, "b", 1, &out, &vbuf, &vcap), MG_SHD_OK);
    CHECK_INT(out.type, MG_SHD_BOOL);
    CHECK_INT(out.i, 1);
    CHECK_INT(mg_shd_get(d, "f", 1, &out, &vbuf, &vcap), MG_SHD_OK);
    CHECK(out.type == MG_SHD_NUM && out.n == 2.5);
    /* add refuses a present key, deleting gives every chunk back */
    CHECK_INT(mg_shd_set(d, "b", 1, &f, 0, 1, &forcible), MG_SHD_EXISTS);
    mg_shd_flush_all(d);
    CHECK_INT(mg_shd_free_space(d), full);
    CHECK_INT(mg_shd_get(d, "b", 1, &out, &vbuf, &vcap), MG_SHD_NOTFOUND);
}

static void test_lru_and_nomem(void)
{
    mg_shd_t *d = dict("lru", 8192);
    int forcible, evicted = 0;
    char key[32];
    mg_shd_val_t v = str("0123456789012345678901234567890123456789");
    for (int i = 0; i < 500; i++) {
        int n = snprintf(key, sizeof key, "k%d", i);
        CHECK_INT(mg_shd_set(d, key, (size_t)n, &v, 0, 0, &forcible), MG_SHD_OK);
        evicted += forcible;
        mg_shd_val_t out;
        if (i == 40) /* k0 is the most recently used one now */
            CHECK_INT(mg_shd_get(d, "k0", 2, &out, &vbuf, &vcap), MG_SHD_OK);
        if (i == 70) { /* about 62 fit: the least recently used went first */
            CHECK_INT(mg_shd_get(d, "k0", 2, &out, &vbuf, &vcap), MG_SHD_OK);
            CHECK_INT(mg_shd_get(d, "k1", 2, &out, &vbuf, &vcap), MG_SHD_NOTFOUND);
        }
    }
    CHECK(evicted > 0);
    mg_shd_val_t out;
    CHECK_INT(mg_shd_get(d, "k499", 4, &out, &vbuf, &vcap), MG_SHD_OK); /* the newest stays */
    CHECK_INT(mg_shd_get(d, "k1", 2, &out, &vbuf, &vcap), MG_SHD_NOTFOUND); /* the oldest went */
    /* bigger than the dictionary: refused, and the old value stays */
    char *big = malloc(9000);
    memset(big, 'x', 8999);
    big[8999] = '\0';
    mg_shd_val_t bv = str(big);
    CHECK_INT(mg_shd_set(d, "k499", 4, &bv, 0, 0, &forcible), MG_SHD_NOMEM);
    CHECK_INT(mg_shd_get(d, "k499", 4, &out, &vbuf, &vcap), MG_SHD_OK);
    free(big);
}

static void test_expiry(void)
{
    mg_shd_t *d = dict("ttl", 8192);
    int forcible;
    mg_shd_val_t v = str("v"), out;
    double ttl;
    CHECK_INT(mg_shd_set(d, "a", 1, &v, 30, 0, &forcible), MG_SHD_OK);
    CHECK_INT(mg_shd_ttl(d, "a", 1, &ttl), MG_SHD_OK);
    CHECK(ttl > 25 && ttl <= 30);
    CHECK_INT(mg_shd_expire(d, "a", 1, 0.05), MG_SHD_OK);
    CHECK_INT(mg_shd_set(d, "b", 1, &v, 0, 0, &forcible), MG_SHD_OK);
    CHECK_INT(mg_shd_ttl(d, "b", 1, &ttl), MG_SHD_OK);
    CHECK(ttl == 0);
    CHECK_INT(mg_shd_expire(d, "b", 1, 0.05), MG_SHD_OK);
    CHECK_INT(mg_shd_expire(d, "zz", 2, 1), MG_SHD_NOTFOUND);
    sleep_s(0.08);
    CHECK_INT(mg_shd_get(d, "a", 1, &out, &vbuf, &vcap), MG_SHD_NOTFOUND);
    CHECK_INT(mg_shd_get(d, "b", 1, &out, &vbuf, &vcap), MG_SHD_NOTFOUND);
    CHECK_INT(mg_shd_ttl(d, "a", 1, &ttl), MG_SHD_NOTFOUND);
    /* an expired key is absent for add */
    CHECK_INT(mg_shd_set(d, "a", 1, &v, 0, 1, &forcible), MG_SHD_OK);
}

static void test_incr_across_processes(void)
{
    mg_shd_t *d = dict("count", 8192);
    mg_shd_val_t one = integer(1), zero = integer(0), out;
    int forcible;
    CHECK_INT(mg_shd_incr(d, "n", 1, &one, 0, NULL, 0, &out, &forcible), MG_SHD_NOTFOUND);
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            for (int i = 0; i < 20000; i++)
                if (mg_shd_incr(d, "n", 1, &one, 1, &zero, 0, &out, &forcible) != MG_SHD_OK)
                    _exit(1);
            _exit(0);
        }
    }
    for (int k = 0; k < 4; k++) {
        int st;
        waitpid(kids[k], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    CHECK_INT(mg_shd_get(d, "n", 1, &out, &vbuf, &vcap), MG_SHD_OK);
    CHECK_INT(out.type, MG_SHD_INT);
    CHECK_INT(out.i, 80000);
    mg_shd_val_t s = str("x");
    mg_shd_set(d, "s", 1, &s, 0, 0, &forcible);
    CHECK_INT(mg_shd_incr(d, "s", 1, &one, 0, NULL, 0, &out, &forcible), MG_SHD_NOTNUM);
}

static void test_take(void)
{
    mg_shd_t *d = dict("bucket", 8192);
    int allowed, forcible, admitted = 0;
    double tokens, retry;
    for (int i = 0; i < 5; i++) {
        CHECK_INT(mg_shd_take(d, "ip", 2, 0.001, 3, 1, &allowed, &tokens, &retry, &forcible),
                  MG_SHD_OK);
        admitted += allowed;
    }
    CHECK_INT(admitted, 3);
    CHECK(!allowed && retry > 900 && tokens < 0.01);
    mg_shd_val_t s = str("x");
    mg_shd_set(d, "s", 1, &s, 0, 0, &forcible);
    CHECK_INT(mg_shd_take(d, "s", 1, 1, 1, 1, &allowed, &tokens, &retry, &forcible),
              MG_SHD_NOTNUM);
}

static void die(void *ud, const char *k, size_t n)
{
    (void)ud;
    (void)k;
    (void)n;
    _exit(0); /* holding the lock */
}

static void test_owner_died(void)
{
    mg_shd_t *d = dict("robust", 8192);
    int forcible;
    mg_shd_val_t v = str("v"), out;
    mg_shd_set(d, "a", 1, &v, 0, 0, &forcible);
    pid_t pid = fork();
    if (pid == 0)
        mg_shd_keys(d, 0, die, NULL);
    int st;
    waitpid(pid, &st, 0);
    /* no deadlock: the next locker recovers (and empties the dictionary) */
    CHECK_INT(mg_shd_set(d, "b", 1, &v, 0, 0, &forcible), MG_SHD_OK);
    CHECK_INT(mg_shd_get(d, "b", 1, &out, &vbuf, &vcap), MG_SHD_OK);
    CHECK_INT(mg_shd_get(d, "a", 1, &out, &vbuf, &vcap), MG_SHD_NOTFOUND);
}

static void test_registry(void)
{
    char err[256];
    CHECK_INT(mg_shd_ensure("reg", 8192, err, sizeof err), 1);
    CHECK_INT(mg_shd_ensure("reg", 8192, err, sizeof err), 0);
    mg_shd_t *a = mg_shd_find("reg", 8192);
    CHECK_INT(mg_shd_ensure("reg", 16384, err, sizeof err), 1); /* a new size: a new one */
    CHECK(mg_shd_find("reg", 0) == mg_shd_find("reg", 16384));
    CHECK(mg_shd_find("reg", 8192) == a);
    mg_shd_forked();
    CHECK_INT(mg_shd_ensure("late", 8192, err, sizeof err), -1);
    CHECK(strstr(err, "before the workers started") != NULL);
}

int main(void)
{
    RUN(test_types_and_chains);
    RUN(test_lru_and_nomem);
    RUN(test_expiry);
    RUN(test_incr_across_processes);
    RUN(test_take);
    RUN(test_owner_died);
    RUN(test_registry);
    free(vbuf);
    mg_shd_free_all();
    return mgt_done("shdict");
}
