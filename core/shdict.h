/* Shared dictionaries (gw.shared): key/value stores in shared memory that
 * every worker of the instance sees, kept across reloads (OpenResty's
 * ngx.shared.DICT). The master maps each configured dictionary before it
 * forks (MAP_SHARED | MAP_ANONYMOUS), so workers inherit the same pages;
 * a single-process gateway maps them itself. Inside a region nothing is a
 * pointer: entries are chains of fixed 64-byte chunks addressed by index,
 * in a hash table and an LRU list, under one robust process-shared mutex
 * (a worker killed while holding it cannot wedge the others: the next
 * locker empties the dictionary, whose state may be half-written, and logs
 * it). No Lua here: core/l_shared.c is the binding. */
#ifndef MG_SHDICT_H
#define MG_SHDICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct mg_shd mg_shd_t;

#define MG_SHD_MIN_SIZE 8192
#define MG_SHD_MAX_SIZE ((size_t)1 << 36)
#define MG_SHD_NAME_MAX 64
#define MG_SHD_MAX_DICTS 64
#define MG_SHD_KEY_MAX 65535
/* The dictionary rate_limit's local scope counts in; present always. */
#define MG_SHD_RATE_LIMIT "moongate:rate_limit"
#define MG_SHD_RATE_LIMIT_SIZE ((size_t)16 << 20)

/* Value types. */
enum { MG_SHD_NONE = 0, MG_SHD_STR, MG_SHD_INT, MG_SHD_NUM, MG_SHD_BOOL, MG_SHD_BUCKET };

/* Results of the operations (the binding turns them into ngx.shared.DICT's
 * return values). */
enum {
    MG_SHD_OK = 0,
    MG_SHD_NOTFOUND = -1,
    MG_SHD_EXISTS = -2,
    MG_SHD_NOMEM = -3,
    MG_SHD_NOTNUM = -4,
};

typedef struct mg_shd_val {
    int type;
    const char *s; /* MG_SHD_STR, in: the caller's bytes */
    size_t len;
    int64_t i;     /* MG_SHD_INT; MG_SHD_BOOL (0/1) */
    double n;      /* MG_SHD_NUM */
} mg_shd_val_t;

/* --- the registry (process-wide) ------------------------------------------ */

/* Makes sure a dictionary `name` of `size` bytes is mapped (creating it
 * when missing, or when the size changed: the old one stays mapped for
 * whoever still uses it, the name now means the new, empty one). 1 if it
 * created one, 0 if it was there, -1 on error (err says why). Creating is
 * refused in a forked worker (mg_shd_forked): nobody else would see it. */
int mg_shd_ensure(const char *name, size_t size, char *err, size_t errlen);

/* The dictionary of that name and size (size 0: the newest of that name),
 * or NULL. */
mg_shd_t *mg_shd_find(const char *name, size_t size);

/* Called in a worker right after fork: from now on nothing is created. */
void mg_shd_forked(void);
int mg_shd_can_create(void);

/* Unmaps everything (process exit, for leak checkers). */
void mg_shd_free_all(void);

/* --- operations (each takes the dictionary's lock) ----------------------- */

/* get: copies the value into *out; a string's bytes go into the caller's
 * growable buffer *buf of *cap bytes (realloc'd as needed, the caller's to
 * free), out->s points there. MG_SHD_OK or MG_SHD_NOTFOUND (missing or
 * expired); MG_SHD_NOMEM when the buffer cannot grow. A bucket (take)
 * reads as its token count when last taken. */
int mg_shd_get(mg_shd_t *d, const char *k, size_t klen, mg_shd_val_t *out, char **buf,
               size_t *cap);

/* set (ttl 0 = never expires; v->type NONE deletes). `add`: refuse a key
 * that is present (MG_SHD_EXISTS). *forcible = 1 if live entries were
 * evicted to make room. MG_SHD_NOMEM: bigger than the dictionary. */
int mg_shd_set(mg_shd_t *d, const char *k, size_t klen, const mg_shd_val_t *v, double ttl, int add,
               int *forcible);

/* incr by n (integers stay integers). A missing key is NOTFOUND unless
 * `init` is given (has_init): it starts at init (with ttl `init_ttl`). */
int mg_shd_incr(mg_shd_t *d, const char *k, size_t klen, const mg_shd_val_t *n, int has_init,
                const mg_shd_val_t *init, double init_ttl, mg_shd_val_t *out, int *forcible);

int mg_shd_delete(mg_shd_t *d, const char *k, size_t klen);

/* ttl: seconds left, 0 if it never expires; NOTFOUND. */
int mg_shd_ttl(mg_shd_t *d, const char *k, size_t klen, double *ttl);
int mg_shd_expire(mg_shd_t *d, const char *k, size_t klen, double ttl);

/* Calls fn for at most `max` live keys (0: all), most recently used first.
 * fn runs under the lock: it must only copy. */
void mg_shd_keys(mg_shd_t *d, int max, void (*fn)(void *, const char *, size_t), void *ud);

/* Bytes of free chunks; the dictionary's capacity for entries. */
size_t mg_shd_free_space(mg_shd_t *d);
size_t mg_shd_capacity(mg_shd_t *d);

/* Removes every entry. */
void mg_shd_flush_all(mg_shd_t *d);

/* A token bucket at `k`: `rate` tokens per second refill it up to `burst`;
 * takes `n` tokens if it holds that many. A missing (or expired) bucket is
 * a full one; the entry expires when it would be full again. Sets
 * *allowed, *tokens (left), *retry_after (seconds until n tokens are
 * there; 0 when allowed). MG_SHD_NOTNUM if the key holds another type,
 * MG_SHD_NOMEM. */
int mg_shd_take(mg_shd_t *d, const char *k, size_t klen, double rate, double burst, double n,
                int *allowed, double *tokens, double *retry_after, int *forcible);

#endif
