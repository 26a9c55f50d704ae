#include "cfg_src.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ent {
    char *path;
    int line;
} ent_t;

struct mg_cfg_src {
    ent_t *v;
    int n, cap;
    char root[72];          /* "" (return { ... }) or "@name" (return name) */
};

enum { T_NAME, T_STRING, T_NUMBER, T_OP, T_EOF };

typedef struct tok {
    int type;
    const char *p;          /* into the text (for T_STRING: the contents) */
    size_t n;
    int line;
} tok_t;

typedef struct lex {
    const char *s, *end;
    int line;
    tok_t *t;
    int n, cap;
} lex_t;

static int push_tok(lex_t *x, int type, const char *p, size_t n, int line)
{
    if (x->n == x->cap) {
        int cap = x->cap ? x->cap * 2 : 256;
        tok_t *t = realloc(x->t, sizeof *t * (size_t)cap);
        if (t == NULL)
            return -1;
        x->t = t;
        x->cap = cap;
    }
    x->t[x->n++] = (tok_t){ type, p, n, line };
    return 0;
}

/* At "[" of a long bracket: its level (number of '='), or -1 if not one. */
static int long_level(const char *p, const char *end)
{
    if (p >= end || *p != '[')
        return -1;
    int lv = 0;
    p++;
    while (p < end && *p == '=') {
        lv++;
        p++;
    }
    return p < end && *p == '[' ? lv : -1;
}

/* Skips a long bracket of level lv starting at p ('['), counting lines. */
static const char *skip_long(lex_t *x, const char *p, int lv)
{
    p += lv + 2;
    for (; p < x->end; p++) {
        if (*p == '\n')
            x->line++;
        else if (*p == ']') {
            const char *q = p + 1;
            int k = 0;
            while (q < x->end && *q == '=') {
                k++;
                q++;
            }
            if (k == lv && q < x->end && *q == ']')
                return q + 1;
        }
    }
    return x->end;
}

static int lex_all(lex_t *x)
{
    const char *p = x->s;
    while (p < x->end) {
        char c = *p;
        if (c == '\n') {
            x->line++;
            p++;
        } else if (isspace((unsigned char)c)) {
            p++;
        } else if (c == '-' && p + 1 < x->end && p[1] == '-') {
            p += 2;
            int lv = long_level(p, x->end);
            if (lv >= 0) {
                p = skip_long(x, p, lv);
            } else {
                while (p < x->end && *p != '\n')
                    p++;
            }
        } else if (c == '"' || c == '\'') {
            int line = x->line;
            const char *start = ++p;
            while (p < x->end && *p != c) {
                if (*p == '\\' && p + 1 < x->end) {
                    if (p[1] == '\n')
                        x->line++;
                    p++;
                } else if (*p == '\n') {
                    x->line++;
                }
                p++;
            }
            if (push_tok(x, T_STRING, start, (size_t)(p - start), line) != 0)
                return -1;
            if (p < x->end)
                p++;
        } else if (c == '[' && long_level(p, x->end) >= 0) {
            int line = x->line, lv = long_level(p, x->end);
            const char *start = p + lv + 2;
            p = skip_long(x, p, lv);
            size_t n = (size_t)(p - start) >= (size_t)lv + 2 ? (size_t)(p - start) - (size_t)lv - 2 : 0;
            if (push_tok(x, T_STRING, start, n, line) != 0)
                return -1;
        } else if (isalpha((unsigned char)c) || c == '_') {
            const char *start = p;
            while (p < x->end && (isalnum((unsigned char)*p) || *p == '_'))
                p++;
            if (push_tok(x, T_NAME, start, (size_t)(p - start), x->line) != 0)
                return -1;
        } else if (isdigit((unsigned char)c) ||
                   (c == '.' && p + 1 < x->end && isdigit((unsigned char)p[1]))) {
            const char *start = p;
            while (p < x->end && (isalnum((unsigned char)*p) || *p == '.' || *p == '_' ||
                                  ((*p == '+' || *p == '-') && (p[-1] == 'e' || p[-1] == 'E' ||
                                                                p[-1] == 'p' || p[-1] == 'P'))))
                p++;
            if (push_tok(x, T_NUMBER, start, (size_t)(p - start), x->line) != 0)
                return -1;
        } else {
            /* two-character operators that matter: == ~= <= >= (not "=") */
            size_t n = 1;
            if (p + 1 < x->end && p[1] == '=' && strchr("=~<>", c))
                n = 2;
            else if (p + 1 < x->end && ((c == '.' && p[1] == '.') || (c == ':' && p[1] == ':')))
                n = 2;
            if (push_tok(x, T_OP, p, n, x->line) != 0)
                return -1;
            p += n;
        }
    }
    return push_tok(x, T_EOF, p, 0, x->line);
}

