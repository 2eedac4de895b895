#!/usr/bin/env bash
# What does an idle TLS keep-alive shopper cost ordergate in memory, beside a
# plaintext one? One ordergate binary with a plaintext and a TLS listener
# (rustls, an ECDSA P-256 self-signed certificate made here with openssl), in
# front of one nginx backend: N shoppers each open a connection (a TLS 1.3
# handshake on the TLS side), send one keep-alive request and stay idle; the
# proxy's RSS growth over N is the figure. Plaintext and TLS are measured in
# turns, each in a fresh process (plain, TLS, plain, TLS, plain, TLS), and the
# medians are printed with their ratio, so the machine's drift stays out.
#
#   benches/idle-memory-tls.sh [BINARY] [CONNECTIONS]
#
# BINARY defaults to target/release/ordergate, CONNECTIONS to 2000.
# Needs nginx, openssl and python3. Sends traffic only to 127.0.0.1 and stops
# by itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/ordergate}
connections=${2:-2000}
source "$(dirname "$0")/ab-common.sh"
need_tools nginx openssl python3
start_backend
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null

measure() { # plain|tls -> KiB per idle connection
  local kind=$1 port tls_port pid
  port=$(free_port)
  tls_port=$(free_port)
  cat >"$dir/og.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
grace_period = "0s"
keepalive_timeout = "120s"

[[server.tls]]
listen = "127.0.0.1:$tls_port"
cert = "$dir/cert.pem"
key = "$dir/key.pem"

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
  local target=$port
  [ "$kind" = tls ] && target=$tls_port
  python3 - "$target" "$pid" "$connections" "$kind" <<'PY'
import socket, ssl, sys, time
port, pid, n, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    if kind == "tls":
        s = context.wrap_socket(s, server_hostname="localhost")
    return s
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
warm = [connect() for _ in range(200)]
for s in warm:
    request(s)
for s in warm:
    s.close()
time.sleep(0.5)
before = rss_kib()
held = []
for _ in range(n):
    s = connect()
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
: >"$dir/plain"
: >"$dir/tls"
for round in 1 2 3; do
  measure plain >>"$dir/plain"
  measure tls >>"$dir/tls"
  echo "round $round: plaintext $(tail -1 "$dir/plain") KiB, TLS $(tail -1 "$dir/tls") KiB per idle connection" >&2
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mp=$(median "$dir/plain")
mt=$(median "$dir/tls")
echo "memory per idle keep-alive connection ($connections connections, median of 3, KiB): plaintext $mp, TLS $mt, TLS - plaintext $(awk -v p="$mp" -v t="$mt" 'BEGIN { printf "%.1f", t - p }')"
