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
  # No service may start or stay enabled on install (firewalld, podman's units):
  # scripts/no-services.sh.
  apt-get update -qq
  scripts/no-services.sh apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
