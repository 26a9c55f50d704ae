/* The service manager's readiness protocol (systemd's sd_notify(3), written
 * directly): one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET
 * (a path, or an abstract name when it starts with '@'). Without
 * NOTIFY_SOCKET every call does nothing. Only the process the manager
 * started (the single process, or the master) calls these. */
#ifndef MG_NOTIFY_H
#define MG_NOTIFY_H

/* Sends `state` ("READY=1", "STOPPING=1", ...). Never blocks; returns 0
 * when sent or when there is no manager, -1 on a send error. */
int mg_notify(const char *state);

/* READY=1 with MAINPID and a STATUS line: listeners bound, serving. */
int mg_notify_ready(void);
/* RELOADING=1 with MONOTONIC_USEC (as systemd 253 wants it); READY=1 ends
 * the reload, whether it succeeded or not. */
int mg_notify_reloading(void);

#endif
