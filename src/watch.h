/*
 * watch.h: watching a set of files and calling back once, debounced, after
 * any of them changes.
 *
 * The watch is on the directories, not on the files: libuv's fs events on a
 * directory name the entry that changed, and a directory watch survives the
 * way editors save (write a new file, rename it over the old one), which
 * replaces the file's inode and silently ends a watch placed on the file
 * itself. Each file is watched under the path it was given and, when that is
 * a symbolic link, under the path it resolves to as well.
 *
 * Debouncing: an editor's save is several events (truncate, writes, rename,
 * chmod). The callback runs when DEBOUNCE_MS pass without a new event, or at
 * most MAX_WAIT_MS after the first one, so a file written continuously still
 * reloads. If the first file of the set (the configuration) is missing at
 * that moment, as between an editor's delete and create, the callback waits
 * for the next event.
 *
 * A gw_watch_t is owned by its creator and lives until gw_watch_close; its
 * handles never keep the loop alive.
 */
#ifndef GW_WATCH_H
#define GW_WATCH_H

#include <stddef.h>
#include <uv.h>

typedef struct gw_watch_s gw_watch_t;
typedef void (*gw_watch_cb)(void *data);

/* A watch with nothing in it yet; `cb(data)` runs after changes. */
gw_watch_t *gw_watch_new(uv_loop_t *loop, gw_watch_cb cb, void *data);
/* Watches exactly `paths` (copied) from now on, and where each symbolic link
 * among them points now; a set equal to the current one, pointing where it
 * did, changes nothing. Returns 0, or the first error met (a directory that
 * cannot be watched); the other paths are watched anyway. */
int gw_watch_set(gw_watch_t *w, char *const *paths, size_t n);
/* The set last given to gw_watch_set (borrowed until the next call). */
size_t gw_watch_paths(const gw_watch_t *w, char *const **paths);
/* Stops watching; the memory goes once the handles have closed. */
void gw_watch_close(gw_watch_t *w);
/* Acts as if a watched file had changed (debounced like an event): for a
 * change the caller saw happen before its watches were in place. */
void gw_watch_poke(gw_watch_t *w);

#endif
