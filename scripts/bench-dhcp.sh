#!/usr/bin/env bash
# DHCPv4 server throughput: rnetd against dnsmasq and kea-dhcp4, measured with perfdhcp.
#
#   sudo ./scripts/bench-dhcp.sh            # as root; prints a table, takes a few minutes
#
# Environment: RATES (exchanges/s to try, ascending; default
# "125 250 500 1000 1500 2000 3000 4000 6000 8000 12000 16000"), PERIOD (seconds per rate,
# default 10), CLIENTS (distinct clients, default 50000), SERVERS (default
# "rnet dnsmasq kea kea-mt"),
# PROFILE=1 (record rnetd with `perf record` at the highest rate it held and print the top of
# the profile).
#
# Each server serves a /16 (65533 addresses, the first one its own) on one side of a veth link;
# perfdhcp runs on the other side, in another network namespace, and initiates full DORA
# exchanges (DISCOVER-OFFER, REQUEST-ACK) at a fixed rate, each from a MAC drawn from one list of
# CLIENTS random MACs (the same list for every server; perfdhcp's own sequential MACs make
# dnsmasq, which hashes the MAC, offer one address to several clients). Like any perfdhcp
# DHCPv4 run, it acts as a relay (giaddr = its address): every server answers by unicast to
# port 67.
#   rnet:    rnetd --pool 10.0.0.0/8 --veth-prefix 16 in a netns of its own, a container
#            `rnet run -n -- sleep`, perfdhcp inside it on host0 (the link rnetd serves).
#   dnsmasq: a veth pair between two fresh netns; lease file in a temp dir; --no-ping,
#            --dhcp-lease-max above the pool size.
#   kea:     same link; memfile lease database with persist: true (CSV in a temp dir).
#   kea-mt:  the same with Kea's multi-threading on (thread pool of 2, one per core here, packet
#            queue 64: Kea's recommended settings for memfile).
# Every rate runs against a fresh server (no leases yet). For each server: the highest rate with
# under 2.5 % of the exchanges lost (perfdhcp counts an answer later than 1 s as lost), and the
# leases (ACKs) per second it achieved there; and for every rate, the server's CPU seconds
# (user + system, from /proc) per 10,000 leases, compared at the highest rate every server held.
#
# Nothing touches this machine's network: everything lives in namespaces named rnb<pid>*, removed
# with the temp dir on exit (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rnb
scripts/install-deps.sh scripts/packages.txt scripts/packages-bench.txt

RATES=${RATES:-"125 250 500 1000 1500 2000 3000 4000 6000 8000 12000 16000"}
PERIOD=${PERIOD:-10}
CLIENTS=${CLIENTS:-50000}
PROFILE=${PROFILE:-0}
SERVERS=${SERVERS:-"rnet dnsmasq kea kea-mt"}
MAX_DROP=2.5

bench_build

HOST=${P}h      # rnetd's "host" netns
SRV=${P}s       # dnsmasq's / kea's netns
CLI=${P}c       # perfdhcp's netns for dnsmasq and kea

# (Background processes are started with `ip netns exec` itself, which execs the program, so
# that $! is the server's own pid.)
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# perfdhcp against the server on the other side of interface $2, in netns (or /proc/PID/ns/net)
# $1, at rate $3. Prints "DISCOVERs/s ACKs/s lost%" (lost: exchanges begun without an ACK) and
# keeps perfdhcp's report in $4.
perf_run() {
  local nsarg=$1 ifname=$2 rate=$3 out=$4
  nsenter --net="$nsarg" perfdhcp -4 -l "$ifname" -r "$rate" -M "$TMP/macs" -p "$PERIOD" \
    >"$out" 2>&1 || true
  awk -v period="$PERIOD" '
    /^\*\*\*Statistics for: DISCOVER-OFFER/ { sec = "do" }
    /^\*\*\*Statistics for: REQUEST-ACK/ { sec = "ra" }
    /^sent packets:/ { sent[sec] = $3 }
    /^received packets:/ { recv[sec] = $3 }
    END {
      if (sent["do"] == 0) { print "0 0 100"; exit }
      drop = 100 * (1 - recv["ra"] / sent["do"])
      printf "%.0f %.0f %.2f\n", sent["do"] / period, recv["ra"] / period, drop
    }' "$out"
}

