/*
 * master.c: the master process (see master.h).
 *
 * Before forking, the master loads the configuration once (in its own,
 * throw-away VM) to learn the worker count and the shared dicts, and makes
 * the shared memory zone (shm.h) every worker inherits.
 *
 * The master runs no event loop: it blocks every signal it handles and waits
 * in sigsuspend, so a signal can only arrive there and the handlers only set
 * flags. That keeps fork() simple (no loop state to hand over) and the
 * master small enough to be trusted to outlive crashing workers.
 *
 * The master also makes each worker slot's listening sockets (listener.h)
 * and keeps them until it stops: a worker restarted in a slot takes over
 * the socket, and the connections queued on it, of the one that died.
 *
 * A worker that exits while the gateway is not stopping is restarted. One
 * that fails during its start-up (exit status 2: bad configuration, port
 * taken) before any worker ever started makes the whole gateway exit 1, as a
 * failed start should; later, restarts back off so a crash loop cannot spin.
 */
#include "master.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "lua_vm.h"
#include "mem.h"
#include "shm.h"
#include "worker.h"

#define START_GRACE_MS 1000

typedef struct {
  pid_t pid;                      /* 0 when not running */
  uint64_t started;               /* ms, monotonic */
  int fails;                      /* consecutive quick deaths, for back-off */
  gw_inherited_socket_t *sockets; /* the slot's listening sockets (listen entries, then
                                   * admin), open until the master stops; gw_xmalloc'd */
  size_t nsockets;
} worker_slot_t;

/* Every slot, for spawn_worker's child (which closes the other slots'
 * sockets) and close_sockets. */
static worker_slot_t *all_slots;
static int nslots;

static volatile sig_atomic_t got_chld, got_term, got_hup, got_usr1, got_alarm;
/* The worker index a pending HUP came from (POST /reload: that worker has
 * reloaded already), or -1 for a HUP every worker must act on. */
static volatile sig_atomic_t hup_from = -1;

static void on_hup(int sig, siginfo_t *si, void *uctx) {
  int from = -1;
  if (si->si_code == SI_QUEUE && si->si_value.sival_int > 0) from = si->si_value.sival_int - 1;
  /* Two HUPs before the loop ran: reload everyone (a repeat is harmless). */
  hup_from = got_hup ? -1 : from;
  got_hup = 1;
}

static void on_signal(int sig) {
  switch (sig) {
    case SIGCHLD: got_chld = 1; break;
    case SIGTERM:
    case SIGINT: got_term = 1; break;
    case SIGHUP: got_hup = 1; break;
    case SIGUSR1: got_usr1 = 1; break;
    case SIGALRM: got_alarm = 1; break;
  }
}

static const int handled[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGALRM};
#define NHANDLED (sizeof handled / sizeof handled[0])

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void install_handlers(sigset_t *blocked) {
  sigemptyset(blocked);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  for (size_t i = 0; i < NHANDLED; i++) {
    sigaddset(blocked, handled[i]);
    sigaction(handled[i], &sa, NULL);
  }
  sa.sa_handler = NULL;
  sa.sa_sigaction = on_hup;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  sigprocmask(SIG_BLOCK, blocked, NULL);
}

/* Closes a slot's sockets, keeping their addresses for remake_sockets. */
static void drop_sockets(worker_slot_t *slot) {
  for (size_t k = 0; k < slot->nsockets; k++) {
    if (slot->sockets[k].fd >= 0) close(slot->sockets[k].fd);
    slot->sockets[k].fd = -1;
  }
}

/* In the child: default dispositions, then the worker. The signals stay
 * blocked until the worker has its own handlers (gw_worker_run unblocks
 * them): a HUP or TERM forwarded while it still loads its configuration
 * then waits instead of killing it with the default action. */
static pid_t spawn_worker(const char *path, int index, int workers, const sigset_t *blocked) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* Only this slot's sockets: a sibling's must close when the master
   * closes its copy. */
  for (int i = 0; i < nslots; i++)
    if (i != index) drop_sockets(&all_slots[i]);
  gw_listener_inherit(all_slots[index].sockets, all_slots[index].nsockets);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  for (size_t i = 0; i < NHANDLED; i++) sigaction(handled[i], &sa, NULL);
  /* SIGCHLD and SIGALRM are the master's; the worker needs them open. */
  sigset_t open;
  sigemptyset(&open);
  sigaddset(&open, SIGCHLD);
  sigaddset(&open, SIGALRM);
  sigprocmask(SIG_UNBLOCK, &open, NULL);
  (void)blocked;
  _exit(gw_worker_run(path, index, workers));
}

