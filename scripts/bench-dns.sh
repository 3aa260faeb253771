#!/usr/bin/env bash
# DNS for containers: what rnetd's forwarder adds over asking the uplink's server directly, and
# dnsmasq as a forwarder in the same run, measured with dnsperf from inside a container.
#
#   sudo ./scripts/bench-dns.sh             # as root; prints a table, takes about a minute
#
# Environment: QUERIES (queries per latency run, default 5000), PERIOD (seconds per throughput
# run, default 10), OUTSTANDING (queries in flight in a throughput run, default 100).
#
# Topology (all in namespaces named rnd<pid>*):
#   uplink (203.0.113.1): dnsmasq, authoritative for example.test (www.example.test A), the
#            "real" upstream server.
#   host   (203.0.113.2, default route via the uplink): rnetd, its --resolv-conf naming only
#            systemd-resolved's stub and its --resolved-conf the uplink; beside it dnsmasq as a
#            plain forwarder on 203.0.113.2:53 (--server=203.0.113.1, --cache-size=0: rnetd's
#            forwarder does not cache either, so both forward every query).
#   a container `rnet run -n` in the host, where dnsperf runs.
# Targets, from the container: "direct" = the uplink's server (routed and masqueraded by the
# host), "rnetd" = the container's gateway (rnetd's forwarder), "dnsmasq" = dnsmasq forwarding on
# the host, and "rnetd local" = `_gateway`, which rnetd answers itself.
# Latency: one query in flight (-q 1), QUERIES queries of www.example.test A, each query's time
# from dnsperf -v; p50 and p99, and the added latency (forwarder minus direct). Throughput:
# OUTSTANDING in flight for PERIOD seconds; queries per second and the share lost (no answer
# within 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rnd
command -v dnsperf >/dev/null || scripts/install-deps.sh scripts/packages.txt

QUERIES=${QUERIES:-5000}
PERIOD=${PERIOD:-10}
OUTSTANDING=${OUTSTANDING:-100}

bench_build

HOST=${P}h
UP=${P}u

# --- the uplink and the host ------------------------------------------------------------------
bench_uplink "$HOST" "$UP"

dnsmasq_common=(--no-daemon --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces
  --port=53 --log-facility=/dev/null)
ip netns exec "$UP" dnsmasq "${dnsmasq_common[@]}" --listen-address=203.0.113.1 \
  --local=/example.test/ --host-record=www.example.test,203.0.113.80 \
  --pid-file="$TMP/up.pid" 2>>"$TMP/dnsmasq.log" &
bench_track $!
ip netns exec "$HOST" dnsmasq "${dnsmasq_common[@]}" --listen-address=203.0.113.2 \
  --server=203.0.113.1 --cache-size=0 --pid-file="$TMP/fwd.pid" 2>>"$TMP/dnsmasq.log" &
bench_track $!

printf 'nameserver 127.0.0.53\noptions edns0 trust-ad\n' >"$TMP/resolv.conf"
printf 'nameserver 203.0.113.1\n' >"$TMP/resolved.conf"
bench_start_rnetd "$HOST" --resolv-conf "$TMP/resolv.conf" --resolved-conf "$TMP/resolved.conf" \
  --log warn

ip netns exec "$HOST" "$BIN/rnet" --runtime-dir "$TMP/run" run -n -M dnsbench -- sleep 3600 \
  >/dev/null 2>>"$TMP/rnet.log" &
LAUNCHER=$!
bench_track "$LAUNCHER"
CONTAINER=
for _ in $(seq 100); do
  for c in $(pgrep -P "$LAUNCHER" 2>/dev/null); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = sleep ] && CONTAINER=$c
  done
  [ -n "$CONTAINER" ] && break
  sleep 0.1
done
[ -n "$CONTAINER" ] || { echo "the container did not start:" >&2; cat "$TMP/rnet.log" "$TMP/rnetd.log" >&2; exit 1; }
GW=$(nsenter --net="/proc/$CONTAINER/ns/net" ip -4 route show default | awk '{print $3}')

in_container() { nsenter --net="/proc/$CONTAINER/ns/net" "$@"; }

# Latency at one query in flight: "p50_us p99_us answered".
latency() {
  local server=$1 name=$2
  echo "$name A" >"$TMP/q"
  in_container dnsperf -s "$server" -d "$TMP/q" -n "$QUERIES" -q 1 -t 1 -v 2>/dev/null |
    awk '$1 == ">" && $2 == "NOERROR" { print $NF * 1e6 }' | sort -n |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "- - 0"; exit }
      i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%.0f %.0f %d\n", v[i50], v[i99], NR }'
}

# Throughput: "qps lost%".
throughput() {
  local server=$1 name=$2
  echo "$name A" >"$TMP/q"
  in_container dnsperf -s "$server" -d "$TMP/q" -l "$PERIOD" -q "$OUTSTANDING" -t 1 2>/dev/null |
    awk '/Queries per second:/ { qps = $4 }
         /Queries lost:/ { lost = $4; gsub(/[()%]/, "", lost) }
         END { printf "%.0f %s\n", qps, lost }'
}

# Warm up every path (ARP, conntrack, upstream lists).
for s in 203.0.113.1 "$GW" 203.0.113.2; do
  echo "www.example.test A" | in_container dnsperf -s "$s" -n 10 -q 1 >/dev/null 2>&1 || true
done

printf '%-13s %-22s %8s %8s %9s %9s %10s %7s\n' target server "p50 us" "p99 us" "+p50 us" "+p99 us" "queries/s" "lost %"
d50=- d99=-
row() {
  local label=$1 server=$2 name=$3 l50 l99 qps lost
  read -r l50 l99 _ < <(latency "$server" "$name")
  read -r qps lost < <(throughput "$server" "$name")
  local a50=- a99=-
  if [ "$label" = direct ]; then
    d50=$l50 d99=$l99
  elif [ "$label" != "rnetd local" ] && [ "$l50" != - ] && [ "$d50" != - ]; then
    a50=$((l50 - d50)) a99=$((l99 - d99))
  fi
  printf '%-13s %-22s %8s %8s %9s %9s %10s %7s\n' "$label" "$server:53" "$l50" "$l99" "$a50" "$a99" "$qps" "$lost"
}
row direct 203.0.113.1 www.example.test
row rnetd "$GW" www.example.test
row dnsmasq 203.0.113.2 www.example.test
row "rnetd local" "$GW" _gateway
echo "(latency: $QUERIES queries, one in flight; throughput: $OUTSTANDING in flight for ${PERIOD}s)"