# --- rnet -------------------------------------------------------------------------------------
start_rnetd() {
  bench_netns "$HOST"
  bench_start_rnetd "$HOST" --pool 10.0.0.0/8 --veth-prefix 16 --dns 192.0.2.53 --log info
}

# Starts container $1; sets CONTAINER_PID (its payload) and LAUNCHER_PID.
start_container() {
  ip netns exec "$HOST" "$BIN/rnet" --runtime-dir "$TMP/run" run -n -M "$1" -- sleep 3600 \
    >/dev/null 2>>"$TMP/rnet.log" &
  LAUNCHER_PID=$!
  bench_track "$LAUNCHER_PID"
  CONTAINER_PID=
  for _ in $(seq 100); do
    # The launcher's child execs sleep once host0 is configured.
    for c in $(pgrep -P "$LAUNCHER_PID" 2>/dev/null); do
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = sleep ] && CONTAINER_PID=$c
    done
    [ -n "$CONTAINER_PID" ] && return
    sleep 0.1
  done
  echo "container $1 did not start:" >&2; cat "$TMP/rnet.log" "$TMP/rnetd.log" >&2; exit 1
}

stop_container() { bench_stop "$LAUNCHER_PID"; }

# --- dnsmasq and kea: a veth link between $SRV (10.0.0.1/16) and $CLI (10.0.0.2/16) ------------
link_up() {
  bench_netns "$SRV" "$CLI"
  ip link add "${P}sv" netns "$SRV" type veth peer name "${P}cv" netns "$CLI"
  in_ns "$SRV" ip addr add 10.0.0.1/16 dev "${P}sv"
  in_ns "$CLI" ip addr add 10.0.0.2/16 dev "${P}cv"
  in_ns "$SRV" ip link set "${P}sv" up
  in_ns "$CLI" ip link set "${P}cv" up
}

SERVER_PID=
start_dnsmasq() {
  rm -f "$TMP/dnsmasq.leases"
  ip netns exec "$SRV" dnsmasq --no-daemon --conf-file=/dev/null --user=root --port=0 --no-ping --quiet-dhcp \
    --interface="${P}sv" --bind-interfaces --no-resolv --no-hosts \
    --pid-file="$TMP/dnsmasq.pid" --dhcp-leasefile="$TMP/dnsmasq.leases" \
    --dhcp-range=10.0.0.2,10.0.255.254,255.255.0.0,1h --dhcp-lease-max=70000 \
    --dhcp-option=option:dns-server,192.0.2.53 --log-facility="$TMP/dnsmasq.log" \
    2>>"$TMP/dnsmasq.err" &
  SERVER_PID=$!
  bench_track "$SERVER_PID"
  sleep 0.5
}

# Kea; with $1 = mt, multi-threaded.
start_kea() {
  local mt=false
  [ "${1:-}" = mt ] && mt=true
  rm -f "$TMP"/kea-leases4.csv*
  cat >"$TMP/kea.json" <<EOF
{ "Dhcp4": {
  "multi-threading": { "enable-multi-threading": $mt, "thread-pool-size": 2,
                       "packet-queue-size": 64 },
  "interfaces-config": { "interfaces": [ "${P}sv" ], "dhcp-socket-type": "raw" },
  "lease-database": { "type": "memfile", "persist": true,
                      "name": "$TMP/kea-leases4.csv", "lfc-interval": 0 },
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.0.0.0/16",
                 "pools": [ { "pool": "10.0.0.2 - 10.0.255.254" } ],
                 "option-data": [ { "name": "routers", "data": "10.0.0.1" },
                                  { "name": "domain-name-servers", "data": "192.0.2.53" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                 "output_options": [ { "output": "$TMP/kea.log" } ] } ]
} }
EOF
  KEA_PIDFILE_DIR=$TMP KEA_LOCKFILE_DIR=$TMP ip netns exec "$SRV" kea-dhcp4 -c "$TMP/kea.json" \
    2>>"$TMP/kea.err" >/dev/null &
  SERVER_PID=$!
  bench_track "$SERVER_PID"
  sleep 1
}

stop_server() { bench_stop "$SERVER_PID"; }

# CPU seconds (user+system) a process has used.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# The clients: CLIENTS random unicast, locally administered MACs (the same every run).
awk -v n="$CLIENTS" 'BEGIN { srand(1); for (i = 0; i < n; i++) {
  printf "02"; for (j = 0; j < 5; j++) printf ":%02x", int(rand() * 256); printf "\n" } }' \
  | sort -u >"$TMP/macs"

