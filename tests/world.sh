#!/bin/bash
# A private world for one test: started as `unshare --net --mount --propagation private world.sh`, it
# plays "the host" in fresh namespaces, with tmpfs over /run (nsrun's leases and locks, /run/netns,
# the xtables lock) and /var/lib/nsrun, and an uplink to a netns "wan" (host 203.0.113.1 and
# 2001:db8:ff::1, server 203.0.113.10 and 2001:db8:ff::10: documentation addresses). Nothing reaches
# the real machine's network, firewall or state. It prints "ready" and sleeps until killed.
set -euo pipefail
mount -t tmpfs world /run
mkdir -p /run/netns /run/nsrun /run/world/upper /run/world/work
# /var/lib through a private overlay, so that not even the mount point /var/lib/nsrun is created on
# the real machine; then a tmpfs hides whatever state the real machine's nsrun keeps there.
mount -t overlay world -o lowerdir=/var/lib,upperdir=/run/world/upper,workdir=/run/world/work /var/lib
mkdir -p /var/lib/nsrun
mount -t tmpfs world /var/lib/nsrun
ip link set lo up
ip netns add wan
ip link add uplink type veth peer name wan0
ip link set wan0 netns wan
ip addr add 203.0.113.1/24 dev uplink
ip addr add 2001:db8:ff::1/64 dev uplink nodad
ip link set uplink up
ip -n wan addr add 203.0.113.10/24 dev wan0
ip -n wan addr add 2001:db8:ff::10/64 dev wan0 nodad
ip -n wan link set wan0 up
ip -n wan link set lo up
ip route add default via 203.0.113.10
ip -6 route add default via 2001:db8:ff::10
echo ready
exec sleep infinity
