#!/usr/bin/env bash
# Runs COMMAND (an `apt-get install`) so that no package starts or enables a service: firewalld
# started by its postinst would rewrite the ruleset of the machine's own network namespace, which
# nothing of rnet's tests may touch (they run firewalld only inside a test namespace).
#
# - /usr/sbin/policy-rc.d exiting 101 (invoke-rc.d(8), deb-systemd-invoke): no service starts;
#   one already there is kept, ours is removed afterwards, also on failure.
# - firewalld.service, when this install brought firewalld, is disabled again afterwards (its
#   postinst enables it for the next boot); a firewalld installed before is left as it was.
set -euo pipefail
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# rnet: scripts/no-services.sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=1
fi
cleanup() {
  if [ -n "$ours" ]; then rm -f "$policy"; fi
}
trap cleanup EXIT
had_firewalld=""
if dpkg-query -W -f='${Status}' firewalld 2>/dev/null | grep -q "install ok installed"; then
  had_firewalld=1
fi
"$@"
if [ -z "$had_firewalld" ] && [ -e /lib/systemd/system/firewalld.service ] &&
  command -v systemctl >/dev/null; then
  systemctl disable firewalld.service >/dev/null 2>&1 || true
fi
