#!/usr/bin/env bash
# The benchmark harness, one command (as root, on a fresh Debian/Ubuntu machine):
#
#   sudo ./scripts/bench.sh            # about 15 minutes on 2 cores; figures, then JSON lines
#
# 1. tests/benches/fabric.rs: `rnet run -n -- true`, rnetd's attach and detach alone, zones,
#    teardown, rnetd's RSS, at N = 1, 10, 100, 1000 live containers, against
#    `systemd-nspawn --network-veth` and the CNI chain (bridge + host-local + portmap) sample by
#    sample, and the data path with iperf3 (RNET_BENCH_N, RNET_BENCH_RUNS, RNET_BENCH_PEER_MAX).
# 2. scripts/bench-dhcp.sh: rnetd's DHCP server against dnsmasq, Kea and multi-threaded Kea,
#    with CPU seconds per 10,000 leases (RATES, PERIOD).
# 3. scripts/bench-dns.sh: the DNS forwarder against dnsmasq.
# 4. tests/benches/multihost.rs: zones across hosts (3 hosts, 3 etcd members): member start in a
#    distributed vs a local zone, iperf3 between members on two hosts vs the plain underlay, a
#    join with 50 other hosts' keys in etcd (RNET_BENCH_RUNS).
# 5. scripts/bench-hostfw.sh: rnetd beside a peer's 1000 containers' nft chains and Docker's
#    filter table: memory, idle CPU, CPU while the peer adds containers, `rnet run`.
# 6. scripts/bench-burst.sh: 50, 100 and 200 `rnet run` started at once into one rnetd, then
#    1000 in bursts of 100: failures (must be 0), time to attach all, launcher wall times
#    (BURSTS, TOTAL, STEP).
# Everything runs in network namespaces of its own and is removed at the end. The method and the
# last figures: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/bench.sh: run as root (it creates network namespaces)" >&2; exit 1; }
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh scripts/packages.txt scripts/packages-bench.txt

echo "== fabric (tests/benches/fabric.rs)"
cargo bench --quiet -p rnet-tests --bench fabric
echo
echo "== DHCP (scripts/bench-dhcp.sh)"
RATES=${RATES:-"250 1000 2000 4000 6000 8000 10000"} PERIOD=${PERIOD:-5} scripts/bench-dhcp.sh
echo
echo "== DNS (scripts/bench-dns.sh)"
scripts/bench-dns.sh
echo
echo "== zones across hosts (tests/benches/multihost.rs)"
cargo bench --quiet -p rnet-tests --bench multihost
echo
echo "== beside other firewalls (scripts/bench-hostfw.sh)"
scripts/bench-hostfw.sh
echo
echo "== many launches at once (scripts/bench-burst.sh)"
scripts/bench-burst.sh
