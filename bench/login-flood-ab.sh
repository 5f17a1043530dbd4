#!/usr/bin/env bash
# Two gatehouse builds under the same login flood, side by side, all on
# 127.0.0.1, bounded (PAIRS × about 15 s), stops by itself. For a change
# worth a few points of logins ÷ raw, which one round of
# bench/login-flood.sh (±0.03 on this VM) cannot show.
#
# Both binaries serve at once (SQLite, per-client limits lifted, hashing
# at nice 10, 32 accounts each). Windows of WINDOW seconds follow each
# other: raw, flood on A, raw, flood on B, raw, … with A and B taking
# turns at going first in each pair. Each flood window is divided by the
# mean of the raw windows either side (the raw rate of this VM drifts by
# tens of per cent within minutes). Prints each build's mean ratio and
# the mean per-pair difference B − A ± its standard error.
#
# Passing one binary twice (A/A) shows what the method calls a
# difference when there is none.
#
# Usage: bench/login-flood-ab.sh BIN_A BIN_B   (PAIRS=40 WINDOW=3 CONNECTIONS=16)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

A="$(realpath "$1")"
B="$(realpath "$2")"
PAIRS="${PAIRS:-40}"
WINDOW="${WINDOW:-3}"
CONNECTIONS="${CONNECTIONS:-16}"
ACCOUNTS=32
password="correct horse battery staple"

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p auth-core --example argon2_rate

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

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

serve() { # binary port
  mkdir -p "$work/$2"
  cat > "$work/$2/gatehouse.toml" <<CONF
listen = "127.0.0.1:$2"
data_dir = "$work/$2/data"
[log]
filter = "warn"
[admin]
listen = ""
[passwords.hashing]
nice = 10
[limits.login]
burst = 1000000
per_minute = 1000000
[limits.register]
burst = 1000000
per_minute = 1000000
CONF
  "$1" --config "$work/$2/gatehouse.toml" up > "$work/$2/log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$2/healthz"
  for i in $(seq 0 $((ACCOUNTS - 1))); do
    curl -sf -X POST "http://127.0.0.1:$2/auth/register" -H 'Content-Type: application/json' \
      -d "{\"email\":\"flood$i@example.com\",\"password\":\"$password\"}" >/dev/null
  done
}

raw() {
  sleep 1
  target/release/examples/argon2_rate "$WINDOW" | awk '{print $2}'
}

# Successful logins a second over one window.
flood() { # port
  wrk -t1 -c"$CONNECTIONS" -d"${WINDOW}s" -s "$work/login.lua" "http://127.0.0.1:$1/auth/login" > "$work/wrk"
  awk '/requests in/ {total = $1; took = $4 + 0} /Non-2xx/ {failed = $5}
       END {printf "%f\n", (total - failed) / took}' "$work/wrk"
}

serve "$A" 19201
serve "$B" 19202
: > "$work/windows"
before="$(raw)"
for i in $(seq "$PAIRS"); do
  order="A B"
  [ $((i % 2)) = 0 ] && order="B A"
  for build in $order; do
    port=19201
    [ "$build" = B ] && port=19202
    logins="$(flood "$port")"
    after="$(raw)"
    echo "$i $build $before $logins $after" >> "$work/windows"
    before="$after"
  done
done

echo "A: $A"
echo "B: $B"
awk '{ratio = $4 / (($3 + $5) / 2); r[$1, $2] = ratio; sum[$2] += ratio; n[$2]++; raw += $3}
     END {
       for (i = 1; i <= n["A"]; i++) { d = r[i, "B"] - r[i, "A"]; s += d; ss += d * d }
       m = s / n["A"]; se = sqrt((ss - n["A"] * m * m) / (n["A"] - 1) / n["A"])
       printf "pairs %d, raw %.0f hashes/s on average\n", n["A"], raw / NR
       printf "logins ÷ raw: A %.3f, B %.3f; B − A %+.3f ± %.3f\n", sum["A"] / n["A"], sum["B"] / n["B"], m, se
     }' "$work/windows"
