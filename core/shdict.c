#include "shdict.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define MAGIC 0x6d677364u /* "mgsd" */
#define CHUNK 64u
#define CONT_DATA (CHUNK - 4u) /* a continuation chunk: link + data */

/* The region: this header, the hash buckets (chunk indices), the chunks.
 * Chunk i (1..nchunks) is at chunks + (i - 1) * CHUNK; 0 means none. The
 * first 4 bytes of every chunk link to the next chunk of its chain (an
 * entry's data, or the free list). */
typedef struct hdr {
    uint32_t magic;
    uint32_t nchunks;
    uint32_t nbuckets; /* a power of two */
    uint32_t nfree;
    uint32_t free_head;
    uint32_t brk;      /* chunks from here on were never used: free too */
    uint32_t lru_head; /* most recently used */
    uint32_t lru_tail;
    uint32_t nentries;
    size_t buckets_off, chunks_off;
    pthread_mutex_t mu;
} hdr_t;

/* The first chunk of an entry: its data (key, then value) starts here and
 * goes on in the chain. */
typedef struct ent {
    uint32_t chain;
    uint32_t hnext;
    uint32_t prev, next; /* LRU */
    double expires;      /* CLOCK_MONOTONIC seconds; 0 = never */
    uint32_t hash;
    uint32_t vlen;
    uint16_t klen;
    uint8_t type;
    uint8_t pad;
} ent_t;

#define HEAD_DATA (CHUNK - (uint32_t)sizeof(ent_t))

struct mg_shd {
    char name[MG_SHD_NAME_MAX];
    size_t size;
    hdr_t *h;
};

static mg_shd_t dicts[MG_SHD_MAX_DICTS];
static int ndicts;
static int forked;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned char *chunk(hdr_t *h, uint32_t i)
{
    return (unsigned char *)h + h->chunks_off + (size_t)(i - 1) * CHUNK;
}

static ent_t *ent(hdr_t *h, uint32_t i)
{
    return (ent_t *)chunk(h, i);
}

static uint32_t *link_of(hdr_t *h, uint32_t i)
{
    return (uint32_t *)chunk(h, i);
}

static uint32_t *bucket(hdr_t *h, uint32_t hash)
{
    return (uint32_t *)((unsigned char *)h + h->buckets_off) + (hash & (h->nbuckets - 1));
}

/* Empties the dictionary. Pages of chunks never used are never touched, so
 * a big dictionary costs memory only as it fills. */
static void reset(hdr_t *h, int fresh)
{
    if (!fresh)
        memset((unsigned char *)h + h->buckets_off, 0, sizeof(uint32_t) * h->nbuckets);
    h->free_head = 0;
    h->brk = 1;
    h->nfree = h->nchunks;
    h->lru_head = h->lru_tail = 0;
    h->nentries = 0;
}

static hdr_t *region_new(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    hdr_t *h = p;
    h->magic = MAGIC;
    size_t hsz = (sizeof(hdr_t) + CHUNK - 1) / CHUNK * CHUNK;
    /* about one bucket per two chunks: 2 bytes of 64 go to the table */
    size_t approx = (size - hsz) / CHUNK;
    uint32_t nb = 1;
    while ((size_t)nb * 2 < approx / 2 + 1 && nb < (1u << 30))
        nb *= 2;
    h->nbuckets = nb;
    h->buckets_off = hsz;
    h->chunks_off = (hsz + sizeof(uint32_t) * nb + CHUNK - 1) / CHUNK * CHUNK;
    h->nchunks = (uint32_t)((size - h->chunks_off) / CHUNK);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->mu, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        munmap(p, size);
        return NULL;
    }
    reset(h, 1);
    return h;
}

/* --- registry -------------------------------------------------------------- */

mg_shd_t *mg_shd_find(const char *name, size_t size)
{
    for (int i = ndicts - 1; i >= 0; i--)
        if ((size == 0 || dicts[i].size == size) && strcmp(dicts[i].name, name) == 0)
            return &dicts[i];
    return NULL;
}

