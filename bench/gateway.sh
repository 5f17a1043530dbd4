#!/usr/bin/env bash
# Gateway benchmark, all on 127.0.0.1, bounded in time, stops by itself.
# Measures with wrk against one tiny upstream (an nginx `return 200`, one worker):
#   (a) the upstream directly,
#   (b) nginx as a plain keep-alive reverse proxy (no auth, two workers),
#   (c) the Gatehouse gateway on an auth = "required" route with a valid
#       access cookie: verification, revocation check and identity headers
#       on every request (default serving threads: one per core, plus one).
# Prints a Markdown table for docs/BENCHMARKS.md, with the CPU time the
# measured server (upstream, nginx workers, gateway process) spent per request.
#
# Usage: bench/gateway.sh            (DURATION=10s CONNECTIONS=64 THREADS=2 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
UPSTREAM_PORT=19101
NGINX_PORT=19102
GATEHOUSE_PORT=19103

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
cargo build --release -q -p gatehouse

work="$(mktemp -d)"
gatehouse_pid=""
cleanup() {
  [ -n "$gatehouse_pid" ] && kill "$gatehouse_pid" 2>/dev/null || true
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null; done
  true
  rm -rf "$work"
}
trap cleanup EXIT

# The upstream and the proxy are separate nginx processes, as the upstream
# and the gateway are: every setup pays the same process hops.
mkdir -p "$work/upstream" "$work/proxy"
write_upstream_conf "$work/upstream" "$UPSTREAM_PORT"
write_proxy_conf "$work/proxy" "$NGINX_PORT" "$UPSTREAM_PORT" "worker_processes 2;"
nginx -c "$work/upstream/nginx.conf" -p "$work/upstream"
nginx -c "$work/proxy/nginx.conf" -p "$work/proxy"

write_gatehouse_conf "$work/gatehouse.toml" "$GATEHOUSE_PORT" "$work/data" "$UPSTREAM_PORT"
target/release/gatehouse --config "$work/gatehouse.toml" up &
gatehouse_pid=$!
g="http://127.0.0.1:$GATEHOUSE_PORT"
wait_for "$g/healthz"
cookie="$(bench_cookie "$g")"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$g/bench")" = 401 ] || { echo "gateway let an anonymous request through" >&2; exit 1; }

# CPU time (user + system, in clock ticks) of a process and its children's
# threads: the nginx master's workers, or every thread of the gateway.
ticks() { # pid...
  local total=0 pid
  for pid in "$@"; do
    for stat in /proc/"$pid"/task/*/stat; do
      total=$((total + $(awk '{print $14 + $15}' "$stat" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}
nginx_workers() { pgrep -P "$(cat "$1")" | tr '\n' ' '; }

run() { # name url measured-pids [header]
  local out before after
  before="$(ticks $3)"
  if [ -n "${4:-}" ]; then
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$4" "$2")"
  else
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")"
  fi
  after="$(ticks $3)"
  local rps p50 p99 errors requests cpu
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
  p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
  requests="$(awk '/requests in/ {print $1}' <<<"$out")"
  errors="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')"
  # CPU microseconds the measured process spent per request.
  cpu="$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
  echo "$1|$rps|$p50|$p99|$cpu|${errors:-none}"
}

upstream_workers="$(nginx_workers "$work/upstream/nginx.pid")"
proxy_workers="$(nginx_workers "$work/proxy/nginx.pid")"
a="$(run "(a) upstream directly" "http://127.0.0.1:$UPSTREAM_PORT/bench" "$upstream_workers")"
# The machine's noise is larger than the difference measured: (b) and (c)
# run in alternation, ROUNDS times, and the ratio is the median of rounds.
rows=()
ratios=()
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }'; }
for round in $(seq "$ROUNDS"); do
  b="$(run "(b) nginx reverse proxy, no auth" "http://127.0.0.1:$NGINX_PORT/bench" "$proxy_workers")"
  c="$(run "(c) Gatehouse gateway, authenticated" "$g/bench" "$gatehouse_pid" "Cookie: $cookie")"
  rows+=("$b" "$c")
  ratios+=("$(ratio "$(cut -d'|' -f2 <<<"$c")" "$(cut -d'|' -f2 <<<"$b")")")
done
rss_kib="$(awk '/VmRSS/ {print $2}' "/proc/$gatehouse_pid/status")"

echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds"
echo
echo "| setup | requests/s | p50 | p99 | CPU µs/request (of the server measured) | errors |"
echo "|---|---|---|---|---|---|"
for row in "$a" "${rows[@]}"; do echo "| ${row//|/ | } |"; done
median="$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
echo
echo "c/b by round: ${ratios[*]}; median c/b = $median; gateway resident memory after the run: $((rss_kib / 1024)) MiB"
