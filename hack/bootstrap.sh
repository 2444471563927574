#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian 12 machine
# (run as root): Debian packages, then a Python venv in .venv from the pinned
# requirements. Safe to run again: each step is skipped when already done.
# --full: also what only the tier-two tests need (hack/test.sh --full).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NETNS_EXPOSE_VENV:-$repo/.venv}

apt_packages=(
  iproute2 iptables nftables conntrack util-linux procps
  iputils-ping curl socat git rsync
  python3 python3-venv
  # The system Python is the managed-host interpreter of the pyroute2 0.7.x tests.
  python3-pyroute2
  # The lab's machines (tests/lab/machines.py): the image, the local repository, booting, SSH.
  mmdebstrap systemd-container apt-utils openssh-client
  # explain.yml's pictures: rsvg-convert makes the PNG of each SVG.
  librsvg2-bin
)
if [ "${1:-}" = "--full" ]; then
  # Tier two: tests/integration/test_explain_picture.py opens explain.yml's pictures in Chromium.
  apt_packages+=(chromium)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$(cat "$repo/requirements-controller.txt" "$repo/requirements-test.txt" "$repo/constraints.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "bootstrap: building the Python venv in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    -r "$repo/requirements-test.txt" -c "$repo/constraints.txt"
  echo "$stamp" > "$venv/.requirements-stamp"
fi
