#!/usr/bin/env bash
# rnetd on a host whose firewall is not empty: beside a peer's per-container chains (CNI's
# bridge + portmap layout under iptables-nft: two nat chains and three nat rules per
# container) and Docker's filter table (FORWARD policy drop, DOCKER-USER), which rnetd must
# keep open for its containers.
#
#   sudo ./scripts/bench-hostfw.sh                  # builds this tree; about a minute
#   sudo ./scripts/bench-hostfw.sh BINDIR [BINDIR]  # rnetd and rnet from these dirs (A/B)
#
# Environment: FOREIGN (the peer's containers, default 1000), MACHINES (rnet containers,
# default 100), CHURN (peer containers added one by one while rnet's run, default 100),
# RUNS (`rnet run -n -- true` timed afterwards, default 9).
# Prints per build: rnetd's RSS before its first machine and with MACHINES, the CPU ticks
# (1/100 s; rnetd and the nft processes it waited for) in 10 idle seconds and while the peer
# adds CHURN containers, how long those adds took, and `rnet run -n -- true` p50/max.
# Everything runs in a network namespace of its own (rnh<pid>); nothing touches the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rnh
command -v iptables-nft-restore >/dev/null || scripts/install-deps.sh scripts/packages.txt

FOREIGN=${FOREIGN:-1000}
MACHINES=${MACHINES:-100}
CHURN=${CHURN:-100}
RUNS=${RUNS:-9}

if [ $# = 0 ]; then
    bench_build
    set -- "$BIN"
fi

NS=$P

# The launchers of this run (`rnet --runtime-dir $TMP/run run ...`, found by that command line):
# SIGTERM, and up to 10 s for them to go (each removes its machine's cgroup).
stop_launchers() {
    local me="rnet --runtime-dir $TMP/run run "
    pkill -TERM -f "$me" 2>/dev/null || true
    for _ in $(seq 100); do
        pgrep -f "$me" >/dev/null || return 0
        sleep 0.1
    done
}
bench_on_exit stop_launchers

# The peer's ruleset, as iptables-save would print it.
rules() {
    echo "*nat"
    printf ':%s ACCEPT [0:0]\n' PREROUTING INPUT OUTPUT POSTROUTING
    echo ":CNI-HOSTPORT-DNAT - [0:0]"
    for i in $(seq 0 $((FOREIGN - 1))); do
        printf ':CNI-%024x - [0:0]\n:CNI-DN-%021x - [0:0]\n' "$i" "$i"
    done
    for i in $(seq 0 $((FOREIGN - 1))); do
        a="10.88.$((i / 250)).$((i % 250 + 2))"
        id=$(printf '%064x' "$i")
        printf -- '-A POSTROUTING -s %s/32 -m comment --comment "name: cbr0 id: %s" -j CNI-%024x\n' "$a" "$id" "$i"
        printf -- '-A CNI-%024x -d 10.88.0.0/16 -m comment --comment "name: cbr0 id: %s" -j ACCEPT\n' "$i" "$id"
        printf -- '-A CNI-%024x ! -d 224.0.0.0/4 -m comment --comment "name: cbr0 id: %s" -j MASQUERADE\n' "$i" "$id"
        printf -- '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: cbr0 id: %s" -m multiport --dports %d -j CNI-DN-%021x\n' "$id" $((20000 + i)) "$i"
        printf -- '-A CNI-DN-%021x -p tcp -m tcp --dport %d -j DNAT --to-destination %s:80\n' "$i" $((20000 + i)) "$a"
    done
    echo "COMMIT"
    echo "*filter"
    printf ':%s ACCEPT [0:0]\n' INPUT OUTPUT
    echo ":FORWARD DROP [0:0]"
    echo ":DOCKER-USER - [0:0]"
    echo "-A FORWARD -j DOCKER-USER"
    echo "-A DOCKER-USER -j RETURN"
    echo "COMMIT"
}
rules > "$TMP/rules"

in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$RNETD/stat"; }
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$RNETD/status"; }
listed() { "$1/rnet" --runtime-dir "$TMP/run" list --json 2>/dev/null | grep -c '"network"' || true; }

printf '%-40s %9s %9s %9s %9s %9s %11s %11s\n' build "RSS 0" "RSS M" "idle" "churn" "churn s" "run p50 ms" "run max ms"
for bin in "$@"; do
    rm -rf "$TMP/run" "$TMP/state"
    mkdir -p "$TMP/run" "$TMP/state"
    echo "nameserver 192.0.2.53" > "$TMP/resolv.conf"
    bench_netns "$NS"
    in_ns iptables-nft-restore < "$TMP/rules"
    BIN=$bin bench_start_rnetd "$NS" --resolv-conf "$TMP/resolv.conf" --log warn
    sleep 2
    rss0=$(rss)
    for i in $(seq 1 "$MACHINES"); do
        in_ns "$bin/rnet" --runtime-dir "$TMP/run" run -n -M "m$i" -- sleep 3600 > /dev/null 2>&1 &
        if (( i % 25 == 0 )); then sleep 1; fi
    done
    for _ in $(seq 1 120); do
        [ "$(listed "$bin")" -ge "$MACHINES" ] && break
        sleep 1
    done
    n=$(listed "$bin")
    sleep 3
    rssm=$(rss)
    t0=$(ticks); sleep 10; idle=$(( $(ticks) - t0 ))
    t0=$(ticks); s0=$(date +%s%N)
    for i in $(seq 1 "$CHURN"); do
        in_ns iptables-nft -t nat -N "CNI-X$i"
        in_ns iptables-nft -t nat -A "CNI-X$i" -j MASQUERADE
        in_ns iptables-nft -t nat -A POSTROUTING -s "10.99.$((i / 250)).$((i % 250))" -j "CNI-X$i"
    done
    churn_s=$(( ($(date +%s%N) - s0) / 1000000 ))
    sleep 3
    churn=$(( $(ticks) - t0 ))
    times=()
    for r in $(seq 1 "$RUNS"); do
        s=$(date +%s%N)
        in_ns "$bin/rnet" --runtime-dir "$TMP/run" run -n -M "t$r" -- true > /dev/null 2>&1 || true
        times+=($(( ($(date +%s%N) - s) / 100000 )))
        sleep 0.3
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    p50=$(echo "$sorted" | sed -n "$(( (RUNS + 1) / 2 ))p")
    max=$(echo "$sorted" | tail -1)
    label="$bin ($n of $MACHINES attached)"
    printf '%-40s %9s %9s %9s %9s %9s %11s %11s\n' "$label" "$rss0" "$rssm" "$idle" "$churn" \
        "$(awk "BEGIN {print $churn_s / 1000}")" "$(awk "BEGIN {print $p50 / 10}")" "$(awk "BEGIN {print $max / 10}")"
    stop_launchers
    sleep 2
    bench_stop_rnetd
    ip netns del "$NS"
done
echo "(RSS in MiB; idle and churn in CPU ticks of 10 ms, rnetd and the nft processes it ran)"
