# Sourced by ab-cpu.sh and instructions.sh: a temporary directory removed at
# exit with every process started, a free loopback port, one nginx backend
# answering 200 on $backend, and the config of side A or B (AB_SERVER,
# AB_ROUTE, AB_EXTRA; AB_SERVER_B, AB_ROUTE_B, AB_EXTRA_B replace them for B).
# AB_EXTRA is TOML appended after the route: top-level tables such as
# [tracing].

need_tools() { # tool... -> exit 1 naming the first one missing
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
      echo "$(basename "$0"): $tool is missing (apt-get install $*)" >&2
      exit 1
    }
  done
}

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

start_backend() { # [taskset prefix...] -> nginx on $backend
  local nginx_bin
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  backend=$(free_port)
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $dir/nginx-error.log;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir;
  server {
    listen 127.0.0.1:$backend;
    location / { return 200 '{"ok":true}'; }
  }
}
NGINX
  "$@" "$nginx_bin" -c "$dir/nginx.conf" -p "$dir" &
  pids+=($!)
}

write_config() { # side(a|b) port file -> one worker, one pool on $backend, one route
  local side=$1 port=$2 file=$3 server_extra=${AB_SERVER:-} route_extra=${AB_ROUTE:-}
  local extra=${AB_EXTRA:-}
  if [ "$side" = b ]; then
    server_extra=${AB_SERVER_B-$server_extra}
    route_extra=${AB_ROUTE_B-$route_extra}
    extra=${AB_EXTRA_B-$extra}
  fi
  cat >"$file" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
grace_period = "0s"
$server_extra

[log]
access = "off"

[[pools]]
name = "orders"
connect_timeout = "1s"
request_timeout = "10s"
backends = [ { addr = "127.0.0.1:$backend" } ]

[[routes]]
name = "all"
pool = "orders"
$route_extra

$extra
TOML
}

wait_listening() { # port -> returns once it accepts (60 s at most)
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
}
