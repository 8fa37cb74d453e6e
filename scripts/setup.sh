#!/usr/bin/env bash
# Installs nsrun on a Debian 12 (or newer) machine, as root:
#   scripts/setup.sh            system packages, then nsrun in a venv at /opt/nsrun, linked as /usr/local/bin/nsrun
#   scripts/setup.sh --system   system packages only (what the test suite needs from apt)
# Debian's python3 refuses system-wide pip installs (PEP 668), so nsrun lives in its own venv and only
# the entry point is linked onto root's PATH, where `sudo nsrun` finds it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${NSRUN_PREFIX:-/opt/nsrun}

# iproute2: the tests build their private worlds with ip(8); gcc + python3-dev: python-iptables compiles a
# small C helper at install; iptables/nftables: the libraries the firewall backends load (and the CLIs
# that `nsrun doctor` and users read rules with).
packages=(python3 python3-venv python3-dev gcc iproute2 iptables nftables libnftables1 util-linux procps)

install_system_packages() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: must run as root (try: sudo $0)" >&2
    exit 1
  fi
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_nsrun() {
  /usr/bin/python3 -m venv "$prefix"
  "$prefix/bin/pip" install -q --disable-pip-version-check "$here"
  ln -sf "$prefix/bin/nsrun" /usr/local/bin/nsrun
  echo "setup.sh: nsrun installed in $prefix, linked as /usr/local/bin/nsrun"
}

install_system_packages
[[ ${1:-} == --system ]] || install_nsrun
