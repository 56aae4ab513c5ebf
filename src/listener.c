/* listener.c: SO_REUSEPORT listening sockets (see listener.h). */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKLOG 4096

static int resolve(const gw_listen_t *addr, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(addr->host, addr->port, (struct sockaddr_in *)ss) == 0) return 0;
  if (uv_ip6_addr(addr->host, addr->port, (struct sockaddr_in6 *)ss) == 0) return 0;
  return UV_EINVAL;
}

int gw_listener_socket(const gw_listen_t *addr) {
  struct sockaddr_storage ss;
  int rc = resolve(addr, &ss);
  if (rc) return rc;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  socklen_t len = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0 ||
      bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, BACKLOG) != 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  return fd;
}

int gw_listener_adopt(uv_loop_t *loop, uv_tcp_t *handle, int fd, uv_connection_cb cb) {
  uv_tcp_init(loop, handle);
  int rc = uv_tcp_open(handle, fd);
  if (rc != 0) {
    close(fd);
    uv_close((uv_handle_t *)handle, NULL);
    return rc;
  }
  if ((rc = uv_listen((uv_stream_t *)handle, BACKLOG, cb)) != 0) {
    uv_close((uv_handle_t *)handle, NULL); /* closes fd */
    return rc;
  }
  return 0;
}

int gw_listener_open(uv_loop_t *loop, uv_tcp_t *handle, const gw_listen_t *addr, uv_connection_cb cb) {
  int fd = gw_listener_socket(addr);
  return fd < 0 ? fd : gw_listener_adopt(loop, handle, fd, cb);
}

/* ---- sockets inherited from the master (one worker process) ---- */

static gw_inherited_socket_t *inherited;
static size_t ninherited;

void gw_listener_inherit(gw_inherited_socket_t *s, size_t n) {
  inherited = s;
  ninherited = n;
}

int gw_listener_inherited_match(const gw_listen_t *addrs, size_t n) {
  if (ninherited == 0) return 1;
  if (n != ninherited) return 0;
  for (size_t i = 0; i < n; i++) {
    size_t k = 0;
    while (k < ninherited &&
           !(inherited[k].port == addrs[i].port && strcmp(inherited[k].host, addrs[i].host) == 0))
      k++;
    if (k == ninherited) return 0;
  }
  return 1;
}

int gw_listener_take(const char *host, int port) {
  for (size_t i = 0; i < ninherited; i++) {
    gw_inherited_socket_t *s = &inherited[i];
    if (s->fd >= 0 && s->port == port && strcmp(s->host, host) == 0) {
      int fd = s->fd;
      s->fd = -1;
      return fd;
    }
  }
  return -1;
}

void gw_listener_drop_untaken(void) {
  for (size_t i = 0; i < ninherited; i++) {
    if (inherited[i].fd >= 0) close(inherited[i].fd);
    inherited[i].fd = -1;
  }
}
