# Shared by the gateway benchmarks; sourced, not run.

# nginx configuration for the tiny upstream (`return 200 "ok"`, one worker)
# in DIR, listening on PORT.
write_upstream_conf() { # dir port
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$2; location / { return 200 "ok\n"; } }
}
CONF
}

# nginx as a plain keep-alive reverse proxy in DIR, on PORT, in front of
# UPSTREAM_PORT; PROCESS holds the top-level lines (workers, daemon…).
write_proxy_conf() { # dir port upstream-port process-lines
  cat > "$1/nginx.conf" <<CONF
$4
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream tiny { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://tiny;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}

# A gatehouse config in FILE: listening on PORT, data in DIR, a /bench
# route (auth = "required") to the upstream on UPSTREAM_PORT; EXTRA lines
# go at the top level.
write_gatehouse_conf() { # file port dir upstream-port [extra]
  cat > "$1" <<CONF
listen = "127.0.0.1:$2"
data_dir = "$3"
${5:-}
[log]
filter = "warn"
[[gateway.routes]]
prefix = "/bench"
upstream = "http://127.0.0.1:$4"
auth = "required"
CONF
}

# Registers and logs in through the gateway at URL; prints the access cookie
# (`__Host-access_token=…`) after checking that /bench takes it.
bench_cookie() { # gateway-url
  local creds='{"email":"bench@example.com","password":"correct horse battery staple"}' cookie
  curl -sf -X POST "$1/auth/register" -H 'Content-Type: application/json' -d "$creds" >/dev/null
  cookie="$(curl -sf -D - -o /dev/null -X POST "$1/auth/login" -H 'Content-Type: application/json' -d "$creds" \
    | tr -d '\r' | sed -n 's/^set-cookie: \(__Host-access_token=[^;]*\);.*/\1/Ip')"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "$1/bench")" = 200 ] \
    || { echo "gateway refused the cookie" >&2; return 1; }
  echo "$cookie"
}

# Waits until URL answers at all (any status), for at most a minute.
wait_for() { # url
  for _ in $(seq 300); do curl -s -o /dev/null "$1" && return; sleep 0.2; done
  echo "$1 never answered" >&2
  return 1
}
