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
cargo build --release --quiet -p rnet-netd -p rnet-launcher --bins
BIN=$PWD/target/release

HOST=rnetdemo-host UPLINK=rnetdemo-uplink
WORK=$(mktemp -d /tmp/rnetdemo.XXXXXX)
chmod 755 "$WORK"
RNETD_PID="" PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait "${PIDS[@]}" 2>/dev/null
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

step "launch two containers with --network-veth"
for m in web database-primary-01; do
  nsenter --net=/run/netns/$HOST -- "$BIN/rnet" --runtime-dir "$WORK/run" run -n -M $m -- sleep 300 \
    >/dev/null 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 100); do [ "$(rnet list --json | grep -c '"machine"')" = 2 ] && break; sleep 0.05; done
rnet list

step "host side: ve- links (a long name is hashed like systemd, the full name kept as altname)"
inhost ip -d link show type veth | grep -E '^[0-9]+:|altname|link/ether' | sed 's/^/  /'
inhost ip -br addr show type veth

step "status of database-primary-01"
rnet status database-primary-01

step "inside web: host0, its address and default route"
WEB_PID=$(rnet status web --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
nsenter --net=/proc/$WEB_PID/ns/net -- ip -br addr
nsenter --net=/proc/$WEB_PID/ns/net -- ip route

step "ping: host -> web, web -> host"
WEB_ADDR=$(rnet status web --json | sed -n 's/.*"container_address": "\([0-9.]*\)".*/\1/p')
WEB_GW=$(rnet status web --json | sed -n 's/.*"host_address": "\([0-9.]*\)".*/\1/p')
inhost ping -c1 -W2 "$WEB_ADDR" | sed -n 2p
nsenter --net=/proc/$WEB_PID/ns/net -- ping -c1 -W2 "$WEB_GW" | sed -n 2p

step "a payload's exit code comes back through rnet"
set +e; rnet run -n -M short-lived -- sh -c 'echo "hello from $(hostname) at $(ip -4 -br addr show host0 | awk "{print \$3}")"; exit 42'; code=$?; set -e
echo "exit code: $code"

step "stop web with SIGTERM: its links disappear"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || echo "rnet exited with $?"
rnet list
inhost ip -br link show type veth

step "rnetd log"
sed 's/^/  /' "$WORK/rnetd.log"
step "done; cleaning up"
