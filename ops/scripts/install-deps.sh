#!/usr/bin/env bash
# Installs the system packages Alces needs to build and test, if they are missing.
# Idempotent: a second run installs nothing. Needs root (apt-get) on Debian 12.
# Extra package names given as arguments are installed too (bench/run.sh adds fio and MooseFS).
set -euo pipefail
# chromium: the monitor is tested in a real headless browser.
want=(clang libclang-dev fuse3 iproute2 iptables pkg-config chromium "$@")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
