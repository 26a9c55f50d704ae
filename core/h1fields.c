/* Connection-header token lists (h1fields.h). */
#include "h1fields.h"

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
        mg_str_t v = mg_h1_value(h, i);
        size_t a = 0;
        while (a < v.n) {
            while (a < v.n && (v.p[a] == ' ' || v.p[a] == '\t' || v.p[a] == ','))
                a++;
            size_t b = a;
            while (b < v.n && v.p[b] != ',')
                b++;
            size_t e = b;
            while (e > a && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
                e--;
            if (e > a) {
                if (ct->n == (int)MG_ARRAY_LEN(ct->t)) {
                    ct->n = -1;
                    return;
                }
                ct->t[ct->n++] = (mg_str_t){ v.p + a, e - a };
            }
            a = b;
        }
    }
}
