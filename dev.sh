#!/usr/bin/env bash
# The two commands of the README:
#   ./dev.sh demo   build ordergate and run the demo (fleet + proxy on 127.0.0.1:8080)
#   ./dev.sh test   build and run the whole test suite
#   ./dev.sh peers  install nginx and HAProxy, for the side-by-side load benches
# Both first install what a fresh Debian machine with only Rust lacks: cmake
# (pingora's zlib-ng is built with it), a C compiler, kill(1) (procps) and
# prlimit(1) (util-linux); `test` also chromium (the status page and waiting
# room page tests), redis-server (the shared store tests), haproxy (the PROXY
# protocol tests), nginx (the TLS to backends tests) and dnsmasq (the backends
# by name tests).
set -euo pipefail
cd "$(dirname "$0")"

need_packages() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  # The tests send signals with kill(1), which Debian ships in procps.
  [ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
  # A test starts ordergate under prlimit(1); the benches pin with taskset(1).
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  install_packages "${missing[@]}"
}

install_packages() {
  local missing=("$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "dev.sh: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "dev.sh: installing ${missing[*]} with sudo apt-get" >&2
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "dev.sh: please install: ${missing[*]} (on Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

case "${1:-}" in
  demo)
    need_packages
    shift
    exec cargo run --release --bin ordergate -- demo "$@"
    ;;
  test)
    need_packages
    # tests/it/sre.rs drives the admin status page in headless Chromium, and
    # tests/it/room.rs renders the waiting room's page in it (with a screenshot).
    command -v chromium >/dev/null 2>&1 || install_packages chromium
    # tests/it/redis.rs runs several instances against a real redis-server.
    command -v redis-server >/dev/null 2>&1 || install_packages redis-server
    # tests/it/edge.rs puts a real HAProxy in front (send-proxy-v2).
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || install_packages haproxy
    # tests/it/upstream_tls.rs runs a real nginx with TLS and client certificates.
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || install_packages nginx
    # tests/it/dns.rs resolves backends by name from a real dnsmasq.
    command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || install_packages dnsmasq
    cargo test --lib --bins --tests
    ;;
  peers)
    peers=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || peers+=(nginx)
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || peers+=(haproxy)
    install_packages "${peers[@]}"
    ;;
  *)
    echo "usage: ./dev.sh demo [--listen ADDR] | ./dev.sh test | ./dev.sh peers" >&2
    exit 2
    ;;
esac
