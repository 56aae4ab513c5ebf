/*
 * test_tls_client.c: the client side of src/tls.c (upstreams over TLS),
 * without sockets.
 *
 * Both ends are gw_tls_t states from tls.c: a client made with
 * gw_tls_client_new talks to a listener's state (gw_tls_new) by moving what
 * each one's gw_tls_pending holds into the other's gw_tls_read. So what is
 * checked is the gateway's own client against the gateway's own server:
 * verification against a `ca` file, the host name and IP address checks,
 * verify off, session resumption through gw_tls_resume_t, and the context
 * comparison a reload uses. Certificates are made with the openssl CLI
 * (self-signed EC keys) once per program.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/buf.c"
#include "../../src/tls.c"
#include "../../src/aesgcm.c"
#include "../../src/tls_record.c"
#include "../../src/tls_tickets.c"

#include "runner.h"
#include "tls_certs.h"

static char *path(const char *name, char *buf, size_t len) {
  snprintf(buf, len, "%s/%s", dir, name);
  return buf;
}

/* A listener's context presenting `name`.pem. */
static gw_tls_ctx_t *server_ctx(const char *name) {
  char cert[128], key[128], n1[32], n2[32];
  snprintf(n1, sizeof n1, "%s.pem", name);
  snprintf(n2, sizeof n2, "%s.key", name);
  gw_tls_cert_t c = {path(n1, cert, sizeof cert), path(n2, key, sizeof key)};
  char err[512] = "";
  gw_tls_ctx_t *ctx = gw_tls_ctx_new(&c, 1, err, sizeof err);
  if (!ctx) fprintf(stderr, "gw_tls_ctx_new: %s\n", err);
  return ctx;
}

static gw_tls_client_ctx_t *client_ctx(int verify, const char *ca_name) {
  char ca[128], err[512] = "";
  gw_tls_client_ctx_t *ctx = gw_tls_client_ctx_new(verify, ca_name ? path(ca_name, ca, sizeof ca) : NULL,
                                                   err, sizeof err);
  if (!ctx) fprintf(stderr, "gw_tls_client_ctx_new: %s\n", err);
  return ctx;
}

/* Moves bytes both ways until neither side says anything. Returns the
 * client's last non-zero gw_tls_read result (GW_ETLS when it failed), or
 * that of the server when only it failed. Plaintext goes to the buffers. */
static ssize_t pump(gw_tls_t *c, gw_tls_t *s, gw_buf_t *to_client, gw_buf_t *to_server) {
  ssize_t client_rc = 0, server_rc = 0;
  for (int round = 0; round < 20; round++) {
    int moved = 0;
    const char *p;
    size_t n = gw_tls_pending(c, &p);
    if (n > 0) {
      gw_buf_t copy = {0};
      gw_buf_append(&copy, p, n);
      gw_tls_drained(c);
      ssize_t rc = gw_tls_read(s, copy.base, n, to_server);
      if (rc != 0) server_rc = rc;
      gw_buf_free(&copy);
      moved = 1;
    }
    n = gw_tls_pending(s, &p);
    if (n > 0) {
      gw_buf_t copy = {0};
      gw_buf_append(&copy, p, n);
      gw_tls_drained(s);
      ssize_t rc = gw_tls_read(c, copy.base, n, to_client);
      if (rc != 0) client_rc = rc;
      gw_buf_free(&copy);
      moved = 1;
    }
    if (!moved || client_rc < 0 || server_rc < 0) break;
  }
  return client_rc < 0 ? client_rc : server_rc < 0 ? server_rc : client_rc;
}

/* One connection: handshake, then "ping" to the server and "pong" back.
 * Returns 0 when all that worked, else the failure; *resumed tells whether
 * the handshake resumed a session; `why` gets the verify error if any. */
