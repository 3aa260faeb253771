#!/usr/bin/env bash
# The whole test suite: lints, unit tests, and the end-to-end tests in network namespaces.
# Run as root on Linux. Installs the system packages it needs. Never touches the real host
# network: every test builds its own namespaces and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (the tests create network namespaces)" >&2; exit 1; }
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh

# Privileged tests must run here: a skip would hide a failure.
export RNET_REQUIRE_PRIVILEGED=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# Nothing may be left behind (cgroups: the launcher's rnet-NAME ones).
left=""
ns=$(ip netns list | awk '{print $1}' | grep '^rnt' || true)
[ -z "$ns" ] || left+=" netns:$ns"
links=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(ve-|vb-|vz-|mv-|iv-)' || true)
[ -z "$links" ] || left+=" links:$links"
tables=$(nft list tables 2>/dev/null | grep -w rnet || true)
[ -z "$tables" ] || left+=" nft:$tables"
cgroups=$(find /sys/fs/cgroup -maxdepth 6 -type d -name 'rnet-*' 2>/dev/null || true)
[ -z "$cgroups" ] || left+=" cgroups:$cgroups"
procs=$(pgrep -x rnetd || true)
[ -z "$procs" ] || left+=" rnetd:$procs"
if [ -n "$left" ]; then
  echo "test suite left things behind:$left" >&2
  exit 1
fi
echo "all tests passed; nothing left behind"