int mg_shd_ensure(const char *name, size_t size, char *err, size_t errlen)
{
    if (mg_shd_find(name, size))
        return 0;
    if (forked) {
        snprintf(err, errlen,
                 "shared dictionary %s (%zu bytes) was not created before the workers started",
                 name, size);
        return -1;
    }
    if (strlen(name) >= MG_SHD_NAME_MAX || size < MG_SHD_MIN_SIZE || size > MG_SHD_MAX_SIZE) {
        snprintf(err, errlen, "shared dictionary %s: bad name or size", name);
        return -1;
    }
    if (ndicts == MG_SHD_MAX_DICTS) {
        snprintf(err, errlen, "shared dictionary %s: at most %d dictionaries per instance", name,
                 MG_SHD_MAX_DICTS);
        return -1;
    }
    hdr_t *h = region_new(size);
    if (h == NULL) {
        snprintf(err, errlen, "shared dictionary %s: cannot map %zu bytes: %s", name, size,
                 strerror(errno));
        return -1;
    }
    mg_shd_t *d = &dicts[ndicts++];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->size = size;
    d->h = h;
    return 1;
}

void mg_shd_forked(void)
{
    forked = 1;
}

int mg_shd_can_create(void)
{
    return !forked;
}

void mg_shd_free_all(void)
{
    for (int i = 0; i < ndicts; i++)
        munmap(dicts[i].h, dicts[i].size);
    ndicts = 0;
}

/* --- lock ------------------------------------------------------------------ */

static hdr_t *lock(mg_shd_t *d)
{
    hdr_t *h = d->h;
    int rc = pthread_mutex_lock(&h->mu);
    if (rc == EOWNERDEAD) {
        /* its holder died mid-operation: the lists may be half-updated */
        reset(h, 0);
        pthread_mutex_consistent(&h->mu);
        mg_log_warn("shared dictionary %s: a process died holding its lock; emptied it",
                    d->name);
    } else if (rc != 0) {
        mg_log_error("shared dictionary %s: lock: %s", d->name, strerror(rc));
        abort(); /* ENOTRECOVERABLE: cannot happen as we always mark it consistent */
    }
    return h;
}

static void unlock(hdr_t *h)
{
    pthread_mutex_unlock(&h->mu);
}

/* --- entries --------------------------------------------------------------- */

static uint32_t hash_key(const char *k, size_t n)
{
    uint32_t x = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        x ^= (unsigned char)k[i];
        x *= 16777619u;
    }
    return x;
}

static uint32_t chunks_for(size_t bytes)
{
    if (bytes <= HEAD_DATA)
        return 1;
    return 1 + (uint32_t)((bytes - HEAD_DATA + CONT_DATA - 1) / CONT_DATA);
}

/* Reads (or writes, or compares: returns nonzero on a difference) n bytes
 * of an entry's data at `off`. */
enum { IO_READ, IO_WRITE, IO_CMP };
static int stream(hdr_t *h, uint32_t head, size_t off, void *buf, size_t n, int op)
{
    uint32_t c = head;
    unsigned char *data = chunk(h, c) + sizeof(ent_t);
    size_t room = HEAD_DATA;
    unsigned char *b = buf;
    while (off >= room) {
        off -= room;
        c = *link_of(h, c);
        data = chunk(h, c) + 4;
        room = CONT_DATA;
    }
    while (n > 0) {
        size_t take = room - off < n ? room - off : n;
        if (op == IO_READ)
            memcpy(b, data + off, take);
        else if (op == IO_WRITE)
            memcpy(data + off, b, take);
        else if (memcmp(data + off, b, take) != 0)
            return 1;
        b += take;
        n -= take;
        off = 0;
        if (n > 0) {
            c = *link_of(h, c);
            data = chunk(h, c) + 4;
            room = CONT_DATA;
        }
    }
    return 0;
}

static int expired(const ent_t *e, double now)
{
    return e->expires > 0 && e->expires <= now;
}

static void lru_unlink(hdr_t *h, uint32_t i)
{
    ent_t *e = ent(h, i);
    if (e->prev)
        ent(h, e->prev)->next = e->next;
    else
        h->lru_head = e->next;
    if (e->next)
        ent(h, e->next)->prev = e->prev;
    else
        h->lru_tail = e->prev;
    e->prev = e->next = 0;
}