declare -A BEST_RATE BEST_LPS CPU10K
printf '%-8s %8s %10s %10s %8s %10s %12s\n' server rate sent/s leases/s lost% cpu-s cpu-s/10k
for server in $SERVERS; do
  BEST_RATE[$server]=0
  BEST_LPS[$server]=0
  case $server in
    rnet) start_rnetd ;;
    *) link_up ;;
  esac
  i=0
  for rate in $RATES; do
    i=$((i + 1))
    case $server in
      rnet)
        start_container "bench$i"
        ns=/proc/$CONTAINER_PID/ns/net ifname=host0 spid=$RNETD ;;
      dnsmasq) start_dnsmasq; ns=/run/netns/$CLI ifname=${P}cv spid=$SERVER_PID ;;
      kea) start_kea; ns=/run/netns/$CLI ifname=${P}cv spid=$SERVER_PID ;;
      kea-mt) start_kea mt; ns=/run/netns/$CLI ifname=${P}cv spid=$SERVER_PID ;;
    esac
    cpu0=$(cpu_secs "$spid")
    read -r sent lps drop < <(perf_run "$ns" "$ifname" "$rate" "$TMP/$server-$rate.out")
    cpu1=$(cpu_secs "$spid")
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
    per10k=$(awk -v c="$cpu" -v l="$lps" -v p="$PERIOD" \
      'BEGIN { if (l > 0) printf "%.3f", c / (l * p) * 10000; else print "n/a" }')
    CPU10K[$server,$rate]=$per10k
    printf '%-8s %8s %10s %10s %8s %10s %12s\n' "$server" "$rate" "$sent" "$lps" "$drop" "$cpu" "$per10k"
    case $server in
      rnet) stop_container ;;
      *) stop_server ;;
    esac
    if awk -v d="$drop" -v m="$MAX_DROP" 'BEGIN { exit !(d < m) }'; then
      BEST_RATE[$server]=$rate
      BEST_LPS[$server]=$lps
    else
      break
    fi
  done
  case $server in
    rnet)
      if [ "$PROFILE" = 1 ] && [ "${BEST_RATE[rnet]}" != 0 ] && command -v perf >/dev/null; then
        start_container benchprof
        perf record -g -o "$TMP/perf.data" -p "$RNETD" -- sleep "$PERIOD" \
          >/dev/null 2>&1 &
        rec=$!
        perf_run "/proc/$CONTAINER_PID/ns/net" host0 "${BEST_RATE[rnet]}" "$TMP/prof.out" \
          >/dev/null
        wait "$rec" || true
        stop_container
        echo "--- rnetd profile at ${BEST_RATE[rnet]}/s (perf report --no-children, top 25, in % of samples)"
        perf report -i "$TMP/perf.data" --no-children -g none --stdio --percent-limit 1 \
          --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' | head -25
      fi
      bench_stop_rnetd
      bench_check_panic
      ip netns del "$HOST" ;;
    *)
      ip netns del "$SRV"; ip netns del "$CLI" ;;
  esac
done

echo
echo "highest rate with < ${MAX_DROP} % lost exchanges (${PERIOD} s per rate, ${CLIENTS} clients):"
printf '%-8s %10s %10s\n' server rate/s leases/s
for server in $SERVERS; do
  printf '%-8s %10s %10s\n' "$server" "${BEST_RATE[$server]}" "${BEST_LPS[$server]}"
done
# CPU per lease where every server keeps up: the highest rate all of them held.
common=
for rate in $RATES; do
  held=1
  for server in $SERVERS; do
    [ "${BEST_RATE[$server]}" -ge "$rate" ] || held=0
  done
  [ "$held" = 1 ] && common=$rate
done
if [ -n "$common" ]; then
  echo
  echo "CPU seconds per 10,000 leases at ${common}/s (held by every server):"
  for server in $SERVERS; do
    printf '%-8s %10s\n' "$server" "${CPU10K[$server,$common]}"
  done
fi
[[ " $SERVERS " == *" rnet "* ]] || exit 0
for other in $SERVERS; do
  [ "$other" = rnet ] && continue
  awk -v r="${BEST_LPS[rnet]}" -v o="${BEST_LPS[$other]}" -v n="$other" \
    'BEGIN { if (o > 0) printf "rnet / %s: %.2f\n", n, r / o; else printf "rnet / %s: n/a\n", n }'
done
