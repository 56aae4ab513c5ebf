/*
 * master.h: the master process: reads the configuration once to learn how
 * many workers to run and which shared dicts to make, makes the shared
 * memory zone, forks the workers, restarts any that dies, and turns
 * signals into actions on the workers.
 */
#ifndef GW_MASTER_H
#define GW_MASTER_H

/* Runs the gateway with configuration `path`; `workers` > 0 overrides the
 * configured count. Returns the process exit status. */
int gw_master_run(const char *path, int workers);

#endif
