#!/usr/bin/env bash
# run.sh - the gateway's loopback benchmark (`make bench` runs it with no
# arguments).  See bench/README.md for what the figures mean.
#
# Default run: the nginx origin (`return 200` on :9001) against our gateway's
# hello route (gw-hello), and the gateway with 10 routes against 10,000 routes
# (gw-routes10, gw-routes10k).  Optional targets: the anchors (a) nginx proxy,
# (b) nginx+Lua, (c) nginx+Lua aggregation, (d) HAProxy, the gateway's later
# scenarios (proxy, lua, agg), A/A copies, and any NAME=URL.
#
# Method (kept from the project's anchor harness): every server is pinned to
# one core (SERVER_CPU, default 1) and wrk to the other (CLIENT_CPU, default 0);
# each server runs one worker; every target is checked with curl, warmed up,
# then timed ROUNDS times, targets interleaved and their order reversed every
# other round; medians are reported.  Each timed run also records the CPU time
# (user+sys, /proc) of the target's own process tree, divided by the requests
# it served: the "server CPU µs/req" figure, the steady one on a shared VM.
# Everything run.sh starts is stopped on exit, by PID.
# Output: bench/results/<UTC time>/{summary.md,runs.csv,checks.txt,...,raw/}.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
RUN=$BENCH/.run                       # scratch: nginx prefixes, server logs (git-ignored)
GW_BIN=${GW_BIN:-$REPO/bin/gateway}
SCENARIOS=$BENCH/gateway-scenarios.lua

