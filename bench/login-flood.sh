#!/usr/bin/env bash
# Login flood benchmark, all on 127.0.0.1, bounded in time, stops by itself.
# Does a flood of logins starve the other requests? Per round:
#   1. the raw Argon2id rate of this machine: one thread per core hashing
#      with Gatehouse's parameters, nothing else running, for 5 s before
#      and 5 s after the rest of the round (this VM's speed drifts by tens
#      of per cent over minutes; the mean of the two is the reference);
#   2. `gatehouse up` (SQLite), per-client login limits lifted, hashing
#      threads at nice NICE; GET /auth/me through the gateway, 100 a second
#      for PROBE seconds, idle: p50 and p99;
#   3. the same probe while wrk floods POST /auth/login (right password,
#      CONNECTIONS at once) for FLOOD seconds: p50 and p99, and successful
#      logins per second against the raw rate.
# Rounds alternate nice 0 (hashing as the serving threads) and the default
# 10. Prints a Markdown table for docs/BENCHMARKS.md.
#
# Usage: bench/login-flood.sh        (ROUNDS=2 FLOOD=15 PROBE=8 CONNECTIONS=8)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

ROUNDS="${ROUNDS:-2}"
FLOOD="${FLOOD:-15}"
PROBE="${PROBE:-8}"
CONNECTIONS="${CONNECTIONS:-8}"
PORT=19111

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p gatehouse
cargo build --release -q -p auth-core --example argon2_rate

work="$(mktemp -d)"
gatehouse_pid=""
cleanup() {
  [ -n "$gatehouse_pid" ] && kill "$gatehouse_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

creds='{"email":"flood@example.com","password":"correct horse battery staple"}'
cat > "$work/login.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$creds'
LUA

# GET URL with COOKIE, RATE a second for SECONDS, one keep-alive connection;
# prints "p50 p99" in milliseconds.
probe() { # port cookie seconds
  python3 - "$@" <<'PY'
import http.client, sys, time
port, cookie, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
took, start, n = [], time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = start + n * 0.01
    n += 1
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    t = time.monotonic()
    conn.request("GET", "/auth/me", headers={"Cookie": cookie})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"/auth/me answered {r.status}")
    took.append((time.monotonic() - t) * 1000)
took.sort()
print(f"{took[len(took) // 2]:.1f} {took[int(len(took) * 0.99)]:.1f}")
PY
}

round() { # nice
  local nice="$1" raw before after cookie idle flood out total failed logins
  before="$(target/release/examples/argon2_rate 5 | awk '{print $2}')"
  rm -rf "$work/data"
  cat > "$work/gatehouse.toml" <<CONF
listen = "127.0.0.1:$PORT"
data_dir = "$work/data"
[log]
filter = "warn"
[admin]
listen = ""
[passwords.hashing]
nice = $nice
[limits.login]
burst = 1000000
per_minute = 1000000
CONF
  target/release/gatehouse --config "$work/gatehouse.toml" up > "$work/log" 2>&1 &
  gatehouse_pid=$!
  wait_for "http://127.0.0.1:$PORT/healthz"
  curl -sf -X POST "http://127.0.0.1:$PORT/auth/register" -H 'Content-Type: application/json' -d "$creds" >/dev/null
  cookie="$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$PORT/auth/login" \
    -H 'Content-Type: application/json' -d "$creds" \
    | tr -d '\r' | sed -n 's/^set-cookie: \(__Host-access_token=[^;]*\);.*/\1/Ip')"
  idle="$(probe "$PORT" "$cookie" "$PROBE")"
  wrk -t1 -c"$CONNECTIONS" -d"${FLOOD}s" -s "$work/login.lua" "http://127.0.0.1:$PORT/auth/login" > "$work/wrk" &
  local wrk_pid=$!
  sleep 2
  flood="$(probe "$PORT" "$cookie" "$PROBE")"
  wait "$wrk_pid"
  total="$(awk '/requests in/ {print $1}' "$work/wrk")"
  failed="$(awk '/Non-2xx/ {print $5}' "$work/wrk")"
  logins="$(echo "($total - ${failed:-0}) / $FLOOD" | bc -l)"
  kill "$gatehouse_pid"; wait "$gatehouse_pid" 2>/dev/null || true; gatehouse_pid=""
  after="$(target/release/examples/argon2_rate 5 | awk '{print $2}')"
  raw="$(echo "($before + $after) / 2" | bc -l)"
  printf '| %s | %.0f | %.1f | %.2f | %s / %s | %s / %s | %s |\n' "$nice" "$raw" "$logins" \
    "$(echo "$logins / $raw" | bc -l)" ${idle% *} ${idle#* } ${flood% *} ${flood#* } "${failed:-0}"
}

echo "login flood: wrk -t1 -c$CONNECTIONS ${FLOOD}s of right-password logins; /auth/me probed 100/s for ${PROBE}s"
echo
echo "| hashing nice | raw Argon2id hashes/s | logins/s | logins ÷ raw | /auth/me p50 / p99 idle (ms) | /auth/me p50 / p99 during flood (ms) | non-2xx logins |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  round 0
  round 10
done
