/*
 * tls_certs.h: the throw-away certificates of the TLS unit tests.
 *
 * A test program includes it (after runner.h) and, in a constructor, makes
 * its folder and its certificates once, in the parent before main:
 *
 *   __attribute__((constructor)) static void setup(void) {
 *     certs_dir("/tmp/gwtest-NAME-XXXXXX");
 *     make_cert("a", "a.test");
 *   }
 *
 * The forked tests share the files and leave with _exit, so only the
 * parent removes the folder (atexit).
 */
#ifndef SPEC_TLS_CERTS_H
#define SPEC_TLS_CERTS_H

#include <stdio.h>
#include <stdlib.h>

static char dir[64]; /* this run's certificates and keys */

static void remove_certs_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

/* Makes `dir` from a mkdtemp template; it is removed when the parent exits. */
static void certs_dir(const char *template) {
  snprintf(dir, sizeof dir, "%s", template);
  if (!mkdtemp(dir)) exit(1);
  atexit(remove_certs_dir);
}

/* `name`.pem and `name`.key in dir: a self-signed ECDSA P-256 certificate
 * for CN=`cn` with subjectAltName `san` (e.g. "DNS:a.test" or
 * "IP:127.0.0.1"). Exits when openssl fails. */
static void make_cert_san(const char *name, const char *san, const char *cn) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
           "-keyout %s/%s.key -out %s/%s.pem -subj '/CN=%s' -addext 'subjectAltName=%s' "
           ">/dev/null 2>&1",
           dir, name, dir, name, cn, san);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot run: %s\n", cmd);
    exit(1);
  }
}

/* The same for one DNS name, which is also the CN. */
static void make_cert(const char *name, const char *dns) {
  char san[300];
  snprintf(san, sizeof san, "DNS:%s", dns);
  make_cert_san(name, san, dns);
}

#endif
