#!/usr/bin/env python3
"""Launch latency and memory of nsrun, next to the classic ip(8) way, in a private test world.

Run as root from the checkout: `sudo .venv/bin/python scripts/bench.py [--runs N]`. Everything
happens in fresh namespaces (tests/world.sh); nothing touches this machine's network or firewall.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.world import World

# The classic manual way, as a user would script it: one namespace, veth, bridge port, address,
# route, run, delete. Bridge nsbr0 (10.77.0.1/24) is set up once before the runs.
CLASSIC_SETUP = """
ip link add nsbr0 type bridge && ip addr add 10.77.0.1/24 dev nsbr0 && ip link set nsbr0 up
"""
CLASSIC_LAUNCH = """
set -e
ip netns add peer
ip link add vpeer type veth peer name eth0 netns peer
ip link set vpeer master nsbr0 up
ip -n peer link set lo up
ip -n peer addr add 10.77.0.2/24 dev eth0
ip -n peer link set eth0 up
ip -n peer route add default via 10.77.0.1
ip netns exec peer true
ip link del vpeer
ip netns del peer
"""


def timed(world: World, argv: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = world.run(*argv)
        samples.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{argv}: exit {result.returncode}: {result.stderr}")
    return samples


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{name:<34} median {statistics.median(samples):7.1f} ms   p90 {p90:7.1f} ms   n={len(samples)}"


def parallel(world: World, count: int) -> float:
    start = time.perf_counter()
    procs = [world.nsrun_popen("--", "sleep", "1") for _ in range(count)]
    for proc in procs:
        proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"parallel launch failed: {proc.returncode}")
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    nsrun = [sys.executable, "-m", "nsrun"]
    world = World()
    try:
        world.run("sh", "-c", CLASSIC_SETUP)
        world.nsrun("--", "true")  # first use creates the default network: not part of a launch
        print(row("python3 -c pass (interpreter floor)", timed(world, [sys.executable, "-c", "pass"], args.runs)))
        print(row("classic ip(8) netns + veth + run", timed(world, ["sh", "-c", CLASSIC_LAUNCH], args.runs)))
        print(row("nsrun --net host -- true", timed(world, [*nsrun, "--net", "host", "--", "true"], args.runs)))
        print(row("nsrun --net none -- true", timed(world, [*nsrun, "--net", "none", "--", "true"], args.runs)))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(row("nsrun --net bridge -- true", timed(world, [*nsrun, "--", "true"], args.runs)))
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"{'peak RSS of one process (KiB)':<34} {max(peak, before)}  (largest child: nsrun or a test tool)")
        print(f"{'24 parallel launches of sleep 1':<34} {parallel(world, 24):7.0f} ms wall in all")
        leftovers = [name for name in world.links() if name.startswith("nsv")]
        print(f"{'host veths left afterwards':<34} {len(leftovers)}")
    finally:
        world.close()


if __name__ == "__main__":
    main()
