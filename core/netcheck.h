/* Host names in the config, before anything is served: waits (bounded) for
 * the first answers of upstream servers' names so the first requests find
 * addresses, and for `moongate -t` resolves Redis host names too and
 * reports every name that does not resolve (PRODUCT.md "Command line"). */
#ifndef MG_NETCHECK_H
#define MG_NETCHECK_H

#include <stdio.h>

struct mg_loop;
struct mg_cfg;

/* Settles the current generation's names on the loop's resolver (at most
 * `timeout` s). With report, also Redis addresses, and prints
 * "file:line: path: cannot resolve "host": why" to out for each failure.
 * Returns the number of failures. */
int mg_netcheck(struct mg_loop *loop, int report, double timeout, FILE *out);
/* `moongate -t` on a config that has other errors (no generation): resolves
 * the upstream servers' host names of what could be read of it (`cfg`,
 * mg_cfg_load_ex's partial config) and prints each that does not resolve
 * as above. Returns the number of failures. */
int mg_netcheck_partial(struct mg_loop *loop, const struct mg_cfg *cfg, double timeout, FILE *out);

#endif