# Defaults; each can also be set from the environment (BENCH_*), which is how
# `make bench` passes them:  BENCH_ROUNDS=7 make bench
DURATION=${BENCH_DURATION:-6}     # seconds per timed wrk run
ROUNDS=${BENCH_ROUNDS:-5}         # full rounds over all targets
WARMUP=${BENCH_WARMUP:-2}         # seconds of untimed wrk per target before round 1
CONNS=${BENCH_CONNS:-50}          # wrk connections
THREADS=${BENCH_THREADS:-1}       # wrk threads
PIN=${BENCH_PIN:-split}           # split: wrk on CLIENT_CPU, servers on SERVER_CPU; none
TARGETS=${BENCH_TARGETS:-}        # replaces the default target list
ADD=${BENCH_ADD:-}                # catalogue targets added to the list
ANCHORS=${BENCH_ANCHORS:-}        # letters among a,b,c,d (or "all")
AA=${BENCH_AA:-0}                 # 1: add the A/A copies
SETUP=${BENCH_SETUP:-1}           # 0: do not call setup.sh
OUT=${BENCH_OUT:-}
CLIENT_CPU=${CLIENT_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
REQ_TIMEOUT=5                     # wrk per-request timeout (s); slower ones count as errors
HEADERS=("x-api-key: bench-key-1")   # sent to every target (anchor (b) and gw-lua require it)
DEFAULT_TARGETS="origin,gw-hello,gw-routes10,gw-routes10k"
# Ratios printed when both targets ran (NUM:DEN); --pair adds more.
PAIRS="gw-hello:origin gw-routes10k:gw-routes10 aa-gw-routes10:gw-routes10"
PAIRS+=" gw-proxy:a-nginx-proxy gw-lua:b-nginx-lua gw-agg:c-nginx-lua-agg gw-jwt:gw-lua gw-ratelimit:gw-lua"
PAIRS+=" d-haproxy:a-nginx-proxy aa-copy-of-a:a-nginx-proxy gw-tls:nginx-tls gw-tls-new:nginx-tls-new"
ONLY=""
CHECK_ONLY=0
EXTRA=()         # NAME=URL[|Header: value...]
STARTS=()        # NAME=COMMAND

# ------------------------------------------------------------- catalogue
# Every target run.sh knows.  To add one:
#   - a gateway scenario: write it in gateway-scenarios.lua, then one gw_target
#     line here (name, scenario, port, path, description), and if it needs more
#     than "2xx" a case in gw_checks below;
#   - any other server: a cat_add line with a service nginx:CONF:PORT (conf/CONF.conf)
#     or haproxy:CONF:PORT (conf/CONF.cfg).
C_NAME=() C_URL=() C_SVC=() C_NEEDS=() C_DESC=() C_SCEN=() C_HDRS=()
cat_add() {  # name url service needs description [gateway scenario] [headers, '|'-separated]
  C_NAME+=("$1"); C_URL+=("$2"); C_SVC+=("$3"); C_NEEDS+=("$4"); C_DESC+=("$5"); C_SCEN+=("${6:-}")
  C_HDRS+=("${7:-}")
}
gw_target() {  # name scenario port path description [headers]
  cat_add "$1" "http://127.0.0.1:$3$4" "gw:$2:$3" "" "$5" "$2" "${6:-}"
}
gw_tls_target() {  # the same over https (the certificate run.sh makes in .run/tls)
  cat_add "$1" "https://127.0.0.1:$3$4" "gw:$2:$3" "" "$5" "$2" "${6:-}"
}
# The bench's HS256 token for gw-jwt (secret in gateway-scenarios.lua, exp 2100).
BENCH_JWT=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0.PowASq75y7tEXzV6oKY2HVWi_GzBdkyN4dAfnmfOHDM
cat_add   origin          http://127.0.0.1:9001/users/42     origin-users "" "origin: nginx return 200 (106-byte JSON), 1 worker, no proxy"
gw_target gw-hello        hello      8090 /users/42    'gateway: Lua route GET /users/:id answering "hello"'
gw_target gw-routes10     routes10   8091 /users/42    "gateway: hello route + 9 other routes"
gw_target gw-routes10k    routes10k  8092 /users/42    "gateway: hello route + 9,999 other routes"
gw_target gw-proxy        proxy      8093 /users/42    "gateway: proxy to the users origin (compare with a)"
gw_target gw-lua          lua        8094 /users/42    "gateway: x-api-key check in Lua, then proxy (compare with b)"
gw_target gw-agg          agg        8095 /dashboard/42 "gateway: 2 parallel upstream calls + JSON merge (compare with c)"
gw_target aa-gw-routes10  routes10   8096 /users/42    "A/A check: a second gw-routes10 process"
gw_target gw-jwt          jwt        8097 /users/42    "gateway: HS256 JWT check, then proxy (compare with gw-lua)" "Authorization: Bearer $BENCH_JWT"
gw_target gw-ratelimit    ratelimit  8098 /users/42    "gateway: local rate limit (GCRA in a shared dict), then proxy (compare with gw-lua)"
gw_tls_target gw-tls      tls        8099 /users/42    'gateway: hello route over TLS, keep-alive (compare with nginx-tls)'
gw_tls_target gw-tls-new  tlsfull    8100 /users/42    'gateway: hello over TLS, a new connection and full handshake per request, no resumption (compare with nginx-tls-new)' "Connection: close"
cat_add nginx-tls       https://127.0.0.1:8443/users/42    nginx:anchor-tls-nginx:8443     ""      "nginx: return 200 hello over TLS (same certificate), keep-alive"
cat_add nginx-tls-new   https://127.0.0.1:8445/users/42    nginx:anchor-tls-nginx-new:8445 ""      "nginx: the same, a new connection and full handshake per request (ssl_session_tickets off)" "" "Connection: close"
cat_add a-nginx-proxy   http://127.0.0.1:8001/users/42     nginx:anchor-a-nginx-proxy:8001 ""      "(a) nginx proxy_pass + keepalive pool"
cat_add b-nginx-lua     http://127.0.0.1:8002/users/42     nginx:anchor-b-nginx-lua:8002   lua     "(b) nginx+Lua key check + route, proxy_pass"
cat_add c-nginx-lua-agg http://127.0.0.1:8003/dashboard/42 nginx:anchor-c-nginx-agg:8003   lua     "(c) nginx+Lua 2 parallel subrequests + cjson merge"
cat_add d-haproxy       http://127.0.0.1:8004/users/42     haproxy:anchor-d-haproxy:8004   haproxy "(d) HAProxy 1 thread, http-reuse always"
cat_add aa-copy-of-a    http://127.0.0.1:8005/users/42     nginx:aa-copy-of-a:8005         ""      "A/A check: identical copy of (a) on :8005"

usage() {
  cat <<EOF
usage: bench/run.sh [options] [NAME=URL[|Header: value]...]

Default targets: ${DEFAULT_TARGETS//,/, }.
Known targets (add with --add, or pick with --targets):
$(for i in "${!C_NAME[@]}"; do printf '  %-16s %s\n' "${C_NAME[i]}" "${C_DESC[i]}"; done)
A NAME=URL argument adds a target that run.sh does not start (http or https,
loopback only; an https certificate is not checked);
text after '|' is an extra header for that target (repeatable with '|').

options (environment variable in brackets)
  -r N           rounds (default 5) [BENCH_ROUNDS]
  -d SEC         duration of each timed run (default 6) [BENCH_DURATION]
  -w SEC         warm-up per target before the first round (default 2) [BENCH_WARMUP]
  -c N           wrk connections (default 50) [BENCH_CONNS]
  -t N           wrk threads (default 1) [BENCH_THREADS]
  --anchors L    add anchors: letters among a,b,c,d, or all [BENCH_ANCHORS]
                 (b and c install nginx's Lua module, d HAProxy, on first use)
  --add LIST     add catalogue targets, comma-separated [BENCH_ADD]
  --targets LIST run exactly these targets instead of the default [BENCH_TARGETS]
  --aa           add the A/A copies: aa-gw-routes10 (a second gw-routes10),
                 and aa-copy-of-a when (a) runs; their ratios show the noise
                 floor of this run [BENCH_AA=1]
  --pair A:B     also print the ratio of target A to target B
  -H 'K: V'      add a header to every request of every target
  -s NAME=CMD    start CMD (pinned like the servers) for the extra target NAME;
                 CMD must stay in the foreground; its process tree's CPU is
                 charged to NAME; it is stopped by PID at the end
  --only LIST    of the selected targets, run only these (origins start unless
                 every selected target is one that never calls them)
  --pin MODE     split (default): wrk on cpu $CLIENT_CPU, servers on cpu $SERVER_CPU
                 (env CLIENT_CPU, SERVER_CPU); none: no pinning [BENCH_PIN]
  --out DIR      where raw logs and summary.md go (default bench/results/<UTC time>)
  --no-setup     do not call setup.sh [BENCH_SETUP=0]
  --check        start, run the curl checks, stop; no timing
The gateway binary is \$GW_BIN (default bin/gateway; build it with make).
examples
  make bench                                   # the default run, about 2.5 minutes
  BENCH_ROUNDS=9 BENCH_DURATION=10 make bench  # steadier medians
  bench/run.sh --anchors abcd -r 5             # with nginx, nginx+Lua, HAProxy
  bench/run.sh --add gw-proxy,gw-lua,gw-agg --anchors abc
  bench/run.sh --targets gw-routes10,gw-routes10k --aa -r 7
EOF
}

while (($#)); do
  case $1 in
    -d) DURATION=$2; shift 2 ;;
    -c) CONNS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    -H) HEADERS+=("$2"); shift 2 ;;
    -s|--start) STARTS+=("$2"); shift 2 ;;
    --anchors) ANCHORS=$2; shift 2 ;;
    --add) ADD=${ADD:+$ADD,}$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --aa) AA=1; shift ;;
    --pair) PAIRS+=" $2"; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --pin) PIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *=*) EXTRA+=("$1"); shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
