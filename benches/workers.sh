#!/usr/bin/env bash
# Two workers on two cores: requests/s at saturation and CPU per request of
# ordergate (`threads = 2`), nginx (`worker_processes 2`) and HAProxy
# (`nbthread 2`), each in front of one nginx backend (one worker), with wrk
# (one thread, 64 keep-alive connections) as the load. Nothing is pinned: the
# proxies' workers, wrk and the backend share both CPUs, so the report also
# says what wrk and the backend took per request (from /proc) and how busy
# the machine was (all CPUs, from /proc/stat, which includes anything else
# running). ordergate with one worker runs beside them, for the scaling. The
# targets run in turns (ordergate, ordergate-1-thread, nginx, HAProxy,
# ordergate, ...), and the medians of the rounds are printed with the ratios
# to nginx: on a shared machine only ratios from one interleaved run mean much.
#
#   benches/workers.sh [BINARY] [ROUNDS] [SECONDS] [WORKERS]
#
# BINARY defaults to target/release/ordergate; 5 rounds of 8 s; 2 workers.
# Needs wrk, nginx, haproxy and python3 (apt-get install wrk nginx haproxy).
# Sends traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/ordergate}
rounds=${2:-5}
seconds=${3:-8}
workers=${4:-2}
source "$(dirname "$0")/ab-common.sh"
need_tools wrk nginx haproxy python3
start_backend
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)

# ordergate: the bench config (ab-common.sh) with `threads = $workers`.
og_port=$(free_port)
write_config a "$og_port" "$dir/og.toml"
sed -i "s/^threads = 1$/threads = $workers/" "$dir/og.toml"
"$bin" run --config "$dir/og.toml" >"$dir/og.log" 2>&1 &
og_pid=$!
pids+=("$og_pid")
# ... and with one worker, for the scaling from one to $workers.
og1_port=$(free_port)
write_config a "$og1_port" "$dir/og1.toml"
"$bin" run --config "$dir/og1.toml" >"$dir/og1.log" 2>&1 &
og1_pid=$!
pids+=("$og1_pid")

# nginx: benches/peers/nginx.conf.tmpl's settings (keep-alive both sides,
# forwarding headers, request id), $workers workers.
nginx_port=$(free_port)
mkdir -p "$dir/nginx-proxy"
cat >"$dir/nginx-proxy.conf" <<NGINX
worker_processes $workers;
daemon off;
worker_rlimit_nofile 20000;
pid $dir/nginx-proxy/nginx.pid;
error_log $dir/nginx-proxy/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir/nginx-proxy;
  proxy_temp_path $dir/nginx-proxy;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  upstream orders {
    server 127.0.0.1:$backend max_fails=3 fail_timeout=5s;
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$nginx_port backlog=4096;
    location / {
      proxy_pass http://orders;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id always;
      proxy_connect_timeout 1s;
      proxy_send_timeout 10s;
      proxy_read_timeout 10s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 3;
    }
  }
}
NGINX
"$nginx_bin" -c "$dir/nginx-proxy.conf" -p "$dir/nginx-proxy" &
nginx_pid=$!
pids+=("$nginx_pid")

# HAProxy: benches/peers/haproxy.cfg.tmpl's settings, nbthread $workers.
haproxy_port=$(free_port)
cat >"$dir/haproxy.cfg" <<HAPROXY
global
    nbthread $workers
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 1s
    timeout client 60s
    timeout server 10s
    timeout http-keep-alive 60s
    timeout http-request 10s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504

frontend shop
    bind 127.0.0.1:$haproxy_port
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Proto http
    http-response set-header X-Request-Id %[unique-id]
    default_backend orders

backend orders
    balance roundrobin
    server b0 127.0.0.1:$backend
HAPROXY
"$haproxy_bin" -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")

for port in "$og_port" "$og1_port" "$nginx_port" "$haproxy_port"; do
  wait_listening "$port"
done
backend_pid=${pids[0]}
hz=$(getconf CLK_TCK)

tree_ticks() { # pid -> utime + stime of it and its children, in ticks
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  echo "$total"
}

machine_ticks() { # busy ticks of all CPUs (user + nice + system + irq + softirq)
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# One round: wrk under python, which reports wrk's own CPU (RUSAGE_CHILDREN).
cat >"$dir/wrk.py" <<'PY'
import re, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
requests = re.search(r"(\d+) requests in", out).group(1)
print(requests, usage.ru_utime + usage.ru_stime)
PY

run_round() { # name port pid -> "req/s proxy-µs wrk-µs backend-µs machine-cores"
  local name=$1 port=$2 pid=$3 p0 b0 m0 t0 p1 b1 m1 t1 out requests wrk_s
  p0=$(tree_ticks "$pid")
  b0=$(tree_ticks "$backend_pid")
  m0=$(machine_ticks)
  t0=$(date +%s.%N)
  out=$(python3 "$dir/wrk.py" wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/")
  t1=$(date +%s.%N)
  p1=$(tree_ticks "$pid")
  b1=$(tree_ticks "$backend_pid")
  m1=$(machine_ticks)
  read -r requests wrk_s <<<"$out"
  awk -v r="$requests" -v s="$seconds" -v p=$((p1 - p0)) -v b=$((b1 - b0)) -v m=$((m1 - m0)) \
    -v w="$wrk_s" -v hz="$hz" -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 'BEGIN {
      printf "%.0f %.2f %.2f %.2f %.2f\n", r / s, p / hz * 1e6 / r, w * 1e6 / r, b / hz * 1e6 / r, m / hz / wall
    }'
}

names=(ordergate ordergate-1-thread nginx haproxy)
ports=("$og_port" "$og1_port" "$nginx_port" "$haproxy_port")
procs=("$og_pid" "$og1_pid" "$nginx_pid" "$haproxy_pid")
# A short warm-up of each, then the measured rounds in turns.
seconds_saved=$seconds
seconds=2
for i in 0 1 2 3; do run_round "${names[$i]}" "${ports[$i]}" "${procs[$i]}" >/dev/null; done
seconds=$seconds_saved
for i in 0 1 2 3; do : >"$dir/${names[$i]}.rounds"; done
for round in $(seq "$rounds"); do
  for i in 0 1 2 3; do
    run_round "${names[$i]}" "${ports[$i]}" "${procs[$i]}" >>"$dir/${names[$i]}.rounds"
    echo "round $round ${names[$i]}: $(tail -1 "$dir/${names[$i]}.rounds") (req/s, proxy / wrk / backend µs per request, busy cores)" >&2
  done
done

median() { # file column -> median
  awk -v c="$2" '{ print $c }' "$1" | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo "$workers workers each, wrk -t1 -c64 keep-alive, one nginx backend, nothing pinned; medians of $rounds rounds of ${seconds}s"
echo "| target | req/s | ÷ nginx | proxy CPU µs/request | ÷ nginx | wrk µs/request | backend µs/request | busy cores (all processes) |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|"
nginx_rate=$(median "$dir/nginx.rounds" 1)
nginx_cpu=$(median "$dir/nginx.rounds" 2)
for name in "${names[@]}"; do
  rate=$(median "$dir/$name.rounds" 1)
  cpu=$(median "$dir/$name.rounds" 2)
  echo "| $name | $rate | $(awk -v a="$rate" -v b="$nginx_rate" 'BEGIN { printf "%.2f×", a / b }') | $cpu | $(awk -v a="$cpu" -v b="$nginx_cpu" 'BEGIN { printf "%.2f×", a / b }') | $(median "$dir/$name.rounds" 3) | $(median "$dir/$name.rounds" 4) | $(median "$dir/$name.rounds" 5) |"
done
