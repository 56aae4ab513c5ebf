/*
 * tls_tickets.h: session ticket keys shared by every worker, rotated.
 *
 * A TLS session ticket is the session state encrypted with a key only the
 * server knows. With one key per worker, a client resuming on another
 * worker than the one that issued its ticket gets a full handshake, and the
 * kernel spreads connections across workers (SO_REUSEPORT), so that is most
 * resumptions once there are several workers. Here the keys live in the
 * shared memory zone, so whichever worker accepts the connection can
 * decrypt the ticket.
 *
 * Keys: a ring of GW_TICKET_SLOTS slots, each a 16-byte name (sent in the
 * clear at the start of every ticket, to find the key again), an AES-256
 * key and an HMAC-SHA256 key, all from RAND_bytes, and the time it was
 * made. The newest slot encrypts new tickets for `rotate` seconds; then
 * the first worker that issues a ticket makes a new key (rotation is lazy,
 * so no process needs a timer, and an idle gateway makes no keys). A key
 * decrypts tickets until `rotate` + the ticket lifetime after it was made,
 * so every ticket is good for at least its lifetime (2 x rotate); after
 * that, the ticket's key is not accepted and the client gets a full
 * handshake. Every ticket that resumes a session is replaced in the same
 * handshake by a new one under the newest key.
 *
 * Concurrency: a rotation takes a lock word (the pid of its holder; a
 * holder found dead is replaced), writes the ring's oldest slot, which
 * expired long ago, and then publishes it by bumping `gen`. Readers never
 * lock: each slot's `made` stamp is 0 while the slot is being written, and
 * a reader that sees it change while copying ignores the slot. Without a
 * shared zone (gateway -t, unit tests) the ring is private to the process.
 *
 * Times are CLOCK_MONOTONIC milliseconds, the same in every process.
 *
 * No SSL_* call here: tls.c installs gw_tickets_cb on its contexts.
 */
#ifndef GW_TLS_TICKETS_H
#define GW_TLS_TICKETS_H

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#define GW_TICKET_SLOTS 8

/* The bytes the shared zone needs for the ring. */
size_t gw_tickets_zone_size(void);
/* Gives the ring its memory in the shared zone (the master, before forking). */
void gw_tickets_attach(void *mem);
/* Seconds each key encrypts new tickets (> 0); tickets live twice that.
 * Per process, set from the configuration at start and on reload. */
void gw_tickets_set_rotate(double seconds);
/* The ticket lifetime in whole seconds (at least 1), for the contexts'
 * session timeout and the lifetime hint sent to clients. */
long gw_tickets_lifetime(void);
/* The callback for SSL_CTX_set_tlsext_ticket_key_evp_cb (OpenSSL 3).
 * enc = 1: picks the current key (rotating if it is due) and sets up the
 * cipher and MAC; returns 1, or 0 (no ticket this time) if no key could be
 * made. enc = 0: finds the key named `name`; returns 2 (decrypt, and
 * renew the ticket), or 0 (unknown or expired: a full handshake). Never
 * blocks; never fails the handshake. */
int gw_tickets_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                  int enc);
/* How many keys were made since the gateway started, all workers (for
 * /status): 0 before the first ticket, then 1 + the rotations. */
uint64_t gw_tickets_keys_made(void);

#endif
