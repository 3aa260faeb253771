#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages listed in the given lists (default scripts/packages.txt)
# that are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
lists=("$@")
((${#lists[@]})) || lists=(scripts/packages.txt)
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "${lists[@]}")
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service may start on install (podman's package enables units): a policy-rc.d that
  # refuses every start, removed afterwards unless one was already there.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
