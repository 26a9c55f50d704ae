/* Common definitions shared by every core module: string views, error codes,
 * container_of. Leaf header: includes only libc. */
#ifndef MG_MG_H
#define MG_MG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A borrowed view of bytes owned by someone else (a buffer, a head store). */
typedef struct mg_str {
    const char *p;
    size_t n;
} mg_str_t;

#define MG_STR(lit) ((mg_str_t){ (lit), sizeof(lit) - 1 })

enum {
    MG_OK = 0,
    MG_EAGAIN = -1,
    MG_ECLOSED = -2,
    MG_ETIMEDOUT = -3,
    MG_ENOMEM = -4,
    MG_EINVAL = -5,
};

#define mg_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#define MG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Marks functions that may raise a Lua error (longjmp): control may not come back. */
#define MG_LJMP

static inline int mg_str_eq_ci(mg_str_t a, const char *b, size_t bn)
{
    if (a.n != bn)
        return 0;
    for (size_t i = 0; i < bn; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x |= 0x20;
        if (y >= 'A' && y <= 'Z')
            y |= 0x20;
        if (x != y)
            return 0;
    }
    return 1;
}

#define MG_STR_EQ_CI(s, lit) mg_str_eq_ci((s), (lit), sizeof(lit) - 1)

#endif