static void lru_push(hdr_t *h, uint32_t i)
{
    ent_t *e = ent(h, i);
    e->prev = 0;
    e->next = h->lru_head;
    if (h->lru_head)
        ent(h, h->lru_head)->prev = i;
    h->lru_head = i;
    if (h->lru_tail == 0)
        h->lru_tail = i;
}

static void touch(hdr_t *h, uint32_t i)
{
    if (h->lru_head != i) {
        lru_unlink(h, i);
        lru_push(h, i);
    }
}

static void remove_entry(hdr_t *h, uint32_t i)
{
    ent_t *e = ent(h, i);
    uint32_t *p = bucket(h, e->hash);
    while (*p && *p != i)
        p = &ent(h, *p)->hnext;
    if (*p)
        *p = e->hnext;
    lru_unlink(h, i);
    uint32_t c = i;
    for (;;) {
        uint32_t next = *link_of(h, c);
        *link_of(h, c) = h->free_head;
        h->free_head = c;
        h->nfree++;
        if (next == 0)
            break;
        c = next;
    }
    h->nentries--;
}

/* The entry of key k (expired ones included), or 0. */
static uint32_t lookup(hdr_t *h, const char *k, size_t klen, uint32_t hash)
{
    for (uint32_t i = *bucket(h, hash); i; i = ent(h, i)->hnext) {
        ent_t *e = ent(h, i);
        if (e->hash == hash && e->klen == klen &&
            stream(h, i, 0, (void *)k, klen, IO_CMP) == 0)
            return i;
    }
    return 0;
}

/* The live entry of k: an expired one is removed. */
static uint32_t find_live(hdr_t *h, const char *k, size_t klen, uint32_t hash, double now)
{
    uint32_t i = lookup(h, k, klen, hash);
    if (i && expired(ent(h, i), now)) {
        remove_entry(h, i);
        return 0;
    }
    return i;
}

static size_t val_size(const mg_shd_val_t *v)
{
    switch (v->type) {
    case MG_SHD_STR:
        return v->len;
    case MG_SHD_BOOL:
        return 1;
    case MG_SHD_BUCKET:
        return 16;
    default:
        return 8;
    }
}

/* A new entry for k = v (not yet present), evicting from the LRU tail
 * when room is short. 0: bigger than the dictionary. */
static uint32_t insert(hdr_t *h, const char *k, size_t klen, uint32_t hash, const mg_shd_val_t *v,
                       double expires, double now, int *forcible)
{
    size_t vlen = val_size(v);
    uint32_t need = chunks_for(klen + vlen);
    if (need > h->nchunks)
        return 0;
    while (h->nfree < need && h->lru_tail) {
        if (!expired(ent(h, h->lru_tail), now) && forcible)
            *forcible = 1;
        remove_entry(h, h->lru_tail);
    }
    /* from the free list, then from never used chunks */
    uint32_t head = 0, *tail = &head;
    for (uint32_t j = 0; j < need; j++) {
        uint32_t c;
        if (h->free_head) {
            c = h->free_head;
            h->free_head = *link_of(h, c);
        } else {
            c = h->brk++;
        }
        *tail = c;
        tail = link_of(h, c);
    }
    *tail = 0;
    h->nfree -= need;
    ent_t *e = ent(h, head);
    e->hash = hash;
    e->klen = (uint16_t)klen;
    e->vlen = (uint32_t)vlen;
    e->type = (uint8_t)v->type;
    e->expires = expires;
    stream(h, head, 0, (void *)k, klen, IO_WRITE);
    unsigned char tmp[16];
    const void *src = tmp;
    switch (v->type) {
    case MG_SHD_STR:
        src = v->s;
        break;
    case MG_SHD_BOOL:
        tmp[0] = v->i != 0;
        break;
    case MG_SHD_INT:
        memcpy(tmp, &v->i, 8);
        break;
    case MG_SHD_NUM:
        memcpy(tmp, &v->n, 8);
        break;
    default: /* bucket: tokens (n), stamp (i as the bits of a double) */
        memcpy(tmp, &v->n, 8);
        memcpy(tmp + 8, &v->i, 8);
        break;
    }
    if (vlen)
        stream(h, head, klen, (void *)src, vlen, IO_WRITE);
    e->hnext = *bucket(h, hash);
    *bucket(h, hash) = head;
    lru_push(h, head);
    h->nentries++;
    return head;
}

