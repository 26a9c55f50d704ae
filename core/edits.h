/* Header edits made by Lua (req:set_header, res:set_header, ...). */
#ifndef MG_EDITS_H
#define MG_EDITS_H

#include <stddef.h>

/* A header set (value) or removed (value NULL) by Lua. Owned strings.
 * A header set to several values (req:set_header(name, {a, b})) is one
 * edit per value, each sent as its own field; those all have values. */
typedef struct mg_hdr_edit {
    char *name;
    char *value;
    size_t name_len, value_len;
} mg_hdr_edit_t;

typedef struct mg_edits {
    mg_hdr_edit_t *v;
    int n, cap;
    int multi; /* some name has more than one edit (mg_edits_add) */
} mg_edits_t;

/* Header edits: set (value != NULL) or remove; replaces every earlier edit
 * of that name. 0 or MG_ENOMEM. */
int mg_edits_set(mg_edits_t *e, const char *name, size_t nn, const char *value, size_t vn);
/* One more field with that name after mg_edits_set gave it a value (if it
 * has none, this is mg_edits_set). 0 or MG_ENOMEM. */
int mg_edits_add(mg_edits_t *e, const char *name, size_t nn, const char *value, size_t vn);
/* The (first) edit for name, or NULL. */
const mg_hdr_edit_t *mg_edits_find(const mg_edits_t *e, const char *name, size_t nn);
void mg_edits_free(mg_edits_t *e);

#endif
