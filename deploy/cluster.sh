#!/usr/bin/env bash
# Runs Gatehouse as in production, on one machine: N auth-services and M
# gateways sharing one PostgreSQL and one NATS JetStream, plus the example
# notes service. Ctrl-C stops everything.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/gatehouse \
#   NATS_URL=nats://127.0.0.1:4222 AUTH_SERVICES=2 GATEWAYS=2 deploy/cluster.sh
#
# Auth-services listen on 127.0.0.1:8081.., gateways on 127.0.0.1:8080,
# 8090, 8100.. (gateway i forwards /auth/ to auth-service i mod N). The
# notes service listens on 127.0.0.1:9001 with its own SQLite database.
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/gatehouse}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
AUTH_SERVICES="${AUTH_SERVICES:-2}"
GATEWAYS="${GATEWAYS:-2}"
DATA="${DATA:-./data/cluster}"

cargo build --release -q -p gatehouse -p notes-service
mkdir -p "$DATA"
export GATEHOUSE_DATABASE__URL="$DATABASE_URL" GATEHOUSE_NATS__URL="$NATS_URL"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM

target/release/gatehouse migrate --data-dir "$DATA"
for i in $(seq 0 $((AUTH_SERVICES - 1))); do
  # All auth-services sign with the same keys: one key file, shared.
  # Each process has its own operator port (metrics): 9300 + i.
  GATEHOUSE_ADMIN__LISTEN="127.0.0.1:$((9300 + i))" GATEHOUSE_AUTH_SERVICE__TRUSTED_PROXIES='["127.0.0.1"]' \
    target/release/gatehouse auth-service --data-dir "$DATA" --listen "127.0.0.1:$((8081 + i))" &
  pids+=($!)
done
target/release/notes-service --listen 127.0.0.1:9001 --database-url "sqlite://$DATA/notes.db" --nats-url "$NATS_URL" &
pids+=($!)
sleep 1
for i in $(seq 0 $((GATEWAYS - 1))); do
  cat > "$DATA/gateway-$i.toml" <<CONF
[gateway]
auth_service_url = "http://127.0.0.1:$((8081 + i % AUTH_SERVICES))"

[[gateway.routes]]
prefix = "/api/notes"
upstream = "http://127.0.0.1:9001"
CONF
  GATEHOUSE_ADMIN__LISTEN="127.0.0.1:$((9400 + i))" \
    target/release/gatehouse gateway --config "$DATA/gateway-$i.toml" --data-dir "$DATA" --listen "127.0.0.1:$((8080 + 10 * i))" &
  pids+=($!)
done
echo "gateways on $(for i in $(seq 0 $((GATEWAYS - 1))); do printf 'http://127.0.0.1:%s ' $((8080 + 10 * i)); done)"
echo "metrics on 127.0.0.1:9300+ (auth-services) and 127.0.0.1:9400+ (gateways)"
wait
