#!/usr/bin/env bash
# Installs nsrun on a Debian 12 (or newer) machine, as root:
#   scripts/setup.sh                 system packages, then nsrun in a venv at /opt/nsrun, linked as /usr/local/bin/nsrun
#                                    and its CNI plugin as /usr/lib/cni/nsrun (and /opt/cni/bin/nsrun if that exists)
#   scripts/setup.sh --system        system packages only (what the test suite needs from apt)
#   scripts/setup.sh --bench         what scripts/bench compares nsrun with (CNI plugins, netavark, iperf3, matplotlib)
#   scripts/setup.sh --link VENV     make Debian's libseccomp binding importable in VENV
#   scripts/setup.sh --help          this text
# Debian's python3 refuses system-wide pip installs (PEP 668), so nsrun lives in its own venv and only
# the entry point is linked onto root's PATH, where `sudo nsrun` finds it (NSRUN_PREFIX and
# NSRUN_BIN_DIR change both places; NSRUN_CNI_DIRS, space-separated, where the CNI plugin goes). Needs
# network access to Debian's package mirror and to PyPI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${NSRUN_PREFIX:-/opt/nsrun}
bin_dir=${NSRUN_BIN_DIR:-/usr/local/bin} # where the `nsrun` command is linked
# where container engines look for CNI plugins: Debian's (Podman's) and containerd's/Kubernetes' default
cni_dirs=${NSRUN_CNI_DIRS:-/usr/lib/cni /opt/cni/bin}

# iproute2: the tests build their private worlds with ip(8); gcc + python3-dev: python-iptables compiles a
# small C helper at install; iptables/nftables: the libraries the firewall backends load (and the CLIs
# that `nsrun doctor` and users read rules with); python3-seccomp: libseccomp's own Python binding, which
# builds the sandbox's seccomp filter (not on PyPI; linked into the venv).
packages=(python3 python3-venv python3-dev gcc iproute2 iptables nftables libnftables1 python3-seccomp util-linux procps)
# the test suite's CNI peers: the reference plugins (portmap chained after nsrun), Podman with runc as a
# real engine, and a static busybox to build the containers' root filesystem from
test_packages=(containernetworking-plugins podman runc busybox-static)
# the benchmark's peers (the CNI bridge plugin, Podman's netavark), its TCP meter and its chart
bench_packages=(containernetworking-plugins netavark iperf3 python3-matplotlib)

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

require_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: must run as root (try: sudo $0)" >&2
    exit 1
  fi
}

install_system_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# libseccomp's binding is one extension module built for Debian's python3: link just that module
# into the venv (a --system-site-packages venv would let every Debian python3-* package leak in).
link_system_modules() {
  local venv=$1 module site
  module=$(/usr/bin/python3 -c 'import seccomp; print(seccomp.__file__)')
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sf "$module" "$site/"
}

install_nsrun() {
  /usr/bin/python3 -m venv "$prefix"
  # wheel first: python-iptables then builds as a wheel, without pip's legacy `setup.py install` warning
  "$prefix/bin/pip" install -q --disable-pip-version-check wheel
  "$prefix/bin/pip" install -q --disable-pip-version-check "$here"
  link_system_modules "$prefix"
  write_launcher "$prefix" nsrun-launcher nsrun.cli.entry
  write_launcher "$prefix" nsrun-cni-launcher nsrun.cni.entry
  ln -sf "$prefix/bin/nsrun-launcher" "$bin_dir/nsrun"
  echo "setup.sh: nsrun installed in $prefix, linked as $bin_dir/nsrun"
  install_cni_plugin
}

# The CNI plugin: `nsrun` in the engines' plugin directory (the conflist's "type": "nsrun"). The first
# directory is made if missing; the others get it only where they exist (an engine that uses them).
install_cni_plugin() {
  local first=1 dir linked=()
  for dir in $cni_dirs; do
    if ((first)); then mkdir -p "$dir"; fi
    first=0
    [[ -d $dir ]] || continue
    ln -sf "$prefix/bin/nsrun-cni-launcher" "$dir/nsrun"
    linked+=("$dir/nsrun")
  done
  echo "setup.sh: CNI plugin linked as ${linked[*]}"
}

# The command users run starts lean: pip's console script starts Python with its site machinery
# (every .pth file of the venv), about 15 ms before nsrun's first line. `-IS` skips that (and
# ignores PYTHON* variables and the user's site); the venv's packages are put on the path by hand.
write_launcher() {
  local venv=$1 name=$2 module=$3 site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cat >"$venv/bin/$name" <<LAUNCHER
#!$venv/bin/python3 -IS
# $module, started without Python's site machinery (written by nsrun's scripts/setup.sh)
import sys
sys.path[:0] = ["$site"]
from $module import main
main()
LAUNCHER
  chmod 755 "$venv/bin/$name"
}

case ${1:-} in
  -h | --help) usage ;;
  --system) require_root && install_system_packages "${packages[@]}" "${test_packages[@]}" ;;
  --bench) require_root && install_system_packages "${bench_packages[@]}" ;;
  --link) link_system_modules "${2:?usage: setup.sh --link VENV}" ;;
  "") require_root && install_system_packages "${packages[@]}" && install_nsrun ;;
  *) usage >&2 && exit 2 ;;
esac
