#!/usr/bin/env bash
# End-to-end benchmark of the release CLI on a fleet-sized world:
# 10,000 gateways, 100,000 devices, 100 functions, with the managed Deployments of the
# steady state in the snapshot. Times `plan -o json` and `diff` on the same objects as a
# YAML List, a YAML `---` stream and JSON, with wall time and peak RSS (/usr/bin/time -v).
#
#   benches/e2e.sh [OUT_DIR] [GATEWAYS DEVICES FUNCTIONS]
#
# OUT_DIR (default target/e2e) receives the world, written once by
# crates/cloud4iot-core/examples/e2e_world.rs (delete the directory to regenerate), and
# results.md, the table printed at the end.
# CLOUD4IOT_BIN=PATH times that binary instead of building one.
# Needs: cargo, GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/e2e}
shift || true
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

# CLOUD4IOT_BIN: time an already built binary instead of building this checkout's.
bin=${CLOUD4IOT_BIN:-target/release/cloud4iot}
[[ -n ${CLOUD4IOT_BIN:-} ]] || cargo build --release --bin cloud4iot
if [[ ! -f $out/state.json ]]; then
  # The world's generator is an example of the core crate (feature `testing`), so it
  # links the core alone.
  cargo build --release -p cloud4iot-core --features testing --example e2e_world
  rm -rf "$out"
  /usr/bin/time -f 'world written in %e s, peak %M KiB' \
    target/release/examples/e2e_world "$out" "$@"
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start:" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "snapshots: state-list.yaml $(mib "$(stat -c %s "$out/state-list.yaml")")," \
  "state-stream.yaml $(mib "$(stat -c %s "$out/state-stream.yaml")")," \
  "state.json $(mib "$(stat -c %s "$out/state.json")")"
echo

table=$out/results.md
{
  echo "| command | input | wall | CPU (user + sys) | peak RSS | exit |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
} >"$table"

run() { # run COMMAND INPUT_FILE ARGS...
  local cmd=$1 input=$2
  shift 2
  local log=$out/time-$cmd-${input%%.*}.log
  local rc=0
  /usr/bin/time -v "$bin" "$cmd" --repo "$out/repo" --state "$out/$input" "$@" \
    >/dev/null 2>"$log" || rc=$?
  # 0 no change / all placed, 1 changes or unplaced instances: both are results.
  if ((rc > 1)); then
    echo "$cmd on $input failed (exit $rc):" >&2
    tail -n 30 "$log" >&2
    exit 2
  fi
  local wall cpu rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
    n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.2f s", s }' "$log")
  # On a shared machine wall time includes waiting for a core; CPU time does not.
  cpu=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f s", u + s }' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f MiB", $2 / 1024 }' "$log")
  echo "| \`$cmd${*:+ $*}\` | $input | $wall | $cpu | $rss | $rc |" | tee -a "$table"
}

for input in state-list.yaml state-stream.yaml state.json; do
  run plan "$input" -o json
  run diff "$input"
done
echo
echo "table written to $table"
