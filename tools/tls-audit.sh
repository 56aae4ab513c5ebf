#!/usr/bin/env bash
# tls-audit.sh: `make tls-audit`. Runs testssl.sh (Debian's package, installed
# here on first use) against a gateway TLS listener on 127.0.0.1 with a
# certificate made for the occasion (RSA 2048, signed by a throw-away CA),
# prints testssl's report, then a summary of its findings above INFO
# (severity LOW, MEDIUM, HIGH, CRITICAL) and its warnings (WARN: a check
# it could not complete) from its JSON output.
#
# Not part of `make test`: it takes minutes and needs the package. The
# gateway it starts is stopped by PID on exit; the scratch folder is removed.
#
#   GW_BIN=bin/gateway-asan bash tools/tls-audit.sh     # another binary
#   TLS_AUDIT_ARGS="--fast" bash tools/tls-audit.sh     # extra testssl options
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
GW_BIN=${GW_BIN:-$REPO/bin/gateway}
[ -x "$GW_BIN" ] || { echo "tls-audit: $GW_BIN not found (make first)" >&2; exit 1; }

if ! command -v testssl >/dev/null 2>&1; then
  echo "tls-audit: installing testssl.sh (Debian package)"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends testssl.sh
fi

DIR=$(mktemp -d /tmp/gw-tls-audit.XXXXXX)
GW_PID=
cleanup() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$DIR"
ossl() { openssl "$@" >/dev/null 2>&1; }
# Valid for a year, so that testssl judges the server rather than a short-lived test certificate.
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 400 -subj "/CN=tls-audit CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
ossl req -newkey rsa:2048 -nodes -keyout site.key -out site.csr -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >site.ext
ossl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out site.crt -days 365 -extfile site.ext
cat site.crt ca.pem >site.pem

# A free port: ask the kernel, then give it to the gateway.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >gateway.lua <<EOF
local gw = require "gateway"
gw.config {
  workers = 1,
  listen = { { addr = "127.0.0.1:$PORT", tls = { cert = "site.pem", key = "site.key" } } },
  access_log = false,
}
gw.get("/", function(req) return "tls-audit" end)
EOF
"$GW_BIN" -c "$DIR/gateway.lua" >gateway.out 2>&1 &
GW_PID=$!
n=0
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
  n=$((n + 1))
  if [ $n -gt 100 ] || ! kill -0 "$GW_PID" 2>/dev/null; then
    cat gateway.out >&2
    echo "tls-audit: the gateway did not start" >&2
    exit 1
  fi
  sleep 0.1
done 2>/dev/null

echo "tls-audit: $(testssl --version 2>/dev/null | grep -o 'testssl *[0-9.][^ ]*' | head -n 1) against $("$GW_BIN" -v | head -n 1) on 127.0.0.1:$PORT"
# --add-ca: the throw-away CA, so the chain of trust is judged like a real one.
# shellcheck disable=SC2086
testssl --quiet --color 0 --warnings off --add-ca "$DIR/ca.pem" --jsonfile "$DIR/report.json" \
  ${TLS_AUDIT_ARGS:-} "https://127.0.0.1:$PORT/" || true

echo
echo "== findings above INFO (testssl severity) and warnings, from report.json =="
python3 - "$DIR/report.json" <<'EOF'
import json, sys
try:
    items = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit("tls-audit: no JSON report: %s" % e)
order = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3, "WARN": 4}
found = sorted((order[i["severity"]], i["severity"], i["id"], i.get("finding", ""))
               for i in items if i.get("severity") in order)
for _, sev, ident, finding in found:
    print("%-8s %-28s %s" % (sev, ident, finding))
if not found:
    print("none")
counts = {}
for i in items:
    counts[i.get("severity", "?")] = counts.get(i.get("severity", "?"), 0) + 1
print("\nall results by severity: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
EOF