static void signal_all(worker_slot_t *slots, int n, int sig) {
  for (int i = 0; i < n; i++)
    if (slots[i].pid > 0) kill(slots[i].pid, sig);
}

static int running(worker_slot_t *slots, int n) {
  int k = 0;
  for (int i = 0; i < n; i++) k += slots[i].pid > 0;
  return k;
}

/* Makes again the sockets drop_sockets closed; one that cannot be had is
 * left for the worker to open (and report). */
static void remake_sockets(worker_slot_t *slot) {
  for (size_t k = 0; k < slot->nsockets; k++) {
    gw_inherited_socket_t *s = &slot->sockets[k];
    if (s->fd >= 0) continue;
    gw_listen_t addr = {0};
    addr.host = s->host;
    addr.port = s->port;
    int fd = gw_listener_socket(&addr);
    if (fd < 0) gw_log_error("cannot listen on %s:%d again: %s", s->host, s->port, uv_strerror(fd));
    s->fd = fd < 0 ? -1 : fd;
  }
}

/* Collects dead workers; returns 1 if one failed its start before any worker
 * had ever come up (the gateway cannot start). */
static int reap(worker_slot_t *slots, int n, int stopping, int *ever_up, const char *path, int workers,
                const sigset_t *blocked) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < n; i++) {
      if (slots[i].pid != pid) continue;
      slots[i].pid = 0;
      if (stopping) break;
      uint64_t lived = now_ms() - slots[i].started;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 2 && !*ever_up) return 1;
      if (WIFSIGNALED(status))
        gw_log_error("worker %d (pid %d) killed by signal %d; restarting", i, (int)pid, WTERMSIG(status));
      else
        gw_log_error("worker %d (pid %d) exited with status %d; restarting", i, (int)pid,
                     WEXITSTATUS(status));
      slots[i].fails = lived < START_GRACE_MS ? slots[i].fails + 1 : 0;
      /* A worker that could not start (status 2), or a slot whose workers
       * keep dying at start, leaves nobody to accept on the slot's
       * sockets: close them (their share of new connections goes to the
       * other workers) until the next try. One quick crash keeps them: the
       * replacement, started at once, serves what was queued. */
      if (slots[i].fails > 1 || (WIFEXITED(status) && WEXITSTATUS(status) == 2)) drop_sockets(&slots[i]);
      if (slots[i].fails > 1) {
        /* Back off up to 5 s while a worker keeps dying at start. */
        struct timespec ts = {slots[i].fails > 5 ? 5 : slots[i].fails, 0};
        nanosleep(&ts, NULL);
      }
      remake_sockets(&slots[i]);
      slots[i].started = now_ms();
      slots[i].pid = spawn_worker(path, i, workers, blocked);
    }
  }
  return 0;
}

/* Makes one listening socket per listen address (and the admin address)
 * for each of the n slots. Returns 0, or 1 after saying which address
 * could not be had. */
static int open_sockets(worker_slot_t *slots, int n, const gw_config_t *cfg) {
  gw_listen_t *addrs;
  size_t count = gw_config_addresses(cfg, &addrs);
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    slots[i].sockets = gw_xcalloc(count ? count : 1, sizeof *slots[i].sockets);
    for (size_t k = 0; k < count && rc == 0; k++) {
      const gw_listen_t *l = &addrs[k];
      int fd = gw_listener_socket(l);
      if (fd < 0) {
        fprintf(stderr, "gateway: cannot listen on %s:%d: %s\n", l->host, l->port, uv_strerror(fd));
        rc = 1;
        break;
      }
      slots[i].sockets[k] = (gw_inherited_socket_t){gw_xstrndup(l->host, strlen(l->host)), l->port, fd};
      slots[i].nsockets++;
    }
  }
  gw_listen_addresses_free(addrs, count);
  return rc;
}