static int tok_is(const tok_t *t, int type, const char *s)
{
    return t->type == type && t->n == strlen(s) && memcmp(t->p, s, t->n) == 0;
}

static int is_keyword(const tok_t *t)
{
    static const char *const kw[] = { "and",   "break", "do",     "else", "elseif", "end",
                                       "false", "for",   "function", "goto", "if",  "in",
                                       "local", "nil",   "not",    "or",   "repeat", "return",
                                       "then",  "true",  "until",  "while", NULL };
    if (t->type != T_NAME)
        return 0;
    for (const char *const *k = kw; *k; k++)
        if (tok_is(t, T_NAME, *k))
            return 1;
    return 0;
}

static int add_ent(mg_cfg_src_t *s, const char *path, int line)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->v[i].path, path) == 0)
            return 0; /* the first place wins */
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        ent_t *v = realloc(s->v, sizeof *v * (size_t)cap);
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    s->v[s->n++] = (ent_t){ copy, line };
    return 0;
}

enum { F_BRACE, F_PAREN, F_BRACKET, F_BLOCK };

typedef struct frame {
    int kind;
    char *path;             /* F_BRACE: the constructor's config path, or NULL */
    int npos;               /* positional items so far */
    int item_start;         /* the next token starts an item */
} frame_t;

#define MAX_DEPTH 200

static void scan(mg_cfg_src_t *s, const tok_t *t, int n)
{
    frame_t st[MAX_DEPTH];
    int depth = 0;
    char *value_path = NULL; /* the path the next token's value would have */
    char buf[512];
    for (int i = 0; i < n && t[i].type != T_EOF; i++) {
        const tok_t *k = &t[i];
        frame_t *top = depth ? &st[depth - 1] : NULL;
        char *vp = value_path;
        value_path = NULL;
        /* an item of a table constructor */
        if (top && top->kind == F_BRACE && top->item_start && !tok_is(k, T_OP, "}")) {
            top->item_start = 0;
            const char *key = NULL;
            size_t keylen = 0;
            int skip = 0;
            if (k->type == T_NAME && !is_keyword(k) && tok_is(&t[i + 1], T_OP, "=")) {
                key = k->p;
                keylen = k->n;
                skip = 1;
            } else if (tok_is(k, T_OP, "[") && t[i + 1].type == T_STRING &&
                       tok_is(&t[i + 2], T_OP, "]") && tok_is(&t[i + 3], T_OP, "=")) {
                key = t[i + 1].p;
                keylen = t[i + 1].n;
                skip = 3;
            }
            if (top->path) {
                if (key)
                    snprintf(buf, sizeof buf, "%s%s%.*s", top->path, top->path[0] ? "." : "",
                             (int)keylen, key);
                else
                    snprintf(buf, sizeof buf, "%s[%d]", top->path, ++top->npos);
                add_ent(s, buf, k->line);
                free(vp);
                vp = strdup(buf);
            } else if (!key) {
                top->npos++;
            }
            if (key) {
                i += skip; /* now at "=": the value starts at the next token */
                value_path = vp;
                continue;
            }
        }
        if (tok_is(k, T_OP, "{")) {
            if (depth == MAX_DEPTH) {
                free(vp);
                break;
            }
            st[depth++] = (frame_t){ F_BRACE, vp, 0, 1 };
            continue;
        }
        free(vp);
        if (tok_is(k, T_OP, "(") || tok_is(k, T_OP, "[") || tok_is(k, T_NAME, "function") ||
            tok_is(k, T_NAME, "do") || tok_is(k, T_NAME, "if") || tok_is(k, T_NAME, "repeat")) {
            if (depth == MAX_DEPTH)
                break;
            int kind = k->type == T_OP ? (k->p[0] == '(' ? F_PAREN : F_BRACKET) : F_BLOCK;
            st[depth++] = (frame_t){ kind, NULL, 0, 0 };
        } else if (tok_is(k, T_OP, "}") || tok_is(k, T_OP, ")") || tok_is(k, T_OP, "]") ||
                   tok_is(k, T_NAME, "end") || tok_is(k, T_NAME, "until")) {
            int want = k->type == T_NAME ? F_BLOCK
                       : k->p[0] == '}'  ? F_BRACE
                       : k->p[0] == ')'  ? F_PAREN
                                         : F_BRACKET;
            /* pop to the matching opener (tolerates unbalanced text) */
            int j = depth - 1;
            while (j >= 0 && st[j].kind != want)
                j--;
            if (j >= 0) {
                while (depth > j) {
                    depth--;
                    free(st[depth].path);
                }
            }
        } else if (top && top->kind == F_BRACE && (tok_is(k, T_OP, ",") || tok_is(k, T_OP, ";"))) {
            top->item_start = 1;
        } else if (depth == 0 && tok_is(k, T_NAME, "return")) {
            if (t[i + 1].type == T_NAME && !is_keyword(&t[i + 1]))
                snprintf(s->root, sizeof s->root, "@%.*s", (int)t[i + 1].n, t[i + 1].p);
            else
                value_path = strdup("");
        } else if (depth == 0 && k->type == T_NAME && !is_keyword(k) &&
                   tok_is(&t[i + 1], T_OP, "=")) {
            /* a top-level "name = {" / "local name = {": a table the file may return */
            snprintf(buf, sizeof buf, "@%.*s", (int)k->n, k->p);
            i++;
            value_path = strdup(buf);
        }
    }
    free(value_path);
    while (depth > 0)
        free(st[--depth].path);
}

