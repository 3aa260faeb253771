#!/usr/bin/env bash
# rnetd's memory with N live containers (issue 15's goal: RSS <= 30 MiB at 1000).
#
#   sudo ./scripts/bench-rss.sh [N]     # as root; N defaults to 1000 (about 2.5 minutes)
#
# rnetd (release build) runs in a network namespace of its own; N `rnet run -n -- sleep`
# containers are started 50 a second. Once rnetd lists all of them attached, the script waits a
# few seconds (rnetd gives freed memory back after 1 s without requests, netd/src/trim.rs, and a
# `list` is a request) and prints rnetd's RSS and anonymous memory, then again every SERIES
# seconds up to LATE seconds later (what allocates without a request, such as the periodic
# firewall check and each link's first router advertisements, shows there), then the resident
# size of its largest mappings (the binary's own text is file-backed, clean and shared).
#
# Environment: LATE (seconds, default 60), SERIES (seconds between readings, default 20),
# RNETD_ENV (variables for rnetd, e.g. "MALLOC_ARENA_MAX=8"), GDB_TRIM=1 (at the end, call
# glibc's malloc_trim(0) inside rnetd with gdb and read again: what was still free in the
# arenas).
#
# Nothing touches this machine's network: everything lives in a namespace named rnrss<pid>,
# removed with the temp dir on exit (also on failure or Ctrl-C); the containers' launchers are
# stopped with SIGTERM so they remove their cgroups. (`nsenter --net`, not `ip netns exec`,
# which remounts /sys and so hides the cgroup hierarchies the launcher uses.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rnrss
scripts/install-deps.sh scripts/packages.txt scripts/packages-bench.txt
N=${1:-1000}
LATE=${LATE:-60}
SERIES=${SERIES:-20}
bench_build

NS=$P
bench_netns "$NS"
echo "nameserver 192.0.2.53" >"$TMP/resolv.conf"
# shellcheck disable=SC2086 # RNETD_ENV is a list of NAME=VALUE words
bench_start_rnetd "$NS" ${RNETD_ENV:-} --resolv-conf "$TMP/resolv.conf" --log warn --host-firewall off

rss() { awk '/^VmRSS/{printf "%.1f MiB", $2/1024}' "/proc/$RNETD/status"; }
anon() { awk '/^Anonymous:/{printf "%.1f MB", $2/1000}' "/proc/$RNETD/smaps_rollup"; }
attached() {
  "$BIN/rnet" --runtime-dir "$TMP/run" list --json 2>/dev/null |
    jq '[.[] | select(.network != null)] | length' 2>/dev/null || echo 0
}

sleep 2
echo "N=0: RSS $(rss), anonymous $(anon)"
start=$(date +%s)
for i in $(seq 1 "$N"); do
  nsenter --net="/run/netns/$NS" "$BIN/rnet" --runtime-dir "$TMP/run" run -n -M "c$i" -- sleep 3600 \
    >/dev/null 2>&1 &
  bench_track $!
  if (( i % 50 == 0 )); then sleep 1; fi
done
n=0
for _ in $(seq 300); do
  n=$(attached)
  [ "$n" -ge "$N" ] && break
  sleep 1
done
[ "$n" -ge "$N" ] || { echo "only $n of $N containers attached after 300 s" >&2; exit 1; }
echo "attached: $n in $(( $(date +%s) - start )) s"
# rnetd trims after a second without requests; the last `list` was one.
sleep 3
echo "N=$N, 3 s after the last request: RSS $(rss), anonymous $(anon)"
for t in $(seq "$SERIES" "$SERIES" "$LATE"); do
  sleep "$SERIES"
  echo "N=$N, $((t + 3)) s after: RSS $(rss), anonymous $(anon)"
done
if [ "${GDB_TRIM:-0}" = 1 ]; then
  gdb -p "$RNETD" -batch -ex 'call (int)malloc_trim(0)' >/dev/null 2>&1
  echo "N=$N, malloc_trim(0) called again with gdb: RSS $(rss), anonymous $(anon)"
fi
echo "largest mappings (resident):"
awk '/^[0-9a-f]+-/{name=$6} /^Rss:/{r[name]+=$2}
     END{for (m in r) if (r[m] > 500) print "  " r[m] " kB " (m == "" ? "[anonymous]" : m)}' \
  "/proc/$RNETD/smaps" | sort -rn | head -5
bench_check_panic