/* Stops queueing connections nobody will accept (at stop, and when the
 * master leaves). */
static void close_sockets(worker_slot_t *slots, int n) {
  for (int i = 0; i < n; i++) {
    drop_sockets(&slots[i]);
    for (size_t k = 0; k < slots[i].nsockets; k++) free(slots[i].sockets[k].host);
    free(slots[i].sockets);
    slots[i].sockets = NULL;
    slots[i].nsockets = 0;
  }
}

int gw_master_run(const char *path, int workers) {
  gw_log_set_role("master");
  /* Until the handlers are in place (after the load, which may take a
   * while), a HUP or USR1 would end the gateway with their default action.
   * Blocked instead: one sent now waits, and acts once the workers run (a
   * HUP after an edit made during the start-up still reloads). TERM and INT
   * keep their default: they stop a start-up that has nothing to drain. */
  sigset_t early;
  sigemptyset(&early);
  sigaddset(&early, SIGHUP);
  sigaddset(&early, SIGUSR1);
  sigprocmask(SIG_BLOCK, &early, NULL);
  char err[4096];
  gw_vm_t *vm = gw_vm_load(path, GW_VM_MASTER, 0, 0, NULL, err, sizeof err);
  if (!vm) {
    fprintf(stderr, "gateway: %s\n", err);
    return 1;
  }
  int n = workers > 0 ? workers : vm->config.workers;
  double drain = vm->config.timeouts.drain;
  if (gw_log_open_error(vm->config.error_log) != 0) {
    fprintf(stderr, "gateway: cannot open error log %s\n", vm->config.error_log);
    gw_vm_unref(vm);
    return 1;
  }
  /* The shared memory (worker slots, shared dicts) must exist before the
   * first fork so that every worker inherits the same mapping. */
  if (gw_shm_create((unsigned)n, &vm->config, err, sizeof err) != 0) {
    fprintf(stderr, "gateway: %s\n", err);
    gw_vm_unref(vm);
    return 1;
  }
  worker_slot_t *slots = gw_xcalloc((size_t)n, sizeof *slots);
  all_slots = slots;
  nslots = n;
  if (open_sockets(slots, n, &vm->config) != 0) {
    close_sockets(slots, n);
    gw_vm_unref(vm);
    return 1;
  }
  gw_vm_unref(vm);

  sigset_t blocked, empty;
  install_handlers(&blocked);
  sigemptyset(&empty);
  for (int i = 0; i < n; i++) {
    slots[i].started = now_ms();
    slots[i].pid = spawn_worker(path, i, workers, &blocked);
  }
  gw_log_info("started %d worker(s) with %s", n, path);

  int ever_up = 0, stopping = 0, failed = 0;
  uint64_t up_at = now_ms() + START_GRACE_MS;
  alarm(1);
  while (!stopping || running(slots, n) > 0) {
    sigsuspend(&empty);
    if (!ever_up && now_ms() >= up_at) ever_up = 1;
    if (got_alarm) {
      got_alarm = 0;
      if (stopping) {
        gw_log_error("workers did not stop after the drain time; killing them");
        signal_all(slots, n, SIGKILL);
      } else if (!ever_up) {
        alarm(1);
      }
    }
    if (got_chld) {
      got_chld = 0;
      if (reap(slots, n, stopping, &ever_up, path, workers, &blocked)) {
        gw_log_error("a worker could not start; stopping");
        failed = 1;
        got_term = 1;
      }
    }
    if (got_term && !stopping) {
      got_term = 0;
      stopping = 1;
      close_sockets(slots, n); /* new connections are refused from now on */
      signal_all(slots, n, SIGTERM);
      alarm((unsigned)(gw_seconds_to_ms(drain) / 1000) + 5);
    }
    if (got_hup) {
      int from = hup_from;
      got_hup = 0;
      hup_from = -1;
      for (int i = 0; i < n; i++)
        if (i != from && slots[i].pid > 0) kill(slots[i].pid, SIGHUP);
    }
    if (got_usr1) {
      got_usr1 = 0;
      gw_log_reopen();
      signal_all(slots, n, SIGUSR1);
    }
  }
  close_sockets(slots, n);
  free(slots);
  gw_log_info("stopped");
  return failed ? 1 : 0;
}
