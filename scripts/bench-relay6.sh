#!/usr/bin/env bash
# Published ports from the host over IPv6: what rnetd's [::1] relay (userspace, the kernel cannot
# DNAT ::1) costs against the kernel paths, measured from the host to a container.
#
#   sudo ./scripts/bench-relay6.sh          # as root; prints a table, takes about a minute
#
# Environment: CONNECTS (connections per latency run, default 300), SECONDS_PER_RUN (iperf3
# seconds per throughput run, default 5).
#
# Topology (namespace rnr<pid>h): a host namespace with rnetd (--pool6 fd52:6e65:7400::/48) and
# two containers: `rnet run -n -p 8080:80` running a netprobe server (tcp 80, answers one line
# per connection) and `rnet run -n -p 5201:5201` running `iperf3 -s`. Targets, from the host
# namespace:
#   direct      the container's IPv6 address (routed, no NAT)
#   dnat6       the host's own IPv6 address (DNAT in the output chain)
#   dnat4 lo    127.0.0.1 (DNAT, route_localnet), for reference
#   relay ::1   [::1] (rnetd's relay)
# Latency: CONNECTS sequential connect + request + answer + close (bash /dev/tcp against the
# netprobe server), mean time per connection. Throughput: one iperf3 TCP stream.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rnr
command -v iperf3 >/dev/null || scripts/install-deps.sh scripts/packages.txt scripts/packages-bench.txt

CONNECTS=${CONNECTS:-300}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}

bench_build -p rnet-tests

HOST=${P}h

in_host() { nsenter --net="/run/netns/$HOST" "$@"; }

bench_netns "$HOST"
in_host ip addr add 2001:db8::2/64 dev lo
bench_start_rnetd "$HOST" --pool6 fd52:6e65:7400::/48 --log warn

# Two containers, each payload the launcher's own child (so it ends with the launcher): a
# netprobe server for the latency figures, an iperf3 server for the throughput figures.
in_host "$BIN/rnet" --runtime-dir "$TMP/run" run -n -M srv -p 8080:80 -- \
  "$BIN/netprobe" serve tcp:80 >"$TMP/rnet.log" 2>&1 &
bench_track $!
in_host "$BIN/rnet" --runtime-dir "$TMP/run" run -n -M perf -p 5201:5201 -- \
  iperf3 -s >>"$TMP/rnet.log" 2>&1 &
bench_track $!
address6() {
  { in_host "$BIN/rnet" --runtime-dir "$TMP/run" status "$1" --json 2>/dev/null || true; } |
    sed -n 's/.*"container_address6": *"\([^"]*\)".*/\1/p'
}
ADDR6='' PERF6=''
for _ in $(seq 100); do
  ADDR6=$(address6 srv) PERF6=$(address6 perf)
  [ -n "$ADDR6" ] && [ -n "$PERF6" ] &&
    in_host "$BIN/netprobe" connect tcp "$ADDR6" 80 >/dev/null 2>&1 && break
  sleep 0.1
done
{ [ -n "$ADDR6" ] && [ -n "$PERF6" ]; } || { echo "the containers did not start:" >&2; cat "$TMP/rnet.log" "$TMP/rnetd.log" >&2; exit 1; }
for _ in $(seq 50); do in_host iperf3 -c "$PERF6" -t 1 >/dev/null 2>&1 && break; sleep 0.2; done

# Mean microseconds per connect + request + answer + close, over CONNECTS connections.
latency() {
  local addr=$1 port=$2
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_host bash -c '
    addr=$1 port=$2 n=$3
    start=$(date +%s%N)
    for ((i = 0; i < n; i++)); do
      exec 3<>"/dev/tcp/$addr/$port" || exit 1
      printf hello >&3
      read -r -t 5 _ <&3 || exit 1
      exec 3<&-
    done
    echo $(( ($(date +%s%N) - start) / n / 1000 ))
  ' _ "$addr" "$port" "$CONNECTS" || echo -
}

# Gbit/s of one iperf3 TCP stream (the receiver's figure).
throughput() {
  local addr=$1 port=$2 out
  out=$(in_host iperf3 -c "$addr" -p "$port" -t "$SECONDS_PER_RUN" -f g 2>/dev/null |
    awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Gbits/sec") print $i }')
  echo "${out:--}"
}

printf '%-11s %-34s %14s %12s\n' target address "us/connection" "Gbit/s"
row() {
  local label=$1 addr=$2 port=$3 paddr=$4 pport=$5
  printf '%-11s %-34s %14s %12s\n' "$label" "$addr" "$(latency "$addr" "$port")" \
    "$(throughput "$paddr" "$pport")"
}
row direct "$ADDR6" 80 "$PERF6" 5201
row dnat6 2001:db8::2 8080 2001:db8::2 5201
row "dnat4 lo" 127.0.0.1 8080 127.0.0.1 5201
row "relay ::1" ::1 8080 ::1 5201
echo "($CONNECTS connections per latency figure, ${SECONDS_PER_RUN}s per throughput figure; $(nproc) CPUs)"
