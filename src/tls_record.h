/*
 * tls_record.h: TLS 1.3 application records, sealed and opened by the
 * gateway itself once OpenSSL has finished a server handshake.
 *
 * Why: OpenSSL 3.0 spends some 14,000 instructions per request/answer pair
 * in its record layer (SSL_read, SSL_write, the EVP calls each record
 * makes, the memory BIO); the AEAD itself is under a tenth of that. After
 * the handshake a TLS 1.3 record is only a 5-byte header and an AEAD seal
 * (RFC 8446 section 5.2), so the gateway takes it from there: OpenSSL keeps
 * everything else (the handshake, certificates, tickets, client
 * certificates, and every TLS 1.2 connection).
 *
 * What this module does (RFC 8446 sections 5 and 7): per-record nonces
 * from the traffic IV and a 64-bit sequence number; padding stripped;
 * alerts (close_notify ends the stream, any other is fatal); KeyUpdate from
 * the peer (and our own KeyUpdate in answer when it is requested, and
 * before our write sequence reaches gw_tls_rec_rekey_after); fatal alerts
 * of our own, sealed, on a bad record. The suites are the three TLS 1.3
 * suites OpenSSL offers by default (AES-128-GCM, AES-256-GCM,
 * ChaCha20-Poly1305); anything else stays with OpenSSL.
 *
 * Where RFC 8446 leaves room, OpenSSL's behaviour is kept (the record
 * version must be 0x0303; at most 32 empty records and 4 user_canceled
 * alerts in a row; the same alerts for the same faults), checked by
 * spec/c/test_tls_records.c against records forged by the test itself.
 *
 * The AEAD: for AES-GCM records of up to 256 bytes of plaintext (most
 * requests and small answers), aesgcm.c on AES-NI and PCLMULQDQ, which is
 * checked against OpenSSL's EVP before a suite uses it; for everything
 * else, OpenSSL's own cipher implementation, called through its provider's
 * dispatch table (see tls_record.c for why and how it is checked).
 */
#ifndef GW_TLS_RECORD_H
#define GW_TLS_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "buf.h"

/* One connection's record state, owned by its gw_tls_t (tls.c) and freed
 * with gw_tls_rec_free; the traffic secrets it holds are wiped then. */
typedef struct gw_tls_rec_s gw_tls_rec_t;

/* Records sealed with one key before a KeyUpdate of our own (RFC 8446
 * 5.5 bounds AES-GCM to 2^24.5 full records per key). A variable so that
 * tests can make it small. */
extern uint64_t gw_tls_rec_rekey_after;

/* 0: every record goes through OpenSSL's AEAD (as on a CPU without
 * AES-NI). Read when a direction is keyed; for tests. */
extern int gw_tls_rec_own_aesgcm;

/* Runs the start-up checks of every TLS 1.3 suite now (otherwise they run
 * when a suite is first negotiated): this file's record code against
 * OpenSSL's EVP, and aesgcm.c where it applies. Returns 0 when all passed,
 * or -1 with each suite that did not, and what serves it instead, in `why`
 * ("; "-separated, cut to `len`). A suite OpenSSL itself lacks is not a
 * failure. A failed check is not an error (OpenSSL's slower path serves the
 * suite), but the first worker logs it (worker.c). */
int gw_tls_rec_self_check(char *why, size_t len);

/* The largest secret (SHA-384's output). */
#define GW_TLS_REC_SECRET_MAX 48

/* Makes the state for suite `suite` (its two-byte code point, e.g. 0x1301)
 * from the client's and the server's application traffic secrets (`len`
 * bytes each, the suite hash's length). `sent` (sent_len bytes) is what
 * OpenSSL wrote after it switched to the server's application key (the
 * NewSessionTicket records of the handshake's last step): each record must
 * open with the key derived here, and counts in our write sequence.
 * Returns NULL when the suite or the library's cipher cannot be handled
 * here, or a sent record does not open: the caller then stays with
 * OpenSSL's record layer. */
gw_tls_rec_t *gw_tls_rec_new(uint16_t suite, const unsigned char *client_secret,
                             const unsigned char *server_secret, size_t len, const char *sent,
                             size_t sent_len);
void gw_tls_rec_free(gw_tls_rec_t *r);

/* Opens the records in `in` (n bytes: any cut, a partial record is kept
 * for the next call) and appends their plaintext to `plain`, which may be
 * reallocated. `in` may lie in `plain`'s spare room (the connection reads
 * the socket there): records wholly in it are decrypted in place and moved
 * down; a record completing one kept from an earlier call goes through a
 * copy of `in`, taken before `plain` grows. Our answers (a
 * KeyUpdate, a fatal alert) are appended to `out`. Returns the plaintext
 * bytes appended (0: none yet), UV_EOF once the peer's close_notify was
 * read (plaintext before it is returned first), or GW_ETLS (reason:
 * gw_tls_rec_error) after which nothing more is read or written. */
ssize_t gw_tls_rec_read(gw_tls_rec_t *r, const char *in, size_t n, gw_buf_t *plain, gw_buf_t *out);

/* Seals the `n` buffers, in order, as application records into `out`
 * (pieces are joined up to 16 KB a record). Returns 0, or GW_ETLS after a
 * failure or a close_notify. */
int gw_tls_rec_write(gw_tls_rec_t *r, const uv_buf_t *bufs, unsigned n, gw_buf_t *out);

/* Appends a close_notify alert to `out` (once); later writes fail. */
void gw_tls_rec_close(gw_tls_rec_t *r, gw_buf_t *out);

/* 1 once the peer's close_notify was read. */
int gw_tls_rec_peer_closed(const gw_tls_rec_t *r);

/* Why the last call failed (text valid until gw_tls_rec_free), or NULL. */
const char *gw_tls_rec_error(const gw_tls_rec_t *r);

#endif
