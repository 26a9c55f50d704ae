/* Connection-header token lists (h1fields.h). */
#include "h1fields.h"

#include <string.h>
#include <strings.h>

int mg_h1f_connection_lists(const mg_h1_head_t *h, int first, mg_str_t name)
{
    for (int i = first; i >= 0; i = mg_h1_find(h, "connection", 10, i + 1))
        if (mg_h1_list_has(mg_h1_value(h, i), name.p, name.n))
            return 1;
    return 0;
}

void mg_h1f_tokens(const mg_h1_head_t *h, mg_h1f_tokens_t *ct)
{
    ct->first = mg_h1_find(h, "connection", 10, 0);
    ct->n = 0;
    for (int i = ct->first; i >= 0; i = mg_h1_find(h, "connection", 10, i + 1)) {
        mg_str_t v = mg_h1_value(h, i), t;
        size_t at = 0;
        while (mg_h1_list_next(v, &at, &t)) {
            if (ct->n == (int)MG_ARRAY_LEN(ct->t)) {
                ct->n = -1;
                return;
            }
            ct->t[ct->n++] = t;
        }
    }
}

int mg_h1f_lines_have_date(const char *x)
{
    for (const char *p = x; p && *p;) {
        if (strncasecmp(p, "date:", 5) == 0)
            return 1;
        p = strstr(p, "\r\n");
        if (p)
            p += 2;
    }
    return 0;
}