T_START=$(date +%s)

for n in "$DURATION" "$CONNS" "$THREADS" "$ROUNDS" "$WARMUP"; do
  [[ $n =~ ^[0-9]+$ ]] || die "numeric option expected, got '$n'"
done
((DURATION > 0 && ROUNDS > 0 && CONNS >= THREADS)) || die "bad -d/-r/-c/-t"

case $PIN in
  split) CLIENT_PIN=(taskset -c "$CLIENT_CPU"); SERVER_PIN=(taskset -c "$SERVER_CPU") ;;
  none)  CLIENT_PIN=(); SERVER_PIN=() ;;
  *) die "--pin must be split or none" ;;
esac

# ------------------------------------------------------------- selection
cat_index() {  # name -> index in the catalogue, or fail
  local i
  for i in "${!C_NAME[@]}"; do [[ ${C_NAME[i]} == "$1" ]] && { echo "$i"; return 0; }; done
  return 1
}
WANT=()
want() {  # add catalogue names (comma/space separated), keeping order, once each
  local n w
  for n in ${1//,/ }; do
    cat_index "$n" >/dev/null || die "unknown target '$n' (run.sh -h lists them)"
    for w in "${WANT[@]}"; do [[ $w == "$n" ]] && continue 2; done
    WANT+=("$n")
  done
}
want "${TARGETS:-$DEFAULT_TARGETS}"
[[ -n $ADD ]] && want "$ADD"
if [[ -n $ANCHORS ]]; then
  [[ $ANCHORS == all ]] && ANCHORS=abcd
  [[ ${ANCHORS//[abcd, ]/} == "" ]] || die "--anchors takes letters among a,b,c,d (or all), got '$ANCHORS'"
  [[ $ANCHORS == *a* ]] && want a-nginx-proxy
  [[ $ANCHORS == *b* ]] && want b-nginx-lua
  [[ $ANCHORS == *c* ]] && want c-nginx-lua-agg
  [[ $ANCHORS == *d* ]] && want d-haproxy
fi
if [[ $AA == 1 ]]; then
  for w in "${WANT[@]}"; do
    [[ $w == gw-routes10 ]] && want aa-gw-routes10
    [[ $w == a-nginx-proxy ]] && want aa-copy-of-a
  done
fi

# Selected targets: T_* arrays.  T_SVC is the service whose process tree's CPU
# is charged to the target ("" for a NAME=URL target that run.sh did not start).
T_NAME=() T_URL=() T_HDRS=() T_SVC=() T_DESC=() T_SCEN=() T_NEEDS=()
add_target() {  # name url svc desc scenario needs [per-target headers, '|'-separated]
  T_NAME+=("$1"); T_URL+=("$2"); T_SVC+=("$3"); T_DESC+=("$4"); T_SCEN+=("$5"); T_NEEDS+=("$6"); T_HDRS+=("${7:-}")
}
selected_by_only() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
for w in "${WANT[@]}"; do
  selected_by_only "$w" || continue
  i=$(cat_index "$w")
  svc=${C_SVC[i]}; [[ $svc == origin-users ]] || svc=$w
  add_target "$w" "${C_URL[i]}" "$svc" "${C_DESC[i]}" "${C_SCEN[i]}" "${C_NEEDS[i]}" "${C_HDRS[i]}"
done

declare -A START_CMD=()
for s in "${STARTS[@]}"; do
  [[ $s == *=* ]] || die "-s expects NAME=COMMAND, got '$s'"
  START_CMD[${s%%=*}]=${s#*=}
done
for e in "${EXTRA[@]}"; do
  name=${e%%=*}; rest=${e#*=}; url=${rest%%|*}; hdrs=""
  [[ $rest == *"|"* ]] && hdrs=${rest#*|}
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad target name '$name'"
  cat_index "$name" >/dev/null && die "extra target $name: that name is in the catalogue"
  [[ $url =~ ^https?://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?(/|$) ]] \
    || die "target $name: only http:// or https:// on loopback is allowed ($url)"
  selected_by_only "$name" || continue
  svc=""; [[ -n ${START_CMD[$name]+x} ]] && svc=start-$name
  add_target "$name" "$url" "$svc" "extra target" "" "" "$hdrs"
done
for s in "${!START_CMD[@]}"; do
  printf '%s\n' "${EXTRA[@]%%=*}" | grep -qx -- "$s" || die "-s $s=...: no NAME=URL target named $s"
done
((${#T_NAME[@]})) || die "no target selected"
is_selected() { printf '%s\n' "${T_NAME[@]}" | grep -qx -- "$1"; }

# ------------------------------------------------------------------ setup
NEED_LUA=0 NEED_HAPROXY=0 NEED_GW=0
for i in "${!T_NAME[@]}"; do
  [[ ${T_NEEDS[i]} == lua ]] && NEED_LUA=1
  [[ ${T_NEEDS[i]} == haproxy ]] && NEED_HAPROXY=1
  [[ -n ${T_SCEN[i]} ]] && NEED_GW=1
done
if [[ $SETUP != 0 ]]; then
  sargs=(-q); ((NEED_LUA)) && sargs+=(--lua); ((NEED_HAPROXY)) && sargs+=(--haproxy)
  bash "$BENCH/setup.sh" "${sargs[@]}" || die "setup.sh failed"
fi
tools=(nginx wrk curl taskset timeout ps awk dd)
((NEED_HAPROXY)) && tools+=(haproxy)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool not found: run bench/setup.sh first"
done
if ((NEED_GW)); then
  [[ -x $GW_BIN ]] || die "$GW_BIN not found: build it first (make)"
fi

[[ -n $OUT ]] || OUT=$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)

# --------------------------------------------------------------- services
SVC_NAME=() SVC_PID=()
declare -A SVC_OF=()   # service name -> pid

cleanup() {
  local i pid st k n
  local -a kids=()
  for ((i = ${#SVC_PID[@]} - 1; i >= 0; i--)); do
    pid=${SVC_PID[i]}
    kill -0 "$pid" 2>/dev/null || continue
    kids+=($(ps -o pid= --ppid "$pid" 2>/dev/null || true))
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SVC_PID[@]}"; do
    for ((n = 0; n < 50; n++)); do
      st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || st=""
      [[ -z $st || $st == Z ]] && break
      sleep 0.1
    done
    if [[ -n $st && $st != Z ]]; then
      log "pid $pid did not stop on TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  for k in "${kids[@]}"; do   # e.g. a worker whose master was killed
    st=$(sed 's/.*) //' "/proc/$k/stat" 2>/dev/null | cut -d' ' -f1) || st=""
    [[ -n $st && $st != Z ]] && kill -KILL "$k" 2>/dev/null || true
  done
  SVC_PID=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_svc() {  # name port(or "") command...
  local name=$1 port=$2; shift 2
  [[ -n $port ]] && port_in_use "$port" && \
    die "127.0.0.1:$port is already in use (not started by this run); stop it first"
  "${SERVER_PIN[@]}" "$@" >"$RUN/$name.out" 2>&1 &
  local pid=$!
  SVC_NAME+=("$name"); SVC_PID+=("$pid"); SVC_OF[$name]=$pid
  [[ -z $port ]] && return 0
  local n
  for ((n = 0; n < 150; n++)); do
    port_in_use "$port" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$RUN/$name.out" >&2 || true
  die "$name did not start listening on 127.0.0.1:$port (log: $RUN/$name.out)"
}

start_nginx() {  # service-name conf-name port
  local name=$1 conf=$2 port=$3
  rm -rf "${RUN:?}/$name"; mkdir -p "$RUN/$name/tmp"
  nginx -t -q -p "$RUN/$name/" -c "$BENCH/conf/$conf.conf" \
    || die "nginx -t failed for conf/$conf.conf"
  start_svc "$name" "$port" nginx -p "$RUN/$name/" -c "$BENCH/conf/$conf.conf"
}

mkdir -p "$RUN"
# The TLS targets' certificate and key (ECDSA P-256, self-signed for
# 127.0.0.1), made afresh by each run; nginx-tls.inc and the gateway's tls
# scenario read them from here.
TLS_DIR=$RUN/tls
if printf '%s\n' "${T_URL[@]}" | grep -q '^https://'; then
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$TLS_DIR/bench.key" -out "$TLS_DIR/bench.pem" -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" >"$RUN/tls-cert.out" 2>&1 || die "openssl could not make the TLS certificate"
fi
log "starting servers (pin=$PIN${SERVER_PIN[*]:+: ${SERVER_PIN[*]}})"
# The origins, unless no selected target calls them (the hello, routes and
# TLS targets answer by themselves): a TLS-only run then needs no port 900x.
NEED_ORIGINS=0
for i in "${!T_NAME[@]}"; do
  case ${T_NAME[i]} in
    gw-hello|gw-routes*|aa-gw-routes*|gw-tls|gw-tls-new|nginx-tls|nginx-tls-new) ;;
    *) NEED_ORIGINS=1 ;;
  esac
done
if ((NEED_ORIGINS)); then
  start_nginx origin-users origin-users 9001
  start_nginx origin-orders origin-orders 9002
fi
for i in "${!T_NAME[@]}"; do
  name=${T_NAME[i]}; svc=${T_SVC[i]}
  [[ -z $svc || $svc == origin-users ]] && continue
  if [[ $svc == start-* ]]; then
    log "starting $name: ${START_CMD[$name]}"
    start_svc "$svc" "" bash -c "exec ${START_CMD[$name]}"
    continue
  fi
  spec=${C_SVC[$(cat_index "$name")]}
  IFS=: read -r kind what port <<<"$spec"
  case $kind in
    nginx) start_nginx "$svc" "$what" "$port" ;;
    haproxy)
      haproxy -c -q -f "$BENCH/conf/$what.cfg" || die "haproxy -c failed for conf/$what.cfg"
      start_svc "$svc" "$port" haproxy -db -f "$BENCH/conf/$what.cfg" ;;
    gw)
      start_svc "$svc" "$port" env GW_BENCH_SCENARIO="$what" GW_BENCH_PORT="$port" GW_BENCH_TLS_DIR="$TLS_DIR" \
        "$GW_BIN" -w 1 -c "$SCENARIOS" ;;
    *) die "catalogue: bad service '$spec' for $name" ;;
  esac
done

# ------------------------------------------------------------------ checks
USERS42='{"id":42,"name":"user-42","email":"user-42@example.com","plan":"pro","active":true,"created":"2024-01-01"}'
ORDERS42='{"user":42,"orders":[{"id":"o-42-1","total":19.99},{"id":"o-42-2","total":5.25}],"count":2}'
AGG42='has:"user":{;"id":42;"name":"user-42";"order_count":2;"orders":[;"id":"o-42-1";"id":"o-42-2";"total":19.99'
CHECK_FAILS=0
CHECKS=$OUT/checks.txt; : >"$CHECKS"

# check LABEL URL STATUS BODY-MODE(exact:TEXT | has:A;B;... | any) [curl args...]
check() {
  local label=$1 url=$2 want=$3 mode=$4; shift 4
  local body code ok=1 part
  body=$(curl -sS --max-time 5 -o - -w '\n%{http_code}' "$@" "$url" 2>&1) || true
  code=${body##*$'\n'}; body=${body%$'\n'*}
  if [[ $want == 2xx ]]; then [[ $code == 2?? ]] || ok=0
  else [[ $code == "$want" ]] || ok=0; fi
  case $mode in
    exact:*) [[ $body == "${mode#exact:}" ]] || ok=0 ;;
    has:*)   IFS=';' read -ra parts <<<"${mode#has:}"
             for part in "${parts[@]}"; do [[ $body == *"$part"* ]] || ok=0; done ;;
  esac
  local line
  line=$(printf '%-4s %-44s %s  %s' "$( ((ok)) && echo PASS || echo FAIL)" "$label" "$code" "${body:0:160}")
  echo "$line" | tee -a "$CHECKS" >&2
  ((ok)) || CHECK_FAILS=$((CHECK_FAILS + 1))
}

# The filler routes of scenario routesN (see gateway-scenarios.lua): route k
# has shape ((k-1) % 8) + 1 in service j = (k-1) / 8 + 1.  The last one
# (k = N-1) must answer its own pattern; the next service must be a 404.
ROUTE_SHAPES=("GET /svc%d/static /svc%d/static" "GET /svc%d/items/:id /svc%d/items/7"
  "POST /svc%d/items /svc%d/items" "GET /svc%d/items/:id/reviews/:rid /svc%d/items/7/reviews/9"
  "GET /api/v1/svc%d/status /api/v1/svc%d/status" "GET /svc%d/files/*path /svc%d/files/a/b"
  "DELETE /svc%d/items/:id /svc%d/items/7" "GET /svc%d /svc%d")
gw_checks() {  # name base-url scenario
  local name=$1 base=$2 scen=$3 n k j method pat path
  local key=(-H "x-api-key: bench-key-1")
  case $scen in
    hello)
      check "$name /users/42"          "$base/users/42" 200 "exact:hello"
      check "$name unknown path"       "$base/nope" 404 any ;;
    routes*)
      n=${scen#routes}; [[ $n == *k ]] && n=$((${n%k} * 1000))
      check "$name /users/42"          "$base/users/42" 200 "exact:hello"
      if ((n >= 2)); then
        k=$((n - 1)); j=$(((k - 1) / 8 + 1))
        read -r method pat path <<<"${ROUTE_SHAPES[(k - 1) % 8]}"
        pat=${pat//%d/$j}; path=${path//%d/$j}
        check "$name last route $method $pat" "$base$path" 200 "exact:$pat" -X "$method"
        check "$name /svc$((j + 1))/static (none)" "$base/svc$((j + 1))/static" 404 any
      fi ;;
    proxy)
      check "$name /users/42"          "$base/users/42" 200 "exact:$USERS42"
      check "$name unknown path"       "$base/nope" 404 any ;;
    lua)
      check "$name /users/42 + key"    "$base/users/42" 200 "exact:$USERS42" "${key[@]}"
      check "$name /orders?user=42 + key" "$base/orders?user=42" 200 "exact:$ORDERS42" "${key[@]}"
      check "$name no key -> 401"      "$base/users/42" 401 any
      check "$name wrong key -> 401"   "$base/users/42" 401 any -H "x-api-key: nope" ;;
    agg)
      check "$name /dashboard/42"      "$base/dashboard/42" 200 "$AGG42" ;;
    jwt)
      check "$name /users/42 + token"  "$base/users/42" 200 "exact:$USERS42" -H "Authorization: Bearer $BENCH_JWT"
      check "$name no token -> 401"    "$base/users/42" 401 any
      check "$name bad token -> 401"   "$base/users/42" 401 any -H "Authorization: Bearer ${BENCH_JWT}x" ;;
    ratelimit)
      check "$name /users/42"          "$base/users/42" 200 "exact:$USERS42" ;;
    tls|tlsfull)
      tls_checks "$name" "$base" ;;
    *)
      check "$name ${T_URL[i]}"        "${T_URL[i]}" 2xx any "${key[@]}" ;;
  esac
}

