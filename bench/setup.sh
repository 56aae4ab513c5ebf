#!/usr/bin/env bash
# setup.sh - install what the benchmark needs (Debian 12 packages only), and
# only what is missing: a second run installs nothing.  run.sh calls it with the
# groups its targets need.
#
#   setup.sh            base: nginx (the origins), wrk, curl, taskset, ps, timeout, awk
#   setup.sh --lua      + nginx's Lua module and its libraries (anchors b and c),
#                         then proves that content_by_lua_block runs with cjson and
#                         resty.core (a throw-away nginx on 127.0.0.1:9099)
#   setup.sh --haproxy  + HAProxy (anchor d)
#   setup.sh --all      all of the above
#
# apt-get needs root: run as root, or have sudo.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=$BENCH/.run

LUA=0 HAPROXY=0 QUIET=0
while (($#)); do
  case $1 in
    --lua) LUA=1 ;;
    --haproxy) HAPROXY=1 ;;
    --all) LUA=1; HAPROXY=1 ;;
    -q|--quiet) QUIET=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

PKGS=(
  nginx                      # 1.22.1: the origins (and anchors a, c)
  wrk                        # load generator
  curl                       # correctness checks
  util-linux                 # taskset
  procps                     # ps (process-tree CPU accounting)
  coreutils                  # timeout
  mawk                       # awk for the summaries
)
if ((LUA)); then
  PKGS+=(
    libnginx-mod-http-lua    # lua-nginx-module (content_by_lua_block, ...)
    libnginx-mod-http-ndk    # Nginx Development Kit, loaded before the Lua module
    libluajit2-5.1-2         # OpenResty's LuaJIT 2.1 branch (what OpenResty ships)
    lua-resty-core           # required by lua-nginx-module >= 0.10.16
    lua-resty-lrucache       # dependency of resty.core
    lua-cjson                # cjson for the aggregation anchor (LuaJIT loads the 5.1 .so)
  )
fi
((HAPROXY)) && PKGS+=(haproxy)   # 2.6, anchor (d)

SUDO=(); [[ $(id -u) == 0 ]] || SUDO=(sudo)
made_policy=0
selftest_pid=""
cleanup() {
  if [[ -n $selftest_pid ]]; then
    kill -TERM "$selftest_pid" 2>/dev/null || true
    wait "$selftest_pid" 2>/dev/null || true
    selftest_pid=""
  fi
  if ((made_policy)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; made_policy=0; fi
}
trap cleanup EXIT

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup.sh: installing: ${missing[*]}"
  # Debian's postinst scripts would start nginx and haproxy as services (nginx on
  # :80); a policy-rc.d that answers 101 stops that.  Docker-style images already
  # have one, which is then left untouched.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  cleanup
else
  ((QUIET)) || echo "setup.sh: all packages already installed (${PKGS[*]})"
fi

# ------------------------------------------------------- Lua self-test
# A throw-away nginx on 127.0.0.1:9099 with content_by_lua_block; stopped by PID.
if ((LUA)); then
  T=$RUN/selftest
  rm -rf "$T"; mkdir -p "$T/tmp"
  cat >"$T/nginx.conf" <<'EOF'
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
pid nginx.pid;
error_log error.log warn;
daemon off;
worker_processes 1;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    server {
        listen 127.0.0.1:9099;
        location = /selftest {
            default_type application/json;
            content_by_lua_block {
                local cjson = require "cjson"
                ngx.print(cjson.encode {
                    ok = true,
                    luajit = jit.version,
                    ngx_lua = ngx.config.ngx_lua_version,
                    resty_core = package.loaded["resty.core"] ~= nil,
                })
            }
        }
    }
}
EOF
  if (exec 3<>/dev/tcp/127.0.0.1/9099) 2>/dev/null; then
    echo "setup.sh: 127.0.0.1:9099 is in use; cannot run the Lua self-test" >&2; exit 1
  fi
  nginx -t -q -p "$T/" -c "$T/nginx.conf"
  nginx -p "$T/" -c "$T/nginx.conf" >"$T/stderr.log" 2>&1 &
  selftest_pid=$!
  body=""
  for ((i = 0; i < 50; i++)); do
    body=$(curl -s --max-time 2 http://127.0.0.1:9099/selftest) && [[ -n $body ]] && break
    sleep 0.1
  done
  cleanup
  if [[ $body == *'"ok":true'* && $body == *'"resty_core":true'* ]]; then
    echo "setup.sh: content_by_lua_block OK: $body"
  else
    echo "setup.sh: Lua self-test FAILED: '${body}'" >&2
    cat "$T/stderr.log" "$T/error.log" >&2 2>/dev/null || true
    exit 1
  fi
fi

if ((!QUIET)); then
  echo "setup.sh: versions"
  nginx -v 2>&1 | sed 's/^/  /'
  { wrk -v 2>&1 || true; } | head -n 1 | sed "s/^/  /"
  ((HAPROXY)) && { haproxy -v 2>&1 || true; } | head -n 1 | sed "s/^/  /"
  dpkg-query -W -f='  ${Package} ${Version}\n' "${PKGS[@]}" 2>/dev/null || true
fi