static int connect_once(gw_tls_client_ctx_t *cctx, gw_tls_ctx_t *sctx, const char *sni, const char *host,
                        gw_tls_resume_t *resume, int *resumed, const char **why) {
  gw_tls_t *c = gw_tls_client_new(cctx, sni, host, resume);
  gw_tls_t *s = gw_tls_new(sctx);
  gw_buf_t to_client = {0}, to_server = {0};
  int rc = gw_tls_connect(c);
  if (rc == 0) rc = (int)pump(c, s, &to_client, &to_server);
  if (why) *why = gw_tls_verify_error(c);
  if (rc >= 0 && !(gw_tls_ready(c) && gw_tls_ready(s))) rc = GW_ESTATE;
  if (rc >= 0) {
    rc = gw_tls_write(c, "ping", 4);
    if (rc == 0) rc = gw_tls_write(s, "pong", 4);
    if (rc == 0) rc = (int)pump(c, s, &to_client, &to_server);
    if (rc >= 0) rc = to_server.len == 4 && memcmp(to_server.base, "ping", 4) == 0 &&
                              to_client.len == 4 && memcmp(to_client.base, "pong", 4) == 0
                          ? 0
                          : GW_EPARSE;
  }
  if (resumed) *resumed = gw_tls_resumed(c);
  /* As client.c closes a connection: close_notify first. OpenSSL marks the
   * session of a connection freed without it as not resumable. */
  gw_tls_shutdown(c);
  gw_tls_free(c);
  gw_tls_free(s);
  gw_buf_free(&to_client);
  gw_buf_free(&to_server);
  return rc;
}

TEST(verified_by_ca_and_name) {
  gw_tls_ctx_t *s = server_ctx("a");
  gw_tls_client_ctx_t *c = client_ctx(1, "a.pem");
  REQUIRE(s && c);
  const char *why = "unset";
  CHECK_EQ(connect_once(c, s, "a.test", "a.test", NULL, NULL, &why), 0);
  CHECK(why == NULL);
  /* Names compare case-insensitively. */
  CHECK_EQ(connect_once(c, s, "A.Test", "A.Test", NULL, NULL, NULL), 0);
  /* Another name: refused, and the reason says so. */
  CHECK_EQ(connect_once(c, s, "b.test", "b.test", NULL, NULL, &why), GW_ETLS);
  CHECK_STR_EQ(why ? why : "", "hostname mismatch");
  /* An IP literal is checked as an address, which this certificate lacks. */
  CHECK_EQ(connect_once(c, s, NULL, "127.0.0.1", NULL, NULL, &why), GW_ETLS);
  CHECK_STR_EQ(why ? why : "", "IP address mismatch");
  gw_tls_client_ctx_free(c);
  gw_tls_ctx_free(s);
}

TEST(ip_address_certificate) {
  gw_tls_ctx_t *s = server_ctx("ip");
  gw_tls_client_ctx_t *c = client_ctx(1, "ip.pem");
  REQUIRE(s && c);
  CHECK_EQ(connect_once(c, s, NULL, "127.0.0.1", NULL, NULL, NULL), 0);
  CHECK_EQ(connect_once(c, s, NULL, "::1", NULL, NULL, NULL), 0);
  const char *why = NULL;
  CHECK_EQ(connect_once(c, s, NULL, "127.0.0.2", NULL, NULL, &why), GW_ETLS);
  CHECK_STR_EQ(why ? why : "", "IP address mismatch");
  gw_tls_client_ctx_free(c);
  gw_tls_ctx_free(s);
}

TEST(untrusted_chain_refused_unless_verify_is_off) {
  gw_tls_ctx_t *s = server_ctx("a");
  gw_tls_client_ctx_t *wrong = client_ctx(1, "ip.pem"); /* trusts another certificate */
  gw_tls_client_ctx_t *sys = client_ctx(1, NULL);       /* the system store */
  gw_tls_client_ctx_t *off = client_ctx(0, NULL);
  REQUIRE(s && wrong && sys && off);
  const char *why = NULL;
  CHECK_EQ(connect_once(wrong, s, "a.test", "a.test", NULL, NULL, &why), GW_ETLS);
  CHECK(why != NULL);
  CHECK_EQ(connect_once(sys, s, "a.test", "a.test", NULL, NULL, &why), GW_ETLS);
  CHECK(why != NULL);
  /* verify off: any certificate, any name; no verify error is reported. */
  CHECK_EQ(connect_once(off, s, "b.test", "b.test", NULL, NULL, &why), 0);
  CHECK(why == NULL);
  gw_tls_client_ctx_free(wrong);
  gw_tls_client_ctx_free(sys);
  gw_tls_client_ctx_free(off);
  gw_tls_ctx_free(s);
}

