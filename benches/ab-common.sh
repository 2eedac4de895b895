# Sourced by ab-cpu.sh, idle-memory.sh, instructions.sh and
# instructions-floor.sh: a temporary directory removed at exit with every
# process started, a free loopback port,
# one nginx backend answering 200 on $backend, the config of side A or B
# (AB_SERVER, AB_ROUTE, AB_EXTRA; AB_SERVER_B, AB_ROUTE_B, AB_EXTRA_B replace
# them for B; AB_EXTRA is TOML appended after the route: top-level tables such
# as [tracing]), and the callgrind count of one run serving N keep-alive
# requests.

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

wait_listening() { # port [seconds] [pid] -> 0 once it accepts; 1 after the
  # seconds (default 60) or as soon as the process pid has died
  local port=$1 tries=$((${2:-60} * 10)) pid=${3:-}
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

median() { # [file] -> the median of the numbers in it (or on stdin)
  sort -n "${1:--}" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

write_client() { # -> $dir/client.py PORT N: N GETs on one keep-alive connection
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
}

# Instructions of one run of COMMAND under callgrind serving N requests on
# PORT (summed over its threads); the callgrind file is $dir/NAME-N.callgrind
# (copied to $INSTR_KEEP, when set, for callgrind_annotate). CALLGRIND_ENV,
# when set, is a list of VAR=value for the command's environment (set around
# valgrind: callgrind does not follow an exec through `env`).
#
# The measured process, the client (and the backend, when started with
# `start_backend "${instr_pin[@]}"`) share one CPU, $INSTR_CPU (default 1):
# each then runs only while the others wait, so a read that finds no data
# finds none in every run. At nice -20 (when allowed) other work on that CPU
# seldom cuts in between them, which would let an answer arrive early and
# change the path taken: on this busy machine two runs of one binary differed
# by 5% spread over CPUs, by 3.5% pinned at normal priority. INSTR_CPU=none
# turns both off.
instr_pin=()
if [ "${INSTR_CPU:-1}" != none ] && command -v taskset >/dev/null 2>&1; then
  instr_pin=(taskset -c "${INSTR_CPU:-1}")
  # GNU nice runs the command even when it may not raise the priority.
  if [ "$(nice -n -20 nice 2>/dev/null)" = -20 ]; then
    instr_pin=(nice -n -20 "${instr_pin[@]}")
  fi
fi
callgrind_count() { # name port n command... -> instructions on stdout
  local name=$1 port=$2 n=$3
  shift 3
  local out="$dir/$name-$n.callgrind"
  # shellcheck disable=SC2086
  env ${CALLGRIND_ENV:-} "${instr_pin[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$dir/$name-$n.log" 2>&1 &
  local pid=$!
  # Start-up under valgrind on a busy machine can take minutes.
  wait_listening "$port" 600 "$pid" || {
    echo "$name did not listen on $port within 10 minutes (or exited); log:" >&2
    tail -5 "$dir/$name-$n.log" >&2
    kill -TERM "$pid" 2>/dev/null
    return 1
  }
  "${instr_pin[@]}" python3 "$dir/client.py" "$port" "$n" || {
    echo "$name: the client failed; log:" >&2
    tail -5 "$dir/$name-$n.log" >&2
    kill -TERM "$pid"
    return 1
  }
  kill -TERM "$pid"
  wait "$pid" || true
  if [ -n "${INSTR_KEEP:-}" ]; then
    mkdir -p "$INSTR_KEEP"
    cp "$out" "$INSTR_KEEP/"
  fi
  awk '/^summary:/ { print $2 }' "$out"
}

per_request_of() { # low high n -> instructions per request
  awk -v l="$1" -v h="$2" -v n="$3" 'BEGIN { printf "%.0f\n", (h - l) / n }'
}
