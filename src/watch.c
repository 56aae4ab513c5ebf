/*
 * watch.c: debounced file watching through directory watches (see watch.h).
 */
#include "watch.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "mem.h"

#define DEBOUNCE_MS 50
#define MAX_WAIT_MS 300

/* One watched directory. Owned by its gw_watch_t's list until detached by
 * a new set or a close; freed in on_dir_closed. */
typedef struct dir_watch_s {
  uv_fs_event_t handle;     /* handle.data points here */
  gw_watch_t *owner;        /* the watch; its handle count covers this handle */
  char *dir;                /* as passed to uv_fs_event_start */
  char **names;             /* entries of `dir` that matter */
  size_t nnames;            /* entries in names */
  struct dir_watch_s *next; /* owner->dirs */
} dir_watch_t;

/* See watch.h for the lifetime. */
struct gw_watch_s {
  uv_loop_t *loop;      /* the worker's loop */
  uv_timer_t timer;     /* the debounce timer */
  uint64_t burst_start; /* uv_now of the first event not yet acted on, 0 if none */
  dir_watch_t *dirs;    /* directories watched now */
  char **paths;         /* the set, as last given to gw_watch_set */
  char **reals;         /* realpath of each then ("" if it had none) */
  size_t npaths;        /* entries in paths and reals */
  gw_watch_cb cb;       /* called after a burst of changes */
  void *data;           /* its argument */
  int handles;          /* open libuv handles (timer + directories) */
  int closing;          /* gw_watch_close was called */
};

static void free_strings(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void maybe_free(gw_watch_t *w) {
  if (w->closing && w->handles == 0) {
    free_strings(w->paths, w->npaths);
    free_strings(w->reals, w->npaths);
    free(w);
  }
}

static void on_dir_closed(uv_handle_t *h) {
  dir_watch_t *d = h->data;
  gw_watch_t *w = d->owner;
  free(d->dir);
  free_strings(d->names, d->nnames);
  free(d);
  w->handles--;
  maybe_free(w);
}

static void on_timer_closed(uv_handle_t *h) {
  gw_watch_t *w = h->data;
  w->handles--;
  maybe_free(w);
}

static void on_timer(uv_timer_t *t) {
  gw_watch_t *w = t->data;
  w->burst_start = 0;
  struct stat st;
  /* Between an editor's delete and create: the create will call again. */
  if (w->npaths > 0 && stat(w->paths[0], &st) != 0) return;
  w->cb(w->data);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  dir_watch_t *d = h->data;
  gw_watch_t *w = d->owner;
  if (w->closing) return;
  if (status < 0) {
    gw_log_warn("watching %s: %s", d->dir, uv_strerror(status));
    return;
  }
  if (filename) {
    size_t i = 0;
    while (i < d->nnames && strcmp(d->names[i], filename) != 0) i++;
    if (i == d->nnames) return; /* another file of the directory (a log, a swap file) */
  }
  gw_watch_poke(w);
}

void gw_watch_poke(gw_watch_t *w) {
  if (w->closing) return;
  uint64_t now = uv_now(w->loop);
  if (w->burst_start == 0) w->burst_start = now;
  /* Each event pushes the call DEBOUNCE_MS further, but never past
   * MAX_WAIT_MS after the first event of the burst. */
  uint64_t waited = now - w->burst_start, delay = DEBOUNCE_MS;
  if (waited + delay > MAX_WAIT_MS) delay = waited >= MAX_WAIT_MS ? 0 : MAX_WAIT_MS - waited;
  uv_timer_start(&w->timer, on_timer, delay, 0);
}

gw_watch_t *gw_watch_new(uv_loop_t *loop, gw_watch_cb cb, void *data) {
  gw_watch_t *w = gw_xcalloc(1, sizeof *w);
  w->loop = loop;
  w->cb = cb;
  w->data = data;
  uv_timer_init(loop, &w->timer);
  w->timer.data = w;
  uv_unref((uv_handle_t *)&w->timer);
  w->handles = 1;
  return w;
}

/* Adds entry `name` of directory `dir` to the list being built in `dirs`. */
static void add_entry(dir_watch_t **dirs, const char *dir, size_t dirlen, const char *name) {
  dir_watch_t *d = *dirs;
  while (d && (strlen(d->dir) != dirlen || memcmp(d->dir, dir, dirlen) != 0)) d = d->next;
  if (!d) {
    d = gw_xcalloc(1, sizeof *d);
    d->dir = gw_xstrndup(dir, dirlen);
    d->next = *dirs;
    *dirs = d;
  }
  for (size_t i = 0; i < d->nnames; i++)
    if (strcmp(d->names[i], name) == 0) return;
  d->names = gw_xrealloc(d->names, (d->nnames + 1) * sizeof *d->names);
  d->names[d->nnames++] = gw_xstrndup(name, strlen(name));
}

static void add_path(dir_watch_t **dirs, const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) add_entry(dirs, ".", 1, path);
  else if (slash == path) add_entry(dirs, "/", 1, slash + 1);
  else add_entry(dirs, path, (size_t)(slash - path), slash + 1);
}

