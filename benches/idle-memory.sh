#!/usr/bin/env bash
# What does an idle keep-alive shopper cost ordergate in memory? N shoppers
# each open a connection, send one keep-alive request and stay idle; the
# proxy's RSS growth over N is the figure. Two sides are measured in turns,
# each in a fresh process (A, B, A, B, A, B), and the medians are printed
# with their ratio, so the machine's drift stays out of the comparison:
#
#   benches/idle-memory.sh ab OLD_BINARY NEW_BINARY [CONNECTIONS]
#       does a change cost memory per idle connection? (plaintext, both)
#   benches/idle-memory.sh tls [BINARY] [CONNECTIONS]
#       a TLS connection (rustls, TLS 1.3 with an ECDSA P-256 certificate
#       made here) beside a plaintext one, on one binary
#
# BINARY defaults to target/release/ordergate, CONNECTIONS to 2000. Each
# ordergate runs one worker in front of one nginx backend. Needs nginx,
# python3 and, for tls, openssl. Sends traffic only to 127.0.0.1 and stops by
# itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: idle-memory.sh ab OLD_BINARY NEW_BINARY [CONNECTIONS] | tls [BINARY] [CONNECTIONS]"
case ${1:-} in
  ab)
    bin_a=${2:?$usage}
    bin_b=${3:?$usage}
    kind_a=plain kind_b=plain label_a=A label_b=B
    connections=${4:-2000}
    ;;
  tls)
    bin_a=${2:-$root/target/release/ordergate}
    bin_b=$bin_a
    kind_a=plain kind_b=tls label_a=plaintext label_b=TLS
    connections=${3:-2000}
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
source "$(dirname "$0")/ab-common.sh"
need_tools nginx python3
start_backend
if [ "$kind_b" = tls ]; then
  need_tools openssl
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost 2>/dev/null
fi

measure() { # binary plain|tls -> KiB per idle connection
  local bin=$1 kind=$2 port plain_port pid tls=""
  port=$(free_port) # where the shoppers connect
  plain_port=$port
  if [ "$kind" = tls ]; then
    plain_port=$(free_port)
    tls="[[server.tls]]
listen = \"127.0.0.1:$port\"
cert = \"$dir/cert.pem\"
key = \"$dir/key.pem\""
  fi
  AB_SERVER='keepalive_timeout = "120s"' AB_ROUTE="" AB_EXTRA="$tls" \
    write_config a "$plain_port" "$dir/og.toml"
  "$bin" run --config "$dir/og.toml" >"$dir/og.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  python3 - "$port" "$pid" "$connections" "$kind" <<'PY'
import socket, ssl, sys, time
port, pid, n, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
socket.setdefaulttimeout(60)
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
: >"$dir/a"
: >"$dir/b"
for round in 1 2 3; do
  measure "$bin_a" "$kind_a" >>"$dir/a"
  measure "$bin_b" "$kind_b" >>"$dir/b"
  echo "round $round: $label_a $(tail -1 "$dir/a") KiB, $label_b $(tail -1 "$dir/b") KiB per idle connection" >&2
done
ma=$(median "$dir/a")
mb=$(median "$dir/b")
echo "memory per idle keep-alive connection ($connections connections, median of 3, KiB): $label_a $ma, $label_b $mb, $label_b - $label_a $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.1f", b - a }'), $label_b/$label_a $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3f", b / a }')"
