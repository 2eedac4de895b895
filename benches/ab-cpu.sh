#!/usr/bin/env bash
# Does a change cost CPU per request? Two ordergate binaries, A and B, in one
# run: each serves wrk's keep-alive load against one nginx backend, in turns
# (A, B, A, B, ...), pinned to CPU 0 with one worker; wrk and nginx share CPU 1.
# The proxy's CPU time (utime + stime from /proc) over the requests wrk made is
# the figure; the median of the rounds is printed per binary, with the ratio.
# Interleaving keeps the machine's drift out of the comparison.
#
#   benches/ab-cpu.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
#
# AB_ROUTE, when set, is TOML appended to the one route (e.g. a rate limit:
# AB_ROUTE=$'[routes.rate_limit]\nrequests_per_second = 1000000'); AB_SERVER
# is appended to [server]. AB_ROUTE_B and AB_SERVER_B, when set, replace them
# for B only: one binary twice then measures a feature on against off
# (AB_SERVER_B='trusted_proxies = ["127.0.0.1"]' benches/ab-cpu.sh X X).
# AB_EXTRA (AB_EXTRA_B for B) is appended after the route: top-level tables
# such as [tracing].
#
# Needs wrk, nginx and taskset (apt-get install wrk nginx util-linux).
# Sends traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
a=${1:?usage: ab-cpu.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]}
b=${2:?usage: ab-cpu.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]}
rounds=${3:-6}
seconds=${4:-5}
source "$(dirname "$0")/ab-common.sh"
need_tools wrk nginx taskset
start_backend taskset -c 1

start_proxy() { # binary name -> pid on stdout, port in $dir/name.port
  local bin=$1 name=$2 port
  port=$(free_port)
  write_config "$name" "$port" "$dir/$name.toml"
  echo "$port" >"$dir/$name.port"
  taskset -c 0 "$bin" run --config "$dir/$name.toml" >"$dir/$name.log" 2>&1 &
  echo $!
}

cpu_ticks() { # utime + stime of a pid, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

pid_a=$(start_proxy "$a" a)
pids+=("$pid_a")
pid_b=$(start_proxy "$b" b)
pids+=("$pid_b")
for name in a b; do
  wait_listening "$(cat "$dir/$name.port")"
done
hz=$(getconf CLK_TCK)

run_round() { # name pid -> µs per request
  local name=$1 pid=$2 port before after requests
  port=$(cat "$dir/$name.port")
  before=$(cpu_ticks "$pid")
  requests=$(taskset -c 1 wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/" |
    awk '/requests in/ { print $1 }')
  after=$(cpu_ticks "$pid")
  awk -v t=$((after - before)) -v r="$requests" -v hz="$hz" 'BEGIN { printf "%.2f\n", t / hz * 1e6 / r }'
}

# A short warm-up of each, then the measured rounds in turns.
seconds_saved=$seconds
seconds=1
run_round a "$pid_a" >/dev/null
run_round b "$pid_b" >/dev/null
seconds=$seconds_saved
: >"$dir/a.us"
: >"$dir/b.us"
for round in $(seq "$rounds"); do
  run_round a "$pid_a" >>"$dir/a.us"
  run_round b "$pid_b" >>"$dir/b.us"
  echo "round $round: A $(tail -1 "$dir/a.us") µs, B $(tail -1 "$dir/b.us") µs per request" >&2
done
ma=$(median "$dir/a.us")
mb=$(median "$dir/b.us")
echo "CPU per request (median of $rounds rounds of ${seconds}s, µs): A $ma, B $mb, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3f", b / a }')"
