#!/usr/bin/env bash
# How far is ordergate from the least a pingora proxy with the same safety
# nets can cost? Instructions per keep-alive request under callgrind (see
# instructions.sh for the method: FEW and MANY requests on one keep-alive
# connection, start-up and shutdown cancelled out), one worker each, in front
# of one nginx backend, for:
#
#   ordergate        the release build, the bench config (ab-common.sh)
#   floor            examples/pingora_floor.rs: round robin, nothing else
#   floor-timeouts   ... with ordergate's backend timeouts (connect 1 s,
#                    read and write 10 s, 60 s idle in the pool)
#   floor-nets       ... and a request id (to the backend and on the answer),
#                    X-Forwarded-For / -Proto set, the client's Forwarded,
#                    X-Forwarded-Host and X-Real-IP removed: the safety nets
#                    ordergate puts on every request, written the plain way
#   nginx            nginx as the proxy (one process: master_process off),
#                    with the same nets (benches/peers/nginx.conf.tmpl's)
#
# and prints each count with ordergate's ratio to it. Each proxy, the client
# and the backend share one CPU at nice -20 (ab-common.sh; INSTR_CPU picks
# it): repeated runs of one binary on this busy machine differ by 0.1-0.7%.
#
#   benches/instructions-floor.sh [FEW] [MANY]
#
# ORDERGATE and FLOOR name the binaries (default: target/release/ordergate and
# target/release/examples/pingora_floor, built by
# `cargo build --release --bin ordergate --example pingora_floor`); TARGETS
# picks a subset (e.g. TARGETS="ordergate floor-nets"); INSTR_RUNS (default
# 3) how many runs each figure is the median of; INSTR_KEEP=DIR keeps
# the callgrind files for `callgrind_annotate --inclusive=yes FILE`.
# ORDERGATE_ENV, when set, is a list of VAR=value put in ordergate's
# environment (used by pingora-patched.sh).
#
# Needs valgrind, nginx and python3 (apt-get install valgrind nginx). Sends
# traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
few=${1:-200}
many=${2:-1200}
ordergate=${ORDERGATE:-$root/target/release/ordergate}
floor=${FLOOR:-$root/target/release/examples/pingora_floor}
targets=${TARGETS:-ordergate floor floor-timeouts floor-nets nginx}
# Runs of one binary differ by up to 0.7% (pingora's timer thread): each
# figure is the median of INSTR_RUNS runs.
instr_runs=${INSTR_RUNS:-3}
# ordergate's pool request_timeout in write_config: the floors' read/write timeout.
timeout_ms=10000
source "$(dirname "$0")/ab-common.sh"
need_tools valgrind nginx python3
for bin in "$ordergate" "$floor"; do
  [ -x "$bin" ] || {
    echo "$bin is missing: cargo build --release --bin ordergate --example pingora_floor" >&2
    exit 1
  }
done
start_backend "${instr_pin[@]}"
write_client

nginx_proxy_config() { # port file -> nginx as a proxy, one process, ordergate's nets
  local nginx_prefix="$dir/nginx-proxy"
  mkdir -p "$nginx_prefix"
  cat >"$2" <<NGINX
worker_processes 1;
master_process off;
daemon off;
error_log $nginx_prefix/error.log;
pid $nginx_prefix/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $nginx_prefix;
  proxy_temp_path $nginx_prefix;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  upstream orders {
    server 127.0.0.1:$backend;
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$1;
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
    }
  }
}
NGINX
}

instructions() { # target n -> instructions of one run serving n requests
  local target=$1 n=$2 port
  port=$(free_port)
  case $target in
    ordergate)
      write_config a "$port" "$dir/ordergate.toml"
      CALLGRIND_ENV=${ORDERGATE_ENV:-} callgrind_count "$target" "$port" "$n" "$ordergate" run --config "$dir/ordergate.toml"
      ;;
    floor)
      callgrind_count "$target" "$port" "$n" "$floor" "127.0.0.1:$port" "127.0.0.1:$backend"
      ;;
    floor-timeouts)
      callgrind_count "$target" "$port" "$n" "$floor" --timeouts "$timeout_ms" "127.0.0.1:$port" "127.0.0.1:$backend"
      ;;
    floor-nets)
      callgrind_count "$target" "$port" "$n" "$floor" --nets "$timeout_ms" "127.0.0.1:$port" "127.0.0.1:$backend"
      ;;
    nginx)
      nginx_proxy_config "$port" "$dir/nginx-proxy.conf"
      callgrind_count "$target" "$port" "$n" "$(command -v nginx || echo /usr/sbin/nginx)" -c "$dir/nginx-proxy.conf" -p "$dir/nginx-proxy"
      ;;
    *)
      echo "unknown target $target (ordergate floor floor-timeouts floor-nets nginx)" >&2
      exit 2
      ;;
  esac
}

declare -A count
for target in $targets; do
  runs=()
  for _ in $(seq "$instr_runs"); do
    low=$(instructions "$target" "$few")
    high=$(instructions "$target" "$many")
    runs+=("$(per_request_of "$low" "$high" $((many - few)))")
  done
  count[$target]=$(printf '%s\n' "${runs[@]}" | median)
  echo "$target: ${count[$target]} instructions per request (runs: ${runs[*]})" >&2
done

echo "instructions per keep-alive request ((${many} - ${few}) requests, callgrind, median of $instr_runs runs)"
printf '| %-16s | %12s | %14s |\n' target instructions "ordergate ÷ it"
printf '|%s|%s|%s|\n' ------------------ "-------------:" "---------------:"
for target in $targets; do
  ratio=-
  if [ -n "${count[ordergate]:-}" ]; then
    ratio=$(awk -v o="${count[ordergate]}" -v t="${count[$target]}" 'BEGIN { printf "%.3f×", o / t }')
  fi
  printf '| %-16s | %12s | %14s |\n' "$target" "${count[$target]}" "$ratio"
done
