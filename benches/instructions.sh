#!/usr/bin/env bash
# How many instructions does ordergate spend per keep-alive request? A count
# that does not depend on the machine's noise (this VM has no hardware
# counters, and time-based CPU figures wander by several percent): each
# binary runs under valgrind's callgrind, one worker, in front of one nginx
# backend; a client sends FEW and then MANY requests on one keep-alive
# connection in two runs, and (instructions(MANY) - instructions(FEW)) /
# (MANY - FEW) is the cost of one request, start-up and shutdown cancelled
# out. The binary, the client and the backend share one CPU at nice -20
# (ab-common.sh, INSTR_CPU): repeated runs of one binary on this busy machine
# then differ by 0.1-0.7% (spread over CPUs at normal priority: up to 5%).
#
#   benches/instructions.sh BINARY_A BINARY_B [FEW] [MANY]
#
# AB_SERVER / AB_ROUTE / AB_EXTRA (both sides) and AB_SERVER_B / AB_ROUTE_B /
# AB_EXTRA_B (B only) add TOML to [server], the route and the end of the file
# (top-level tables), as in ab-cpu.sh: one binary twice measures a feature on
# against off, e.g. tracing at 1% with the collector unreachable:
#
#   AB_EXTRA_B=$'[tracing]\notlp = "http://127.0.0.1:9"\nratio = 0.01' \
#     benches/instructions.sh target/release/ordergate target/release/ordergate
#
# Needs valgrind, nginx and python3 (apt-get install valgrind nginx). Sends
# traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
a=${1:?usage: instructions.sh BINARY_A BINARY_B [FEW] [MANY]}
b=${2:?usage: instructions.sh BINARY_A BINARY_B [FEW] [MANY]}
few=${3:-200}
many=${4:-1200}
source "$(dirname "$0")/ab-common.sh"
need_tools valgrind nginx python3
start_backend "${instr_pin[@]}"

write_client

# Instructions of one run of `bin` serving `n` requests (config of side `name`).
instructions() {
  local bin=$1 name=$2 n=$3 port
  port=$(free_port)
  write_config "$name" "$port" "$dir/$name.toml"
  callgrind_count "$name" "$port" "$n" "$bin" run --config "$dir/$name.toml"
}

per_request() { # bin name -> instructions per request
  local low high
  low=$(instructions "$1" "$2" "$few")
  high=$(instructions "$1" "$2" "$many")
  per_request_of "$low" "$high" $((many - few))
}

ia=$(per_request "$a" a)
ib=$(per_request "$b" b)
echo "instructions per request ((${many} - ${few}) requests): A $ia, B $ib, B/A $(awk -v a="$ia" -v b="$ib" 'BEGIN { printf "%.4f", b / a }')"