/* Where each path points now, "" for one that does not resolve. */
static char **real_paths(char *const *paths, size_t n) {
  char **reals = gw_xcalloc(n ? n : 1, sizeof *reals);
  for (size_t i = 0; i < n; i++) {
    char real[PATH_MAX];
    const char *r = realpath(paths[i], real) ? real : "";
    reals[i] = gw_xstrndup(r, strlen(r));
  }
  return reals;
}

/* The same paths, pointing where they did: a link re-pointed (ln -sfn, a
 * Kubernetes ConfigMap's ..data) must move the watch to the new target. */
static int same_set(const gw_watch_t *w, char *const *paths, char *const *reals, size_t n) {
  if (n != w->npaths) return 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(paths[i], w->paths[i]) != 0 || strcmp(reals[i], w->reals[i]) != 0) return 0;
  return 1;
}

size_t gw_watch_paths(const gw_watch_t *w, char *const **paths) {
  *paths = w->paths;
  return w->npaths;
}

int gw_watch_set(gw_watch_t *w, char *const *paths, size_t n) {
  if (w->closing) return 0;
  char **reals = real_paths(paths, n);
  if (same_set(w, paths, reals, n)) {
    free_strings(reals, n);
    return 0;
  }
  for (dir_watch_t *d = w->dirs, *next; d; d = next) {
    next = d->next;
    uv_close((uv_handle_t *)&d->handle, on_dir_closed);
  }
  w->dirs = NULL;
  /* `paths` may be the current set itself (gw_watch_paths): copy first. */
  char **copies = gw_xcalloc(n ? n : 1, sizeof *copies);
  for (size_t i = 0; i < n; i++) copies[i] = gw_xstrndup(paths[i], strlen(paths[i]));
  free_strings(w->paths, w->npaths);
  free_strings(w->reals, w->npaths);
  w->paths = copies;
  w->reals = reals;
  w->npaths = n;
  dir_watch_t *dirs = NULL;
  for (size_t i = 0; i < n; i++) {
    add_path(&dirs, w->paths[i]);
    if (reals[i][0] && strcmp(reals[i], w->paths[i]) != 0) add_path(&dirs, reals[i]);
  }
  int first_error = 0;
  for (dir_watch_t *d = dirs, *next; d; d = next) {
    next = d->next;
    d->owner = w;
    uv_fs_event_init(w->loop, &d->handle);
    d->handle.data = d;
    w->handles++;
    int rc = uv_fs_event_start(&d->handle, on_fs_event, d->dir, 0);
    if (rc != 0) {
      gw_log_warn("cannot watch %s for changes: %s", d->dir, uv_strerror(rc));
      if (!first_error) first_error = rc;
      uv_close((uv_handle_t *)&d->handle, on_dir_closed);
      continue;
    }
    uv_unref((uv_handle_t *)&d->handle);
    d->next = w->dirs;
    w->dirs = d;
  }
  return first_error;
}

void gw_watch_close(gw_watch_t *w) {
  if (w->closing) return;
  w->closing = 1;
  for (dir_watch_t *d = w->dirs; d; d = d->next) uv_close((uv_handle_t *)&d->handle, on_dir_closed);
  w->dirs = NULL;
  uv_close((uv_handle_t *)&w->timer, on_timer_closed);
}
