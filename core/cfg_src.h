/* Where things are in a config file's source, for error messages: a light
 * scan of the Lua text (no evaluation) that records the line of every key
 * and list item of the table constructors the file returns, by config path
 * ("upstreams.app.servers[1]", "routes[2].plugins[1].secret"). A config
 * built by code (tables in locals, loops) is only partly mapped: lookups
 * then fall back to the nearest mapped parent. Also "did you mean". */
#ifndef MG_CFG_SRC_H
#define MG_CFG_SRC_H

#include <stddef.h>

typedef struct mg_cfg_src mg_cfg_src_t;

/* Scans `file`. NULL if it cannot be read (or out of memory). */
mg_cfg_src_t *mg_cfg_src_scan(const char *file);
void mg_cfg_src_free(mg_cfg_src_t *s);
/* The line of `path` (exact), or 0 if the scan did not see it. */
int mg_cfg_src_line(const mg_cfg_src_t *s, const char *path);
/* The line of `path` or of its nearest mapped parent ("a.b[2].c", then
 * "a.b[2]", "a.b", "a"); 0 if none is mapped. */
int mg_cfg_src_line_near(const mg_cfg_src_t *s, const char *path);

/* The candidate closest to `word` by edit distance, if close enough to be
 * a likely misspelling (at most 1 edit for short words, 2 from 5 letters,
 * 3 from 9); else NULL. `candidates` ends with NULL. */
const char *mg_cfg_suggest(const char *word, const char *const *candidates);

#endif