# TLS targets: the answer over a verified TLS connection (the run's own
# certificate), with the per-target headers (Connection: close for *-new).
tls_checks() {  # name base-url
  local hargs=() th h
  if [[ -n ${T_HDRS[i]} ]]; then
    IFS='|' read -ra th <<<"${T_HDRS[i]}"; for h in "${th[@]}"; do hargs+=(-H "$h"); done
  fi
  check "$1 /users/42 (TLS)"       "$2/users/42" 200 "exact:hello" --cacert "$TLS_DIR/bench.pem" "${hargs[@]}"
}

KEY=(-H "x-api-key: bench-key-1")
log "checking status and body of every target"
for i in "${!T_NAME[@]}"; do
  name=${T_NAME[i]}
  if [[ -n ${T_SCEN[i]} ]]; then
    base=${T_URL[i]#*://}; base=${T_URL[i]%%://*}://${base%%/*}
    gw_checks "$name" "$base" "${T_SCEN[i]}"
    continue
  fi
  case $name in
    origin)
      check "origin users /users/42"        http://127.0.0.1:9001/users/42 200 "exact:$USERS42"
      check "origin orders /orders?user=42" "http://127.0.0.1:9002/orders?user=42" 200 "exact:$ORDERS42"
      check "origin unknown path"           http://127.0.0.1:9001/nope 404 any ;;
    a-nginx-proxy|d-haproxy|aa-copy-of-a)
      p=${T_URL[i]#http://127.0.0.1:}; p=${p%%/*}
      check "$name /users/42"        "http://127.0.0.1:$p/users/42" 200 "exact:$USERS42"
      check "$name /orders?user=42"  "http://127.0.0.1:$p/orders?user=42" 200 "exact:$ORDERS42"
      check "$name unknown path"     "http://127.0.0.1:$p/nope" 404 any ;;
    b-nginx-lua)
      check "b-nginx-lua /users/42 + key"       http://127.0.0.1:8002/users/42 200 "exact:$USERS42" "${KEY[@]}"
      check "b-nginx-lua /orders?user=42 + key" "http://127.0.0.1:8002/orders?user=42" 200 "exact:$ORDERS42" "${KEY[@]}"
      check "b-nginx-lua no key -> 401"         http://127.0.0.1:8002/users/42 401 'exact:{"error":"unauthorized"}'
      check "b-nginx-lua wrong key -> 401"      http://127.0.0.1:8002/users/42 401 any -H "x-api-key: nope"
      check "b-nginx-lua unknown path -> 404"   http://127.0.0.1:8002/nope 404 any "${KEY[@]}" ;;
    nginx-tls|nginx-tls-new)
      base=${T_URL[i]%/users/42}
      tls_checks "$name" "$base" ;;
    c-nginx-lua-agg)
      check "c-nginx-lua-agg /dashboard/42"     http://127.0.0.1:8003/dashboard/42 200 "$AGG42"
      check "c-nginx-lua-agg /dashboard/x -> 404" http://127.0.0.1:8003/dashboard/x 404 any ;;
    *)  # NAME=URL target: wait up to 15 s for it to answer, then expect 2xx
      hargs=()
      for h in "${HEADERS[@]}"; do hargs+=(-H "$h"); done
      if [[ -n ${T_HDRS[i]} ]]; then
        IFS='|' read -ra th <<<"${T_HDRS[i]}"; for h in "${th[@]}"; do hargs+=(-H "$h"); done
      fi
      # An https one is the user's own server: its certificate is not checked.
      [[ ${T_URL[i]} == https://* ]] && hargs+=(--insecure)
      spid=${SVC_OF[start-$name]:-}
      for ((n = 0; n < 150; n++)); do
        curl -s -o /dev/null --max-time 1 "${hargs[@]}" "${T_URL[i]}" && break
        if [[ -n $spid ]] && ! kill -0 "$spid" 2>/dev/null; then
          tail -n 20 "$RUN/start-$name.out" >&2 || true
          die "the command started for $name exited"
        fi
        sleep 0.1
      done
      check "$name ${T_URL[i]}" "${T_URL[i]}" 2xx any "${hargs[@]}" ;;
  esac
done
((CHECK_FAILS == 0)) || die "$CHECK_FAILS check(s) failed (see $CHECKS); not timing broken targets"
log "all checks passed"

{  # versions, as run
  echo "gateway: $("$GW_BIN" -v 2>&1 | head -n 1 || true) ($GW_BIN)"
  if git -C "$REPO" rev-parse --short HEAD >/dev/null 2>&1; then
    echo "repository: $(git -C "$REPO" rev-parse --short HEAD)$([[ -z $(git -C "$REPO" status --porcelain -- src lua Makefile 2>/dev/null) ]] || echo ' + uncommitted changes in src/, lua/ or Makefile')"
  fi
  "$GW_BIN" -v 2>&1 | tail -n +2 || true
  nginx -v 2>&1
  { wrk -v 2>&1 || true; } | head -n 1
  ((NEED_HAPROXY)) && { haproxy -v 2>&1 || true; } | head -n 1
  if is_selected b-nginx-lua; then
    echo "inside anchor (b): $(curl -s --max-time 2 http://127.0.0.1:8002/_bench/version)"
  fi
  dpkg-query -W -f='${Package} ${Version}\n' nginx libnginx-mod-http-lua libnginx-mod-http-ndk \
    libluajit2-5.1-2 lua-resty-core lua-resty-lrucache lua-cjson haproxy wrk curl 2>/dev/null || true
  echo "kernel $(uname -r), $(nproc) cpus: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
} >"$OUT/versions.txt"
((CHECK_ONLY)) && exit 0

# ------------------------------------------------------------ measurement
CLK_TCK=$(getconf CLK_TCK)

# CPU ticks (user+system, /proc/PID/stat) of each service's process tree:
# prints "service ticks system-ticks" for every service run.sh started, from
# one ps call (system-ticks: the kernel's part of ticks).
snap_ticks() {
  local k roots=""
  for k in "${!SVC_NAME[@]}"; do roots+=" ${SVC_NAME[k]}=${SVC_PID[k]}"; done
  ps -e -o pid=,ppid= | awk -v roots="$roots" '
    { kids[$2] = kids[$2] " " $1 }
    function ticks(p,   f, a, k, n, i, t) {
      f = "/proc/" p "/stat"; t = 0
      if ((getline line < f) > 0) { sub(/.*\) /, "", line); split(line, a, " "); t = a[12] + a[13]; sys += a[13] }
      close(f)
      n = split(kids[p], k, " ")
      for (i = 1; i <= n; i++) t += ticks(k[i])
      return t
    }
    END { n = split(roots, r, " "); for (i = 1; i <= n; i++) { split(r[i], nv, "="); sys = 0; t = ticks(nv[2]); print nv[1], t, sys } }'
}
# Per cpu: name, busy, total, steal, and time spent running tasks (user+nice+system).
cpu_snapshot() { awk '/^cpu[0-9]+ /{ busy = $2+$3+$4+$7+$8+$9; tot = busy+$5+$6; printf "%s %d %d %d %d\n", $1, busy, tot, $9, $2+$3+$4 }' /proc/stat; }
# Requests served so far by the origin on port $1 (nginx stub_status counter;
# it counts the status request itself).
stub_count() {
  ((NEED_ORIGINS)) || { echo 0; return; }
  local c
  c=$(curl -s --max-time 2 "http://127.0.0.1:$1/_bench/status" | awk 'NR == 3 { print $3 }')
  echo "${c:-0}"
}

# Children's CPU time of this shell in ticks, from two outputs of bash's
# `times` (second line) taken around wrk: wrk's own CPU time.  (`times` must
# run in this shell, not in $(...), whose children times start at zero.)
child_ticks() {  # file-before file-after
  awk -v hz="$CLK_TCK" 'FNR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    if (NR == FNR) b = t; else e = t } END { printf "%.0f", (e - b) * hz }' "$1" "$2"
}
# Ticks used between two snap_ticks files: by service $3, or by all (no $3);
# column $4 (default 2: all ticks; 3: the kernel's).
tick_delta() {  # file-before file-after [service] [column]
  awk -v s="${3:-}" -v c="${4:-2}" 'NR == FNR { b[$1] = $c; next } ($1 in b) && (s == "" || $1 == s) { t += $c - b[$1]; f = 1 }
    END { if (f) print t + 0 }' "$1" "$2"
}
# Percent of cpu $3's time used by tasks other than ours ($4 ticks of ours).
foreign_pct() {
  awk -v c="$3" -v ours="$4" 'NR==FNR { if ($1==c) { b=$5; t=$3 } next } $1==c { x = 100*($5-b-ours)/(($3-t) ? ($3-t) : 1); printf "%.0f", (x < 0 ? 0 : x) }' \
    <(echo "$1") <(echo "$2")
}

# Cost of one syscall (us), from a 1-byte read/write loop on the server cpu:
# a drift gauge for this VM, whose syscalls are slow and vary with the host.
syscall_cost() {
  local s e
  s=$(date +%s%N)
  "${SERVER_PIN[@]}" dd if=/dev/zero of=/dev/null bs=1 count=200000 status=none
  e=$(date +%s%N)
  awk -v ns=$((e - s)) 'BEGIN { printf "%.3f", ns / 1000 / 400000 }'
}
cpu_busy() {  # before after cpuN [4 = steal, 5 = tasks] -> percent of the cpu's time
  awk -v c="$3" -v f="${4:-2}" 'NR==FNR { if ($1==c) { b=$f; t=$3 } next } $1==c { printf "%.0f", 100*($f-b)/(($3-t) ? ($3-t) : 1) }' \
    <(echo "$1") <(echo "$2")
}

wrk_cmd() {  # index duration -> fills WRK array
  local i=$1 d=$2 h
  WRK=("${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${d}s" --timeout "${REQ_TIMEOUT}s" --latency -s "$BENCH/wrk-report.lua")
  for h in "${HEADERS[@]}"; do WRK+=(-H "$h"); done
  if [[ -n ${T_HDRS[i]} ]]; then
    IFS='|' read -ra th <<<"${T_HDRS[i]}"; for h in "${th[@]}"; do WRK+=(-H "$h"); done
  fi
  WRK+=("${T_URL[i]}")
}

SEL=("${!T_NAME[@]}")
{
  echo "# $(date -u +%FT%TZ) bench/run.sh pin=$PIN: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds, warm-up ${WARMUP}s"
  for i in "${SEL[@]}"; do wrk_cmd "$i" "$DURATION"; echo "${T_NAME[i]}: $(printf '%q ' "${WRK[@]}")"; done
  echo "# servers"
  for k in "${!SVC_NAME[@]}"; do
    echo "${SVC_NAME[k]} (pid ${SVC_PID[k]}): $(tr '\0' ' ' <"/proc/${SVC_PID[k]}/cmdline" 2>/dev/null)"
  done
} >"$OUT/commands.txt"

est=$(( ${#SEL[@]} * (WARMUP + ROUNDS * (DURATION + 1)) ))
log "${#SEL[@]} targets: ${T_NAME[*]}; $ROUNDS rounds x ${DURATION}s (about $((est / 60))m$((est % 60))s more)"
if ((WARMUP > 0)); then
  log "warm-up: ${WARMUP}s per target"
  for i in "${SEL[@]}"; do
    wrk_cmd "$i" "$WARMUP"
    timeout $((WARMUP + 30)) "${WRK[@]}" >"$OUT/raw/warmup-${T_NAME[i]}.txt" 2>&1 \
      || log "warm-up of ${T_NAME[i]} exited non-zero"
  done
fi

CSV=$OUT/runs.csv
echo "round,pos,target,rps,p50_us,p90_us,p99_us,max_us,requests,non2xx,sock_errors,cpu${CLIENT_CPU}_busy,cpu${SERVER_CPU}_busy,steal_pct,cpu_us_per_req,served,origin_us_per_req,syscall_us,origin_calls_per_req,origin_us_per_call,other_cpu${CLIENT_CPU}_pct,other_cpu${SERVER_CPU}_pct" >"$CSV"

for ((r = 1; r <= ROUNDS; r++)); do
  order=("${SEL[@]}")
  if ((r % 2 == 0)); then  # reverse every other round
    order=(); for ((k = ${#SEL[@]} - 1; k >= 0; k--)); do order+=("${SEL[k]}"); done
  fi
  pos=0
  for i in "${order[@]}"; do
    pos=$((pos + 1)); name=${T_NAME[i]}
    raw=$OUT/raw/$name-r$r.txt
    wrk_cmd "$i" "$DURATION"
    svc=${T_SVC[i]}
    sys_us=$(syscall_cost)
    qu0=$(stub_count 9001); qo0=$(stub_count 9002)
    snap_ticks >"$RUN/ticks0"; c0=$(cpu_snapshot); times >"$RUN/times0"
    echo "\$ $(printf '%q ' "${WRK[@]}")" >"$raw"
    timeout $((DURATION + 30)) "${WRK[@]}" >>"$raw" 2>&1 || log "wrk for $name exited non-zero (see $raw)"
    times >"$RUN/times1"; c1=$(cpu_snapshot); snap_ticks >"$RUN/ticks1"
    qu1=$(stub_count 9001); qo1=$(stub_count 9002)
    T0=$RUN/ticks0 T1=$RUN/ticks1
    st=""; kt=""; [[ -n $svc ]] && { st=$(tick_delta "$T0" "$T1" "$svc"); kt=$(tick_delta "$T0" "$T1" "$svc" 3); }
    ou=$(tick_delta "$T0" "$T1" origin-users); oo=$(tick_delta "$T0" "$T1" origin-orders)
    ot=$(( ${ou:-0} + ${oo:-0} ))   # empty when no origin runs (a TLS-only run)
    ours=$(tick_delta "$T0" "$T1"); wrk_ticks=$(child_ticks "$RUN/times0" "$RUN/times1")
    line=$(grep '^BENCH ' "$raw" || true)
    if [[ -z $line ]]; then
      log "no result from wrk for $name round $r"; continue
    fi
    declare -A m=()
    for kv in ${line#BENCH }; do m[${kv%%=*}]=${kv#*=}; done
    reqs=${m[requests]}
    calls=0
    ((NEED_ORIGINS)) && calls=$((qu1 - qu0 - 1 + qo1 - qo0 - 1))   # minus the status request counted in each q1
    # The target's own CPU per request it served: the origin's served count is
    # its stub_status delta; every other target's is the count wrk completed.
    served=$reqs; [[ ${T_SVC[i]} == origin-users ]] && served=$((qu1 - qu0 - 1))
    cpu_us=""; kern_us=""
    [[ -n $st ]] && cpu_us=$(awk -v t="$st" -v hz="$CLK_TCK" -v n="$served" 'BEGIN { printf "%.2f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    [[ -n $kt ]] && kern_us=$(awk -v t="$kt" -v hz="$CLK_TCK" -v n="$served" 'BEGIN { printf "%.2f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    or_us=$(awk -v t="$ot" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? t * 1e6 / hz / n : 0 }')
    calls_per=$(awk -v c="$calls" -v n="$reqs" 'BEGIN { printf "%.3f", n ? c / n : 0 }')
    or_call=$(awk -v t="$ot" -v hz="$CLK_TCK" -v c="$calls" 'BEGIN { if (c > 100) printf "%.2f", t * 1e6 / hz / c }')
    sock=$((m[err_connect] + m[err_read] + m[err_write] + m[err_timeout]))
    busy_c=$(cpu_busy "$c0" "$c1" "cpu$CLIENT_CPU"); busy_s=$(cpu_busy "$c0" "$c1" "cpu$SERVER_CPU")
    steal=$(( $(cpu_busy "$c0" "$c1" "cpu$CLIENT_CPU" 4) + $(cpu_busy "$c0" "$c1" "cpu$SERVER_CPU" 4) ))
    # Other processes' share of each core (wrk is alone on the client core and
    # our servers on the server core, so anything else there disturbed the run).
    if [[ $PIN == split ]]; then
      fc=$(foreign_pct "$c0" "$c1" "cpu$CLIENT_CPU" "$wrk_ticks"); fs=$(foreign_pct "$c0" "$c1" "cpu$SERVER_CPU" "$ours")
    else fc=""; fs=""; fi
    echo "$r,$pos,$name,${m[rps]},${m[p50_us]},${m[p90_us]},${m[p99_us]},${m[max_us]},$reqs,${m[err_status]},$sock,$busy_c,$busy_s,$steal,$cpu_us,$served,$or_us,$sys_us,$calls_per,$or_call,$fc,$fs,$kern_us" >>"$CSV"
    log "round $r/$ROUNDS $(printf '%-16s' "$name") $(printf '%9.0f' "${m[rps]}") req/s  p50 ${m[p50_us]}us  p99 ${m[p99_us]}us  CPU ${cpu_us:--}us/req  cpu$CLIENT_CPU/$SERVER_CPU ${busy_c}/${busy_s}% (others ${fc:--}/${fs:--}%)  non2xx ${m[err_status]}  sockerr $sock"
    unset m
  done
done

# ----------------------------------------------------------------- summary
{
  echo "## bench/run.sh: $ROUNDS rounds, wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, pin=$PIN$([[ $PIN == split ]] && echo " (wrk cpu$CLIENT_CPU, servers cpu$SERVER_CPU)"), one worker per server"
  echo
  awk -F, -v pairs="$PAIRS" -v ref_o=origin -v ref_a=a-nginx-proxy -v cc="$CLIENT_CPU" -v sc="$SERVER_CPU" \
      -f "$BENCH/summarize.awk" "$CSV"
  echo
  echo "server CPU µs/req: user+sys CPU of the target's own process tree (/proc) ÷ the requests it served; \"of which kernel\": its system time alone."
  echo "Quote ratios from one run; read CPU µs/req before req/s (bench/README.md)."
  echo
  echo "Targets:"
  for i in "${SEL[@]}"; do echo "- ${T_NAME[i]}: ${T_DESC[i]} - ${T_URL[i]}"; done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
T_END=$(date +%s)
log "done in $(( (T_END - T_START) / 60 ))m$(( (T_END - T_START) % 60 ))s; raw logs, runs.csv and summary.md in ${OUT#"$REPO"/}"
