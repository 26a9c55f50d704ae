/* Header edits: the request and response header changes Lua makes (set,
 * add, remove), kept as owned strings until the head they apply to is
 * written. */
#include "edits.h"
#include "mg.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

const mg_hdr_edit_t *mg_edits_find(const mg_edits_t *e, const char *name, size_t nn)
{
    for (int i = 0; i < e->n; i++)
        if (e->v[i].name_len == nn && strncasecmp(e->v[i].name, name, nn) == 0)
            return &e->v[i];
    return NULL;
}

static char *dupn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* Appends an edit (value may be NULL). */
static int edits_append(mg_edits_t *e, const char *name, size_t nn, const char *value,
                        size_t vn)
{
    if (e->n == e->cap) {
        int cap = e->cap ? e->cap * 2 : 4;
        mg_hdr_edit_t *a = realloc(e->v, sizeof *a * (size_t)cap);
        if (a == NULL)
            return MG_ENOMEM;
        e->v = a;
        e->cap = cap;
    }
    char *n = dupn(name, nn);
    char *v = value ? dupn(value, vn) : NULL;
    if (n == NULL || (value && v == NULL)) {
        free(n);
        free(v);
        return MG_ENOMEM;
    }
    e->v[e->n++] = (mg_hdr_edit_t){ n, v, nn, vn };
    return MG_OK;
}

int mg_edits_set(mg_edits_t *e, const char *name, size_t nn, const char *value, size_t vn)
{
    mg_hdr_edit_t *slot = (mg_hdr_edit_t *)mg_edits_find(e, name, nn);
    if (slot == NULL)
        return edits_append(e, name, nn, value, vn);
    char *v = NULL;
    if (value && (v = dupn(value, vn)) == NULL)
        return MG_ENOMEM;
    free(slot->value);
    slot->value = v;
    slot->value_len = vn;
    if (e->multi) { /* the other values of a multi-valued header go */
        int w = (int)(slot - e->v) + 1;
        for (int i = w; i < e->n; i++) {
            mg_hdr_edit_t *x = &e->v[i];
            if (x->name_len == nn && strncasecmp(x->name, name, nn) == 0) {
                free(x->name);
                free(x->value);
            } else {
                e->v[w++] = *x;
            }
        }
        e->n = w;
    }
    return MG_OK;
}

int mg_edits_add(mg_edits_t *e, const char *name, size_t nn, const char *value, size_t vn)
{
    const mg_hdr_edit_t *first = mg_edits_find(e, name, nn);
    if (first == NULL || first->value == NULL)
        return mg_edits_set(e, name, nn, value, vn);
    int rc = edits_append(e, name, nn, value, vn);
    if (rc == MG_OK)
        e->multi = 1;
    return rc;
}

void mg_edits_free(mg_edits_t *e)
{
    for (int i = 0; i < e->n; i++) {
        free(e->v[i].name);
        free(e->v[i].value);
    }
    free(e->v);
    e->v = NULL;
    e->n = e->cap = e->multi = 0;
}

