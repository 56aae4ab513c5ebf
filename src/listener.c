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

int gw_listener_open(uv_loop_t *loop, uv_tcp_t *handle, const gw_listen_t *addr,
                     uv_connection_cb cb) {
  struct sockaddr_storage ss;
  int rc = resolve(addr, &ss);
  if (rc) return rc;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0 ||
      bind(fd, (struct sockaddr *)&ss,
           ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) != 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  uv_tcp_init(loop, handle);
  if ((rc = uv_tcp_open(handle, fd)) != 0 || (rc = uv_listen((uv_stream_t *)handle, BACKLOG, cb)) != 0) {
    uv_close((uv_handle_t *)handle, NULL);
    return rc;
  }
  return 0;
}