mg_cfg_src_t *mg_cfg_src_scan(const char *file)
{
    FILE *f = fopen(file, "rb");
    if (f == NULL)
        return NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            char *nt = realloc(text, cap + 65536);
            if (nt == NULL) {
                free(text);
                fclose(f);
                return NULL;
            }
            text = nt;
            cap += 65536;
        }
        size_t r = fread(text + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    fclose(f);
    mg_cfg_src_t *s = calloc(1, sizeof *s);
    lex_t x = { .s = text, .end = text + len, .line = 1 };
    if (text && len > 0 && text[0] == '#') /* a "#!" first line */
        while (x.s < x.end && *x.s != '\n')
            x.s++;
    if (s && lex_all(&x) == 0)
        scan(s, x.t, x.n);
    free(x.t);
    free(text);
    return s;
}

void mg_cfg_src_free(mg_cfg_src_t *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->n; i++)
        free(s->v[i].path);
    free(s->v);
    free(s);
}

int mg_cfg_src_line(const mg_cfg_src_t *s, const char *path)
{
    if (s == NULL || path == NULL)
        return 0;
    char full[512];
    if (s->root[0])
        snprintf(full, sizeof full, "%s%s%s", s->root, path[0] ? "." : "", path);
    else
        snprintf(full, sizeof full, "%s", path);
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->v[i].path, full) == 0)
            return s->v[i].line;
    return 0;
}

int mg_cfg_src_line_near(const mg_cfg_src_t *s, const char *path)
{
    char p[512];
    snprintf(p, sizeof p, "%s", path ? path : "");
    while (p[0]) {
        int line = mg_cfg_src_line(s, p);
        if (line)
            return line;
        char *dot = strrchr(p, '.'), *br = strrchr(p, '[');
        char *cut = dot > br ? dot : br;
        if (cut == NULL)
            break;
        *cut = '\0';
    }
    return 0;
}

static int distance(const char *a, const char *b)
{
    size_t an = strlen(a), bn = strlen(b);
    if (an > 64 || bn > 64)
        return 99;
    int row[65];
    for (size_t j = 0; j <= bn; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= an; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= bn; j++) {
            int up = row[j];
            int cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
            int best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[bn];
}

const char *mg_cfg_suggest(const char *word, const char *const *candidates)
{
    size_t n = strlen(word);
    int limit = n >= 9 ? 3 : n >= 5 ? 2 : 1;
    const char *best = NULL;
    int bd = limit + 1;
    for (const char *const *c = candidates; *c; c++) {
        int d = distance(word, *c);
        if (d < bd && d < (int)n) {
            bd = d;
            best = *c;
        }
    }
    return best;
}
