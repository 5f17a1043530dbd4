#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: unlike
# requests per second on a shared 2-core machine, the same build gives the
# same count whatever else the machine is doing. User-space instructions
# only (the kernel's TCP work is not counted), for:
#   - the Gatehouse gateway (`gatehouse up`) on an auth = "required" route
#     with a valid access cookie;
#   - nginx as a plain keep-alive reverse proxy (one worker), for scale.
# Both run under callgrind in front of the same tiny nginx upstream; wrk
# warms up, the counters are zeroed, then wrk -t1 -c8 runs for DURATION.
# All on 127.0.0.1, bounded in time, stops by itself.
#
# Usage: bench/gateway-instructions.sh      (DURATION=8s)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

DURATION="${DURATION:-8s}"
UPSTREAM_PORT=19201
NGINX_PORT=19202
GATEHOUSE_PORT=19203

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk valgrind >/dev/null
fi
cargo build --release -q -p gatehouse

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/upstream/nginx.pid" ] && kill "$(cat "$work/upstream/nginx.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/upstream" "$work/proxy"
write_upstream_conf "$work/upstream" "$UPSTREAM_PORT"
write_proxy_conf "$work/proxy" "$NGINX_PORT" "$UPSTREAM_PORT" "daemon off; master_process off; worker_processes 1;"
nginx -c "$work/upstream/nginx.conf" -p "$work/upstream"
write_gatehouse_conf "$work/gatehouse.toml" "$GATEHOUSE_PORT" "$work/data" "$UPSTREAM_PORT" "workers = 1"

# name file pid url header: instructions per request between zeroing and dumping.
measure() {
  wrk -t1 -c8 -d2s -H "$5" "$4" >/dev/null
  callgrind_control -z "$3" >/dev/null 2>&1
  local requests total
  requests="$(wrk -t1 -c8 -d"$DURATION" -H "$5" "$4" | awk '/requests in/ {print $1}')"
  callgrind_control -d "$3" >/dev/null 2>&1
  total="$(awk '/^summary:/ {print $2; exit}' "$work/$2".*)"
  echo "| $1 | $requests | $((total / requests)) |"
}

valgrind --tool=callgrind --callgrind-out-file="$work/gateway.callgrind" \
  target/release/gatehouse --config "$work/gatehouse.toml" up >"$work/gatehouse.log" 2>&1 &
pids+=($!)
gateway_pid=$!
g="http://127.0.0.1:$GATEHOUSE_PORT"
wait_for "$g/healthz"
cookie="$(bench_cookie "$g")"

valgrind --tool=callgrind --callgrind-out-file="$work/nginx.callgrind" \
  nginx -c "$work/proxy/nginx.conf" -p "$work/proxy" >"$work/nginx.log" 2>&1 &
pids+=($!)
nginx_pid=$!
wait_for "http://127.0.0.1:$NGINX_PORT/bench"

echo "callgrind, wrk -t1 -c8 -d$DURATION after a 2 s warm-up; user-space instructions only"
echo
echo "| proxy | requests counted | instructions per request |"
echo "|---|---|---|"
measure "Gatehouse gateway, authenticated (cookie)" gateway.callgrind "$gateway_pid" "$g/bench" "Cookie: $cookie"
measure "nginx reverse proxy, no auth (same cookie header)" nginx.callgrind "$nginx_pid" \
  "http://127.0.0.1:$NGINX_PORT/bench" "Cookie: $cookie"
if grep -q WARN "$work/gatehouse.log"; then
  echo "the gateway logged warnings; the count is not of proxied requests:" >&2
  grep WARN "$work/gatehouse.log" | head -3 >&2
  exit 1
fi
