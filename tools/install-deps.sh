#!/bin/sh
# Installs the Debian packages the build, the tests and the benchmark need, and
# only those that are missing, so a second run installs nothing and asks nothing.
set -e
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# LuaJIT: either Debian's or OpenResty's branch (both ship luajit.pc).
pkg-config --exists luajit 2>/dev/null || need="$need libluajit2-5.1-dev"
# openssl: the command line makes the keys and signatures of the auth tests.
for p in libuv1-dev libssl-dev lua-cjson-dev libhiredis-dev node-llhttp pkg-config \
         make gcc curl python3 libcrypt-dev openssl; do
  have_pkg "$p" || need="$need $p"
done
command -v luajit >/dev/null 2>&1 || need="$need luajit2"   # runs the Lua unit tests
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"   # the gw.redis tests
[ -z "$need" ] && exit 0
echo "installing:$need"
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $need
