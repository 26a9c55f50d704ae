/* The admin API, served on the admin listener (never on traffic
 * listeners): GET /metrics, GET /status, POST /reload. */
#ifndef MG_ADMIN_H
#define MG_ADMIN_H

typedef struct mg_req mg_req_t;

/* Answers r (always finishes it). */
void mg_admin_handle(mg_req_t *r);

#endif
