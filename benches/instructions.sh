#!/usr/bin/env bash
# How many instructions does ordergate spend per keep-alive request? A count
# that does not depend on the machine's noise (this VM has no hardware
# counters, and time-based CPU figures wander by several percent): each
# binary runs under valgrind's callgrind, one worker, in front of one nginx
# backend; a client sends FEW and then MANY requests on one keep-alive
# connection in two runs, and (instructions(MANY) - instructions(FEW)) /
# (MANY - FEW) is the cost of one request, start-up and shutdown cancelled
# out. The same binary, inputs and config give the same count to within a
# fraction of a percent.
#
#   benches/instructions.sh BINARY_A BINARY_B [FEW] [MANY]
#
# AB_SERVER / AB_ROUTE (both sides) and AB_SERVER_B / AB_ROUTE_B (B only) add
# TOML to [server] and the route, as in ab-cpu.sh: one binary twice measures a
# feature on against off.
#
# Needs valgrind, nginx and python3 (apt-get install valgrind nginx). Sends
# traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
a=${1:?usage: instructions.sh BINARY_A BINARY_B [FEW] [MANY]}
b=${2:?usage: instructions.sh BINARY_A BINARY_B [FEW] [MANY]}
few=${3:-200}
many=${4:-1200}
for tool in valgrind nginx python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "instructions: $tool is missing (apt-get install valgrind nginx python3)" >&2
    exit 1
  }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

backend=$(free_port)
cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $dir/nginx-error.log;
pid $dir/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir;
  server {
    listen 127.0.0.1:$backend;
    location / { return 200 '{"ok":true}'; }
  }
}
EOF
"$nginx_bin" -c "$dir/nginx.conf" -p "$dir" &
pids+=($!)

cat >"$dir/client.py" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(n):
    connection.request("GET", "/api/products/1", headers={"Host": "shop.test"})
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"status {answer.status}")
EOF

# Instructions of one run of `bin` serving `n` requests (config of side `name`).
instructions() {
  local bin=$1 name=$2 n=$3 port server_extra=${AB_SERVER:-} route_extra=${AB_ROUTE:-}
  if [ "$name" = b ]; then
    server_extra=${AB_SERVER_B-$server_extra}
    route_extra=${AB_ROUTE_B-$route_extra}
  fi
  port=$(free_port)
  cat >"$dir/$name.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
threads = 1
grace_period = "0s"
$server_extra

[log]
access = "off"

[[pools]]
name = "orders"
backends = [ { addr = "127.0.0.1:$backend" } ]

[[routes]]
name = "all"
pool = "orders"
$route_extra
EOF
  local out="$dir/$name-$n.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" run --config "$dir/$name.toml" >"$dir/$name-$n.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  python3 "$dir/client.py" "$port" "$n"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^summary:/ { print $2 }' "$out"
}

per_request() { # bin name -> instructions per request
  local low high
  low=$(instructions "$1" "$2" "$few")
  high=$(instructions "$1" "$2" "$many")
  awk -v l="$low" -v h="$high" -v n=$((many - few)) 'BEGIN { printf "%.0f\n", (h - l) / n }'
}

ia=$(per_request "$a" a)
ib=$(per_request "$b" b)
echo "instructions per request ((${many} - ${few}) requests): A $ia, B $ib, B/A $(awk -v a="$ia" -v b="$ib" 'BEGIN { printf "%.4f", b / a }')"