static double expiry(double ttl, double now)
{
    return ttl > 0 ? now + ttl : 0;
}

/* --- operations ------------------------------------------------------------ */

int mg_shd_get(mg_shd_t *d, const char *k, size_t klen, mg_shd_val_t *out, char **buf,
               size_t *cap)
{
    uint32_t hash = hash_key(k, klen);
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, mono());
    if (i == 0) {
        unlock(h);
        return MG_SHD_NOTFOUND;
    }
    touch(h, i);
    ent_t *e = ent(h, i);
    out->type = e->type;
    unsigned char tmp[16];
    int rc = MG_SHD_OK;
    if (e->type == MG_SHD_STR) {
        out->len = e->vlen;
        if (*cap < e->vlen || *buf == NULL) {
            size_t want = e->vlen < 256 ? 256 : e->vlen;
            char *nb = realloc(*buf, want);
            if (nb) {
                *buf = nb;
                *cap = want;
            }
        }
        if (*cap < e->vlen || *buf == NULL)
            rc = MG_SHD_NOMEM;
        else
            stream(h, i, e->klen, *buf, e->vlen, IO_READ);
        out->s = *buf;
    } else {
        stream(h, i, e->klen, tmp, e->vlen, IO_READ);
        if (e->type == MG_SHD_BOOL)
            out->i = tmp[0];
        else if (e->type == MG_SHD_INT)
            memcpy(&out->i, tmp, 8);
        else
            memcpy(&out->n, tmp, 8); /* a number; a bucket's tokens */
    }
    unlock(h);
    return rc;
}

int mg_shd_set(mg_shd_t *d, const char *k, size_t klen, const mg_shd_val_t *v, double ttl, int add,
               int *forcible)
{
    *forcible = 0;
    uint32_t hash = hash_key(k, klen);
    double now = mono();
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, now);
    if (i && add) {
        unlock(h);
        return MG_SHD_EXISTS;
    }
    if (v->type != MG_SHD_NONE && chunks_for(klen + val_size(v)) > h->nchunks) {
        unlock(h); /* as OpenResty: the old value stays */
        return MG_SHD_NOMEM;
    }
    if (i)
        remove_entry(h, i);
    if (v->type != MG_SHD_NONE)
        insert(h, k, klen, hash, v, expiry(ttl, now), now, forcible);
    unlock(h);
    return MG_SHD_OK;
}

int mg_shd_incr(mg_shd_t *d, const char *k, size_t klen, const mg_shd_val_t *n, int has_init,
                const mg_shd_val_t *init, double init_ttl, mg_shd_val_t *out, int *forcible)
{
    *forcible = 0;
    uint32_t hash = hash_key(k, klen);
    double now = mono();
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, now);
    mg_shd_val_t cur;
    if (i) {
        ent_t *e = ent(h, i);
        if (e->type != MG_SHD_INT && e->type != MG_SHD_NUM) {
            unlock(h);
            return MG_SHD_NOTNUM;
        }
        cur.type = e->type;
        if (e->type == MG_SHD_INT)
            stream(h, i, e->klen, &cur.i, 8, IO_READ);
        else
            stream(h, i, e->klen, &cur.n, 8, IO_READ);
    } else if (has_init) {
        cur = *init;
    } else {
        unlock(h);
        return MG_SHD_NOTFOUND;
    }
    if (cur.type == MG_SHD_INT && n->type == MG_SHD_INT) {
        out->type = MG_SHD_INT;
        out->i = (int64_t)((uint64_t)cur.i + (uint64_t)n->i); /* wraps as Lua's integers */
    } else {
        out->type = MG_SHD_NUM;
        out->n = (cur.type == MG_SHD_INT ? (double)cur.i : cur.n) +
                 (n->type == MG_SHD_INT ? (double)n->i : n->n);
    }
    if (i) {
        ent_t *e = ent(h, i);
        e->type = (uint8_t)out->type;
        stream(h, i, e->klen, out->type == MG_SHD_INT ? (void *)&out->i : (void *)&out->n, 8,
               IO_WRITE);
        touch(h, i);
    } else if (insert(h, k, klen, hash, out, expiry(init_ttl, now), now, forcible) == 0) {
        unlock(h);
        return MG_SHD_NOMEM;
    }
    unlock(h);
    return MG_SHD_OK;
}

