/*
 * main.c: the command line.
 *
 *   gateway [-c FILE] [-w N]   run (master + workers)
 *   gateway -t [-c FILE]       check the configuration and exit 0 or 1
 *   gateway -v | --version     print versions and exit
 */
#include <lua.h>
#include <luajit.h>
#include <hiredis/hiredis.h>
#include <llhttp.h>
#include <openssl/crypto.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "lua_vm.h"
#include "master.h"
#include "version.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: gateway [-c FILE] [-w N] [-t] [-v] [-h]\n"
          "  -c FILE        configuration script (default ./gateway.lua)\n"
          "  -w N           number of worker processes, 1-1024 (overrides gw.config workers)\n"
          "  -t             load and check the configuration, then exit\n"
          "  -v, --version  print the versions of the gateway and its libraries\n"
          "  -h, --help     print this text\n");
}

static void print_versions(void) {
  printf("gateway %s (ffi abi %d)\n", GW_VERSION, GW_FFI_ABI);
  printf("LuaJIT %s\n", LUAJIT_VERSION + 7);
  printf("libuv %s\n", uv_version_string());
  printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
  printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION) + 8);
  printf("lua-cjson 2.1.0 (static)\n");
  printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
}

static int check(const char *path) {
  char err[4096];
  gw_vm_t *vm = gw_vm_load(path, GW_VM_CHECK, 0, 0, NULL, err, sizeof err);
  if (!vm) {
    fprintf(stderr, "gateway: configuration %s failed: %s\n", path, err);
    return 1;
  }
  int bad_logs = gw_log_check_paths(vm->config.error_log, vm->config.access_log, err, sizeof err);
  gw_vm_unref(vm);
  if (bad_logs) {
    fprintf(stderr, "gateway: configuration %s failed: %s\n", path, err);
    return 1;
  }
  printf("configuration %s is ok\n", path);
  return 0;
}

/* -w's value: a whole number from 1 to GW_MAX_WORKERS, digits only
 * (atoi took "2x" and wrapped 4294967298 to 2). Returns 0 if it is not. */
static int parse_workers(const char *s) {
  if (*s < '0' || *s > '9') return 0;
  char *end;
  errno = 0;
  unsigned long n = strtoul(s, &end, 10);
  if (*end != '\0' || errno != 0 || n < 1 || n > GW_MAX_WORKERS) return 0;
  return (int)n;
}

int main(int argc, char **argv) {
  const char *path = "./gateway.lua";
  int workers = 0, test = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((strcmp(a, "-c") == 0 || strcmp(a, "-w") == 0) && i + 1 >= argc) {
      fprintf(stderr, "gateway: %s needs a value\n", a);
      usage(stderr);
      return 1;
    }
    if (strcmp(a, "-c") == 0) {
      path = argv[++i];
    } else if (strcmp(a, "-w") == 0) {
      workers = parse_workers(argv[++i]);
      if (workers <= 0) {
        fprintf(stderr, "gateway: -w needs a whole number from 1 to %d (got '%s')\n", GW_MAX_WORKERS,
                argv[i]);
        return 1;
      }
    } else if (strcmp(a, "-t") == 0) {
      test = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      print_versions();
      return 0;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "gateway: unknown argument '%s'\n", a);
      usage(stderr);
      return 1;
    }
  }
  if (test) return check(path);
  return gw_master_run(path, workers);
}
