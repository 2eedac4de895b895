#!/usr/bin/env bash
# What would the three pingora changes of docs/pingora-proposals.md save
# ordergate per keep-alive request? Builds ordergate against a patched copy of
# pingora 0.9.1 — for measurement only, in a scratch directory outside the
# repository, never vendored and never in Cargo.toml — and counts
# instructions per request under callgrind (benches/instructions-floor.sh) for
# the stock build and for the patched build with each change switched on alone
# and all together.
#
#   benches/pingora-patched.sh [SCRATCH]        # default /work/scratch-pingora
#
# What it does:
#   1. copies pingora-core, pingora-proxy and pingora-http 0.9.1 from
#      ~/.cargo/registry/src into SCRATCH and applies
#      benches/pingora-patches/pingora.diff. Each change is behind an
#      environment variable read once (PINGORA_PATCH_DEADLINE,
#      PINGORA_PATCH_HEADERS, PINGORA_PATCH_IDLE), so one build measures all;
#      with none set the patched build behaves as stock pingora.
#   2. copies this commit of ordergate (git archive) into SCRATCH/ordergate
#      and applies benches/pingora-patches/ordergate.diff: the forwarding
#      headers and the answer's request id use the proposed
#      `insert_prebuilt`, and with PINGORA_PATCH_IDLE=1 ordergate's own
#      connection layer steps aside for pingora's proposed idle wait.
#   3. builds it with `--config patch.crates-io.<crate>.path=...` into
#      SCRATCH/target (seeded from target/release once, so only pingora and
#      what depends on it compile);
#   4. runs instructions-floor.sh for ordergate under each setting.
#
# SKIP_BUILD=1 reuses an earlier build (PATCHED names its binary if it was
# moved). Needs what instructions-floor.sh
# needs, plus patch. The stock binary is $STOCK, by default
# target/release/ordergate (build it first: cargo build --release --bin
# ordergate); the gains are counted from the patched build with every switch
# off, which behaves as stock pingora.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-/work/scratch-pingora}
few=${FEW:-200}
many=${MANY:-1200}
registry=$(ls -d "$HOME"/.cargo/registry/src/*/ | head -1)
patched=${PATCHED:-$scratch/target/release/ordergate}

if [ -z "${SKIP_BUILD:-}" ]; then
  mkdir -p "$scratch"
  for crate in pingora-core pingora-proxy pingora-http; do
    rm -rf "${scratch:?}/$crate"
    cp -r "$registry/$crate-0.9.1" "$scratch/$crate"
  done
  (cd "$scratch" && patch -s -p1 <"$root/benches/pingora-patches/pingora.diff")
  rm -rf "$scratch/ordergate"
  mkdir -p "$scratch/ordergate"
  (cd "$root" && git archive HEAD) | tar -x -C "$scratch/ordergate"
  (cd "$scratch/ordergate" && patch -s -p1 <"$root/benches/pingora-patches/ordergate.diff")
  if [ ! -d "$scratch/target/release" ] && [ -d "$root/target/release" ]; then
    mkdir -p "$scratch/target"
    # Seed: every crate that does not depend on pingora is reused as built.
    cp -a "$root/target/release" "$scratch/target/release"
    rm -rf "$scratch/target/release/incremental"
  fi
  (cd "$scratch/ordergate" && CARGO_TARGET_DIR="$scratch/target" cargo build --release --bin ordergate \
    --config "patch.crates-io.pingora-core.path=\"$scratch/pingora-core\"" \
    --config "patch.crates-io.pingora-proxy.path=\"$scratch/pingora-proxy\"" \
    --config "patch.crates-io.pingora-http.path=\"$scratch/pingora-http\"")
fi

count() { # label binary env... -> "label instructions"
  local label=$1 binary=$2
  shift 2
  local line
  line=$(ORDERGATE=$binary ORDERGATE_ENV="$*" TARGETS=ordergate \
    "$root/benches/instructions-floor.sh" "$few" "$many" 2>/dev/null | awk -F'|' '/^\| ordergate / { gsub(/ /, "", $3); print $3 }')
  echo "$label $line"
  echo "$label: $line instructions per request" >&2
}

{
  count stock "${STOCK:-$root/target/release/ordergate}"
  count patched-off "$patched"
  count deadline "$patched" PINGORA_PATCH_DEADLINE=1
  count headers "$patched" PINGORA_PATCH_HEADERS=1
  count idle "$patched" PINGORA_PATCH_IDLE=1
  count all-three "$patched" PINGORA_PATCH_DEADLINE=1 PINGORA_PATCH_HEADERS=1 PINGORA_PATCH_IDLE=1
} >"$scratch/counts.txt"

base=$(awk '$1 == "patched-off" { print $2 }' "$scratch/counts.txt")
echo "instructions per keep-alive request, ordergate on pingora 0.9.1 patched ((${many} - ${few}) requests, callgrind)"
echo "| build | instructions | saved | saved % |"
echo "|---|--:|--:|--:|"
while read -r label n; do
  awk -v l="$label" -v n="$n" -v b="$base" 'BEGIN { printf "| %s | %d | %d | %.1f%% |\n", l, n, b - n, (b - n) * 100 / b }'
done <"$scratch/counts.txt"
