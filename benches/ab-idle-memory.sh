#!/usr/bin/env bash
# Does a change cost memory per idle connection? Two ordergate binaries, A and
# B, each in front of one nginx backend: N shoppers each send one keep-alive
# request and then stay idle; the proxy's RSS growth over N is the figure,
# taken for A, then B, then A and B again (the medians are printed, with the
# ratio), so the machine's drift stays out of the comparison.
#
#   benches/ab-idle-memory.sh OLD_BINARY NEW_BINARY [CONNECTIONS]
#
# Needs nginx and python3. Sends traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
a=${1:?usage: ab-idle-memory.sh OLD_BINARY NEW_BINARY [CONNECTIONS]}
b=${2:?usage: ab-idle-memory.sh OLD_BINARY NEW_BINARY [CONNECTIONS]}
connections=${3:-2000}
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
cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $dir/nginx-error.log;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir;
  server {
    listen 127.0.0.1:$backend;
    location / { return 200 '{"ok":true}'; }
  }
}
NGINX
"$nginx_bin" -c "$dir/nginx.conf" -p "$dir" &
pids+=($!)

measure() { # binary -> KiB per idle connection
  local bin=$1 port pid
  port=$(free_port)
  cat >"$dir/og.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
grace_period = "0s"
keepalive_timeout = "120s"

[log]
access = "off"

[[pools]]
name = "orders"
backends = [ { addr = "127.0.0.1:$backend" } ]

[[routes]]
name = "all"
pool = "orders"
TOML
  (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; exec "$bin" run --config "$dir/og.toml" >"$dir/og.log" 2>&1) &
  pid=$!
  python3 - "$port" "$pid" "$connections" <<'PY'
import socket, sys, time
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
def request(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n")
    data = b""
    while b'{"ok":true}' not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
# Warm up: the first connections grow pools and caches that stay.
warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
for s in warm:
    request(s)
for s in warm:
    s.close()
time.sleep(0.5)
before = rss_kib()
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    request(s)
    held.append(s)
time.sleep(1.0)
after = rss_kib()
print(f"{(after - before) / n:.2f}")
PY
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
: >"$dir/a"
: >"$dir/b"
for round in 1 2 3; do
  measure "$a" >>"$dir/a"
  measure "$b" >>"$dir/b"
  echo "round $round: A $(tail -1 "$dir/a") KiB, B $(tail -1 "$dir/b") KiB per idle connection" >&2
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ma=$(median "$dir/a")
mb=$(median "$dir/b")
echo "memory per idle connection ($connections connections, median of 3, KiB): A $ma, B $mb, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3f", b / a }')"
