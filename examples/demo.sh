#!/usr/bin/env bash
# The rnet demo: the whole fabric on a self-contained default, in namespaces of its own.
#
#   [rnetdemo-uplink]  203.0.113.1/24  ("the internet")
#          | veth
#   [rnetdemo-host]    203.0.113.2/24  rnetd runs here
#          | ve-* links built by rnetd
#   [containers]       started with `rnet run`
#
# Run as root. Installs missing system packages, builds rnet, runs, and removes everything it
# made on exit (also on Ctrl-C or failure). Never touches this machine's real network.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "examples/demo.sh: run as root" >&2; exit 1; }
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cargo build --release --quiet -p rnet-netd -p rnet-launcher -p rnet-tests --bins
BIN=$PWD/target/release

HOST=rnetdemo-host UPLINK=rnetdemo-uplink
WORK=$(mktemp -d /tmp/rnetdemo.XXXXXX)
chmod 755 "$WORK"
RNETD_PID="" PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  # (A bare `wait` would wait for rnetd too.)
  ((${#PIDS[@]})) && wait "${PIDS[@]}" 2>/dev/null
  [ -n "$RNETD_PID" ] && kill "$RNETD_PID" 2>/dev/null && wait "$RNETD_PID" 2>/dev/null
  ip netns del "$HOST" 2>/dev/null
  ip netns del "$UPLINK" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inhost() { nsenter --net=/run/netns/$HOST -- "$@"; }
rnet() { inhost "$BIN/rnet" --runtime-dir "$WORK/run" "$@"; }

step "topology: host and uplink namespaces"
ip netns del "$HOST" 2>/dev/null || true
ip netns del "$UPLINK" 2>/dev/null || true
ip netns add "$HOST"; ip netns add "$UPLINK"
ip link add demo-up netns "$HOST" type veth peer name demo-dn netns "$UPLINK"
ip -n "$HOST" addr add 203.0.113.2/24 dev demo-up
ip -n "$UPLINK" addr add 203.0.113.1/24 dev demo-dn
for ns in "$HOST" "$UPLINK"; do ip -n "$ns" link set lo up; done
ip -n "$HOST" link set demo-up up; ip -n "$UPLINK" link set demo-dn up
ip -n "$HOST" route add default via 203.0.113.1
ip -n "$HOST" -br addr

step "start rnetd in the host namespace"
# Background processes are started with nsenter itself (it execs), so $! is their pid.
nsenter --net=/run/netns/$HOST -- "$BIN/rnetd" --runtime-dir "$WORK/run" --state-dir "$WORK/state" \
  --dns 203.0.113.1 >/dev/null 2>"$WORK/rnetd.log" &
RNETD_PID=$!
for _ in $(seq 100); do [ -S "$WORK/run/rnetd.sock" ] && break; sleep 0.05; done

step "an echo server on the uplink (\"the internet\"); it answers with the address it sees"
nsenter --net=/run/netns/$UPLINK -- "$BIN/netprobe" serve tcp:7000 >/dev/null 2>&1 & PIDS+=($!)

step "launch containers: web (-n, port 8080 published), a long-named one, two in zone backend"
bg() { nsenter --net=/run/netns/$HOST -- "$BIN/rnet" --runtime-dir "$WORK/run" run "$@" >/dev/null 2>&1 & PIDS+=($!); }
bg -n -M web -p 8080:80 -p udp:5353:53 -- "$BIN/netprobe" serve tcp:80 udp:53
bg -n -M database-primary-01 -- sleep 300
bg --network-zone=backend -M api-1 -- "$BIN/netprobe" serve tcp:80
bg --network-zone=backend -M api-2 -- sleep 300
for _ in $(seq 200); do [ "$(rnet list --json | grep -c '"machine"')" = 4 ] && break; sleep 0.05; done
rnet list
rnet zone list

step "host side: ve-/vb- links and the zone bridge (long names hashed like systemd, full name as altname)"
inhost ip -br link show type veth
inhost ip -br link show type bridge
inhost ip -d link show dev ve-databasezi4P | grep -E '^[0-9]+:|altname' | sed 's/^ */  /'

step "status of web"
rnet status web
json() { rnet status "$1" --json | sed -n "s/.*\"$2\": \"\{0,1\}\([^\",]*\).*/\1/p" | head -1; }
WEB_PID=$(json web pid); WEB_ADDR=$(json web container_address); WEB_GW=$(json web host_address)
API1_ADDR=$(json api-1 container_address); API2_PID=$(json api-2 pid)

step "inside web: host0 configured before the payload started"
nsenter --net=/proc/$WEB_PID/ns/net -- ip -br addr
nsenter --net=/proc/$WEB_PID/ns/net -- ip route

step "ping host <-> web"
inhost ping -c1 -W2 "$WEB_ADDR" | sed -n 2p
nsenter --net=/proc/$WEB_PID/ns/net -- ping -c1 -W2 "$WEB_GW" | sed -n 2p

step "web -> the internet: masqueraded, the uplink sees the host's address"
nsenter --net=/proc/$WEB_PID/ns/net -- "$BIN/netprobe" connect tcp 203.0.113.1 7000

step "the internet -> host:8080 (tcp) and :5353 (udp) -> web: web sees the real client"
nsenter --net=/run/netns/$UPLINK -- "$BIN/netprobe" connect tcp 203.0.113.2 8080
nsenter --net=/run/netns/$UPLINK -- "$BIN/netprobe" connect udp 203.0.113.2 5353
step "the host's own 127.0.0.1:8080 -> web (systemd issue #6106, solved)"
inhost "$BIN/netprobe" connect tcp 127.0.0.1 8080

step "zone backend: api-2 reaches api-1 directly; web (another link) cannot"
nsenter --net=/proc/$API2_PID/ns/net -- "$BIN/netprobe" connect tcp "$API1_ADDR" 80
nsenter --net=/proc/$WEB_PID/ns/net -- "$BIN/netprobe" connect tcp "$API1_ADDR" 80 || echo "(refused by the fabric, as it should be)"

if command -v udhcpc >/dev/null; then
  step "a real DHCP client in a new container gets the address rnet configured (rnetd's DHCP server)"
  cat > "$WORK/udhcpc.sh" <<'SH'
#!/bin/sh
[ "$1" = bound ] && echo "udhcpc got $ip/$mask router $router dns $dns"
exit 0
SH
  chmod +x "$WORK/udhcpc.sh"
  rnet run -n -M dhcp-demo -- sh -c "echo \"configured: \$(ip -4 -br addr show host0 | awk '{print \$3}')\"; udhcpc -i host0 -n -q -f -t 3 -s $WORK/udhcpc.sh 2>/dev/null"
fi

step "the firewall: one table, sets and maps; a container costs elements, not rules"
inhost nft list table inet rnet | sed -n '1,60p'

step "a payload's exit code comes back through rnet"
set +e; rnet run -n -M short-lived -- sh -c 'exit 42'; code=$?; set -e
echo "exit code: $code"

step "stop everything: links, zone bridge, table and forwarding go with the last container"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${PIDS[@]}" 2>/dev/null || true
PIDS=()
for _ in $(seq 100); do [ "$(rnet list --json | grep -c '"machine"')" = 0 ] && break; sleep 0.05; done
rnet list
inhost ip -br link
inhost nft list table inet rnet 2>/dev/null || echo "no table inet rnet: nothing of ours left"

step "rnetd log"
sed 's/^/  /' "$WORK/rnetd.log"
step "done; cleaning up"