TEST(sessions_resume_per_context) {
  gw_tls_ctx_t *s = server_ctx("a");
  gw_tls_client_ctx_t *c = client_ctx(1, "a.pem");
  REQUIRE(s && c);
  gw_tls_resume_t r = {0};
  int resumed = -1;
  CHECK_EQ(connect_once(c, s, "a.test", "a.test", &r, &resumed, NULL), 0);
  CHECK_EQ(resumed, 0);
  CHECK(r.session != NULL); /* the server's ticket was kept */
  CHECK_EQ(connect_once(c, s, "a.test", "a.test", &r, &resumed, NULL), 0);
  CHECK_EQ(resumed, 1);
  CHECK_EQ(connect_once(c, s, "a.test", "a.test", &r, &resumed, NULL), 0);
  CHECK_EQ(resumed, 1);
  /* A new context (changed settings) never resumes the old one's session. */
  gw_tls_client_ctx_t *c2 = client_ctx(1, "a.pem");
  REQUIRE(c2);
  CHECK(gw_tls_client_ctx_id(c2) != gw_tls_client_ctx_id(c));
  CHECK_EQ(connect_once(c2, s, "a.test", "a.test", &r, &resumed, NULL), 0);
  CHECK_EQ(resumed, 0);
  CHECK_EQ(r.ctx_id, gw_tls_client_ctx_id(c2));
  CHECK_EQ(connect_once(c2, s, "a.test", "a.test", &r, &resumed, NULL), 0);
  CHECK_EQ(resumed, 1);
  gw_tls_resume_clear(&r);
  CHECK(r.session == NULL);
  gw_tls_client_ctx_free(c);
  gw_tls_client_ctx_free(c2);
  gw_tls_ctx_free(s);
}

TEST(contexts_compare_by_settings_and_file_bytes) {
  gw_tls_client_ctx_t *a1 = client_ctx(1, "a.pem"), *a2 = client_ctx(1, "a.pem");
  gw_tls_client_ctx_t *ip = client_ctx(1, "ip.pem"), *off = client_ctx(0, "a.pem");
  gw_tls_client_ctx_t *sys1 = client_ctx(1, NULL), *sys2 = client_ctx(1, NULL);
  REQUIRE(a1 && a2 && ip && off && sys1 && sys2);
  CHECK(gw_tls_client_ctx_same(a1, a2));
  CHECK(!gw_tls_client_ctx_same(a1, ip));
  CHECK(!gw_tls_client_ctx_same(a1, off));
  CHECK(!gw_tls_client_ctx_same(a1, sys1));
  CHECK(gw_tls_client_ctx_same(sys1, sys2));
  gw_tls_client_ctx_free(a1);
  gw_tls_client_ctx_free(a2);
  gw_tls_client_ctx_free(ip);
  gw_tls_client_ctx_free(off);
  gw_tls_client_ctx_free(sys1);
  gw_tls_client_ctx_free(sys2);
}

TEST(bad_ca_files_name_the_file) {
  char p[128], err[512];
  CHECK(gw_tls_client_ctx_new(1, path("missing.pem", p, sizeof p), err, sizeof err) == NULL);
  CHECK(strstr(err, "cannot read ca ") && strstr(err, "missing.pem: No such file or directory"));
  CHECK(gw_tls_client_ctx_new(1, path("a.key", p, sizeof p), err, sizeof err) == NULL);
  CHECK(strstr(err, "bad ca ") && strstr(err, "a.key"));
  /* Also with verification off: a `ca` that does not load is a mistake. */
  CHECK(gw_tls_client_ctx_new(0, path("a.key", p, sizeof p), err, sizeof err) == NULL);
  CHECK(strstr(err, "bad ca ") != NULL);
}

/* Once, in the parent before main (tls_certs.h). */
__attribute__((constructor)) static void setup(void) {
  certs_dir("/tmp/gwtest-tlscl-XXXXXX");
  make_cert("a", "a.test");
  make_cert_san("ip", "IP:127.0.0.1,IP:::1", "ip");
}

TEST_LIST(T(verified_by_ca_and_name), T(ip_address_certificate), T(untrusted_chain_refused_unless_verify_is_off),
          T(sessions_resume_per_context), T(contexts_compare_by_settings_and_file_bytes),
          T(bad_ca_files_name_the_file))
