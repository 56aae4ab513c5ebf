#!/usr/bin/env bash
# tls-handshakes.sh: full TLS handshakes per second and server CPU per
# handshake, gateway against nginx, with `openssl s_time -new` (one
# connection at a time, a fresh handshake each, GET /users/42 over it), for
# TLS 1.3 and TLS 1.2. A cross-check of run.sh's gw-tls-new/nginx-tls-new
# pair, whose client (wrk) speaks TLS 1.2 only.
#
#   bash bench/tls-handshakes.sh [SECONDS]      # default 8 per measurement, ROUNDS=3
#
# Servers: the gateway's `tlsfull` scenario (resumption off) on 8100 and
# conf/anchor-tls-nginx-new.conf on 8445, both pinned to cpu1 (SERVER_CPU),
# with the certificate run.sh makes (run `bash bench/run.sh --targets
# gw-tls-new --check` once first); s_time on cpu0 (CLIENT_CPU). The servers'
# CPU is read from /proc (user+sys of master and workers). Everything started
# here is stopped by PID on exit. Sequential handshakes leave the server idle
# part of the time: compare the two servers, not these rates with run.sh's.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
RUN=$BENCH/.run
SECS=${1:-8}
GW_BIN=${GW_BIN:-$REPO/bin/gateway}
CLIENT_CPU=${CLIENT_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
[[ -s $RUN/tls/bench.pem ]] || { echo "no $RUN/tls/bench.pem: run bash bench/run.sh --targets gw-tls-new --check first" >&2; exit 1; }
for port in 8100 8445; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is in use" >&2; exit 1; fi
done
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
GW_BENCH_SCENARIO=tlsfull GW_BENCH_PORT=8100 GW_BENCH_TLS_DIR=$RUN/tls \
  taskset -c "$SERVER_CPU" "$GW_BIN" -w 1 -c "$BENCH/gateway-scenarios.lua" >"$RUN/handshakes-gw.out" 2>&1 &
PIDS+=($!); GW=$!
rm -rf "$RUN/handshakes-nginx"; mkdir -p "$RUN/handshakes-nginx/tmp"
taskset -c "$SERVER_CPU" nginx -p "$RUN/handshakes-nginx/" -c "$BENCH/conf/anchor-tls-nginx-new.conf" >"$RUN/handshakes-nginx.out" 2>&1 &
PIDS+=($!); NG=$!
for port in 8100 8445; do
  for ((n = 0; n < 100; n++)); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
ticks() { local t=0 p; for p in $1 $(pgrep -P "$1"); do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
ROUNDS=${ROUNDS:-3}
RES=$RUN/handshakes.txt; : >"$RES"
for ((r = 1; r <= ROUNDS; r++)); do
  order=("gateway $GW 8100" "nginx $NG 8445")
  ((r % 2 == 0)) && order=("nginx $NG 8445" "gateway $GW 8100")   # reverse every other round
  for proto in -tls1_3 -tls1_2; do
    for t in "${order[@]}"; do
      read -r name pid port <<<"$t"
      t0=$(ticks "$pid")
      out=$(taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$port" -new "$proto" -time "$SECS" -www /users/42 2>&1 |
            grep -E "connections in .* real seconds" | head -n 1)
      t1=$(ticks "$pid")
      awk -v o="$out" -v p="$proto" -v s="$name" -v dt=$((t1 - t0)) -v hz="$hz" -v r="$r" 'BEGIN {
        split(o, f, " "); n = f[1]; secs = f[4]
        printf "%d %s %s %.0f %.0f\n", r, p, s, n / secs, dt * 1e6 / hz / n }' | tee -a "$RES" >&2
    done
  done
done
echo "medians over $ROUNDS rounds (order reversed every other round), ${SECS}s each:"
awk '{ k = $2 " " $3; rate[k] = rate[k] " " $4; cpu[k] = cpu[k] " " $5 }
  function med(list,   a, n, i, j, t) { n = split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { printf "%-8s %-8s %12s %16s\n", "proto", "server", "handshakes/s", "CPU µs/handshake"
    for (k in rate) { split(k, x, " "); printf "%-8s %-8s %12.0f %16.0f\n", x[1], x[2], med(rate[k]), med(cpu[k]) } }' "$RES" | sort -r