int mg_shd_delete(mg_shd_t *d, const char *k, size_t klen)
{
    uint32_t hash = hash_key(k, klen);
    hdr_t *h = lock(d);
    uint32_t i = lookup(h, k, klen, hash);
    if (i)
        remove_entry(h, i);
    unlock(h);
    return i ? MG_SHD_OK : MG_SHD_NOTFOUND;
}

int mg_shd_ttl(mg_shd_t *d, const char *k, size_t klen, double *ttl)
{
    uint32_t hash = hash_key(k, klen);
    double now = mono();
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, now);
    if (i) {
        double x = ent(h, i)->expires;
        *ttl = x > 0 ? x - now : 0;
    }
    unlock(h);
    return i ? MG_SHD_OK : MG_SHD_NOTFOUND;
}

int mg_shd_expire(mg_shd_t *d, const char *k, size_t klen, double ttl)
{
    uint32_t hash = hash_key(k, klen);
    double now = mono();
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, now);
    if (i)
        ent(h, i)->expires = expiry(ttl, now);
    unlock(h);
    return i ? MG_SHD_OK : MG_SHD_NOTFOUND;
}

void mg_shd_keys(mg_shd_t *d, int max, void (*fn)(void *, const char *, size_t), void *ud)
{
    char small[256];
    double now = mono();
    hdr_t *h = lock(d);
    int n = 0;
    for (uint32_t i = h->lru_head; i && (max <= 0 || n < max); i = ent(h, i)->next) {
        ent_t *e = ent(h, i);
        if (expired(e, now))
            continue;
        char *k = e->klen <= sizeof small ? small : malloc(e->klen);
        if (k == NULL)
            break;
        stream(h, i, 0, k, e->klen, IO_READ);
        fn(ud, k, e->klen);
        if (k != small)
            free(k);
        n++;
    }
    unlock(h);
}

size_t mg_shd_free_space(mg_shd_t *d)
{
    hdr_t *h = lock(d);
    size_t n = (size_t)h->nfree * CHUNK;
    unlock(h);
    return n;
}

size_t mg_shd_capacity(mg_shd_t *d)
{
    return (size_t)d->h->nchunks * CHUNK;
}

void mg_shd_flush_all(mg_shd_t *d)
{
    hdr_t *h = lock(d);
    reset(h, 0);
    unlock(h);
}

int mg_shd_take(mg_shd_t *d, const char *k, size_t klen, double rate, double burst, double n,
                int *allowed, double *tokens, double *retry_after, int *forcible)
{
    *forcible = 0;
    uint32_t hash = hash_key(k, klen);
    double now = mono();
    hdr_t *h = lock(d);
    uint32_t i = find_live(h, k, klen, hash, now);
    double t = burst, ts = now;
    if (i) {
        ent_t *e = ent(h, i);
        if (e->type != MG_SHD_BUCKET) {
            unlock(h);
            return MG_SHD_NOTNUM;
        }
        unsigned char tmp[16];
        stream(h, i, e->klen, tmp, 16, IO_READ);
        memcpy(&t, tmp, 8);
        memcpy(&ts, tmp + 8, 8);
        if (now > ts)
            t += (now - ts) * rate;
        if (t > burst)
            t = burst;
    }
    *allowed = t >= n;
    if (*allowed)
        t -= n;
    *tokens = t;
    *retry_after = *allowed ? 0 : (n - t) / rate;
    /* expires when it would be full again: a missing bucket is a full one */
    double expires = now + (burst - t) / rate + 1;
    mg_shd_val_t v = { .type = MG_SHD_BUCKET, .n = t };
    memcpy(&v.i, &now, 8);
    if (i) {
        unsigned char tmp[16];
        memcpy(tmp, &v.n, 8);
        memcpy(tmp + 8, &v.i, 8);
        stream(h, i, ent(h, i)->klen, tmp, 16, IO_WRITE);
        ent(h, i)->expires = expires;
        touch(h, i);
    } else if (insert(h, k, klen, hash, &v, expires, now, forcible) == 0) {
        unlock(h);
        return MG_SHD_NOMEM;
    }
    unlock(h);
    return MG_SHD_OK;
}
