/*
 * resp_scan.h: counts the complete replies in a stream of RESP2 bytes (the
 * Redis protocol) as it arrives, and refuses announced sizes over a cap.
 *
 * redis.c runs it over every byte read from a Redis connection before
 * hiredis sees them, because hiredis 0.14 trusts the server too much: a
 * reply no command waits for trips an assert that aborts the process, and
 * an array header allocates its element pointers up front (2^31 of them
 * for the 15 bytes "*2147483647\r\n"). Counting replies lets redis.c drop
 * a connection that answers more than it was asked; the caps stop the
 * allocation before it is made.
 *
 * It only counts and bounds: a shape it does not know (another type byte,
 * a malformed length) marks the scanner broken and it stops counting,
 * leaving the protocol error to hiredis, which reports it.
 *
 * Embedded in its connection (redis.c conn_t), zeroed with it; no
 * allocation, no ownership.
 */
#ifndef GW_RESP_SCAN_H
#define GW_RESP_SCAN_H

#include <stddef.h>
#include <stdint.h>

/* The most elements one array may announce, and the longest bulk string. */
#define GW_RESP_MAX_ELEMENTS (1 << 20)
#define GW_RESP_MAX_BULK (512LL * 1024 * 1024)
/* Arrays open at once; hiredis 0.14 refuses deeper nesting itself. */
#define GW_RESP_MAX_DEPTH 8

typedef struct gw_resp_scan_s {
  int64_t remain[GW_RESP_MAX_DEPTH]; /* elements still to come in each open array */
  int depth;                         /* arrays open */
  uint64_t bulk_left;                /* payload bytes and CRLF of a bulk string still to come */
  int64_t num;                       /* the length read so far on a * or $ line */
  char type;                         /* the type byte of the line being read; 0 between lines */
  uint8_t negative;                  /* that length began with '-' */
  uint8_t digits;                    /* digits read of it */
  uint8_t broken;                    /* an unknown shape: counting stopped (hiredis will refuse it) */
} gw_resp_scan_t;

enum { GW_RESP_OK = 0, GW_RESP_TOO_BIG = -1 };

/* Scans `n` more bytes, adding the top-level replies they complete to
 * *replies. Returns GW_RESP_OK, or GW_RESP_TOO_BIG when an array or bulk
 * string announces more than the caps (the connection must be dropped). */
int gw_resp_scan(gw_resp_scan_t *s, const char *p, size_t n, uint64_t *replies);

#endif
