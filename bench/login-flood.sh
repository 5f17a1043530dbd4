#!/usr/bin/env bash
# Login flood benchmark, all on 127.0.0.1, bounded in time, stops by itself.
# Does a flood of logins starve the other requests, and how close do
# logins come to the machine's raw Argon2id rate? Per round, for each
# hashing nice value (0: as the serving threads; 10: the default), with
# `gatehouse up` (SQLite) running, per-client login limits lifted:
#   1. latency: GET /auth/me through the gateway, 100 a second for PROBE
#      seconds, idle, then again while wrk floods POST /auth/login (right
#      password, CONNECTIONS at once) for FLOOD seconds: p50 and p99;
#   2. throughput, interleaved: PAIRS times a window of the raw Argon2id
#      rate (one thread per core hashing with Gatehouse's parameters; the
#      server up, sent nothing, a second after the last flood ended) then
#      a window of the flood, WINDOW seconds
#      each, and a last raw window. Each flood window is compared with the
#      mean of the raw windows on either side; the ratio is total logins
#      over total reference. (This VM's speed drifts by tens of per cent
#      within minutes; raw rates taken a minute apart hid the difference.)
# Prints a Markdown table for docs/BENCHMARKS.md.
#
# Usage: bench/login-flood.sh
#   (ROUNDS=2 FLOOD=15 PROBE=8 CONNECTIONS=16 PAIRS=6 WINDOW=3 ACCOUNTS=32)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

ROUNDS="${ROUNDS:-2}"
FLOOD="${FLOOD:-15}"
PROBE="${PROBE:-8}"
CONNECTIONS="${CONNECTIONS:-16}"
PAIRS="${PAIRS:-6}"
WINDOW="${WINDOW:-3}"
ACCOUNTS="${ACCOUNTS:-32}"
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

# ACCOUNTS accounts, signed in to in turn: many users at once, as after an
# outage. (One account from many connections trips its own login
# throttling: more than five attempts in flight are refused with 429.)
password="correct horse battery staple"
creds="{\"email\":\"flood0@example.com\",\"password\":\"$password\"}"
cat > "$work/login.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"email":"flood%d@example.com","password":"$password"}', n % $ACCOUNTS)
  return wrk.format(nil, nil, nil, body)
end
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

# A WINDOW-second flood: "successful logins a second, refused or failed".
flood_window() { # port
  wrk -t1 -c"$CONNECTIONS" -d"${WINDOW}s" -s "$work/login.lua" "http://127.0.0.1:$1/auth/login" > "$work/wrk"
  awk '/requests in/ {total = $1; took = $4 + 0}
       /Non-2xx/ {failed = $5}
       /Socket errors/ {gsub(",", ""); errors = $4 + $6 + $8 + $10}
       END {printf "%f %d\n", (total - failed) / took, failed + errors}' "$work/wrk"
}

# The raw rate over WINDOW seconds, once the server has finished the last
# flood's work (hashes in flight, the relay's batch).
raw_window() {
  sleep 1
  target/release/examples/argon2_rate "$WINDOW" | awk '{print $2}'
}

round() { # nice
  local nice="$1" cookie idle flood failed raws=() logins=()
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
[limits.register]
burst = 1000000
per_minute = 1000000
CONF
  target/release/gatehouse --config "$work/gatehouse.toml" up > "$work/log" 2>&1 &
  gatehouse_pid=$!
  wait_for "http://127.0.0.1:$PORT/healthz"
  for i in $(seq 0 $((ACCOUNTS - 1))); do
    curl -sf -X POST "http://127.0.0.1:$PORT/auth/register" -H 'Content-Type: application/json' \
      -d "{\"email\":\"flood$i@example.com\",\"password\":\"$password\"}" >/dev/null
  done
  cookie="$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$PORT/auth/login" \
    -H 'Content-Type: application/json' -d "$creds" \
    | tr -d '\r' | sed -n 's/^set-cookie: \(__Host-access_token=[^;]*\);.*/\1/Ip')"
  idle="$(probe "$PORT" "$cookie" "$PROBE")"
  wrk -t1 -c"$CONNECTIONS" -d"${FLOOD}s" -s "$work/login.lua" "http://127.0.0.1:$PORT/auth/login" > "$work/wrk" &
  local wrk_pid=$!
  sleep 2
  flood="$(probe "$PORT" "$cookie" "$PROBE")"
  wait "$wrk_pid"
  failed="$(awk '/Non-2xx/ {print $5}' "$work/wrk")"
  local window refused=0
  for _ in $(seq "$PAIRS"); do
    raws+=("$(raw_window)")
    window="$(flood_window "$PORT")"
    logins+=("${window% *}")
    refused=$((refused + ${window#* }))
  done
  raws+=("$(raw_window)")
  kill "$gatehouse_pid"; wait "$gatehouse_pid" 2>/dev/null || true; gatehouse_pid=""
  python3 - "$nice" "${raws[*]}" "${logins[*]}" "$idle" "$flood" "${failed:-0} / $refused" <<'PY'
import sys
nice, raws, logins, idle, flood, failed = sys.argv[1:]
raws = [float(r) for r in raws.split()]
logins = [float(l) for l in logins.split()]
reference = [(a + b) / 2 for a, b in zip(raws, raws[1:])]
each = [l / r for l, r in zip(logins, reference)]
print(f"| {nice} | {sum(reference) / len(reference):.0f} | {sum(logins) / len(logins):.1f} "
      f"| {sum(logins) / sum(reference):.2f} | {min(each):.2f}–{max(each):.2f} "
      f"| {' / '.join(idle.split())} | {' / '.join(flood.split())} | {failed} |")
PY
}

echo "login flood: wrk -t1 -c$CONNECTIONS over $ACCOUNTS accounts; /auth/me probed 100/s for ${PROBE}s idle and during ${FLOOD}s of flood;"
echo "throughput from $PAIRS interleaved ${WINDOW}s windows of raw hashing and of flood"
echo
echo "| hashing nice | raw Argon2id hashes/s | logins/s | logins ÷ raw | windows | /auth/me p50 / p99 idle (ms) | /auth/me p50 / p99 during flood (ms) | non-2xx or failed logins (latency flood / windows) |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  round 0
  round 10
done
