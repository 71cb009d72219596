#!/usr/bin/env python3
"""Benchmark: what a process that last ran N connections ago costs Apache here (issue 15).

Under a random tenant per request, each request at 300 tenants lands in a process (that
tenant's worker) that last ran about 300 requests ago. This measures that cost with no
routing, no isolation and no code of this module: prefork with N idle children (SIZES,
default 40,100,300) on a random tenant per request with `Connection: close`, next to prefork
with Debian's limits (5 to 10 children, which stay warm). The children wait in accept(), and
the kernel gives each new connection to the child that has waited longest, so each
connection runs in a child that last ran about N connections ago; every child's pages are
shared with its siblings as far as prefork shares them, so this is the best any design with
a process per tenant can do on this machine. The output says how many of each server's
children answered requests (the rotation happened).

Keep-alive cannot be measured the same way: a kept-alive connection stays with its child, and
with more connections than the cores serve at once a child finds its next request already
there and stays warm (with 300 connections and 300 children: 0.98 × prefork).

Servers from bench/many_tenants.py (TENANTS tenants, default 300), REPEATS interleaved rounds
(BENCH_REPEATS, default 3) of BENCH_SECONDS (5); medians of req/s and of the server's CPU per
request. Writes nothing; the findings are in BENCHMARKS.md.

Run as root: `python3 bench/rotation_floor.py`. Loopback only, bounded in time.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_tenants as mt  # noqa: E402
import bench  # noqa: E402
from bench import install  # noqa: E402

SIZES = [int(n) for n in os.environ.get("SIZES", "40,100,300").split(",") if n]


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates users and starts Apache)")
    install()
    bench.DURATION = mt.DURATION
    for user in mt.users():
        mt.ensure_account(user)
    servers = {"prefork": mt.configure("prefork")}
    servers.update({f"prefork, {n} children rotating": mt.configure("prefork-rotating", rotating_children=n)
                    for n in SIZES})
    results = {name: [] for name in servers}
    try:
        for apache in servers.values():
            apache.start(ports=(apache.port,), timeout=120)
        time.sleep(5)
        for apache in servers.values():
            mt.first_touch(apache)
        for round_ in range(mt.REPEATS):
            for name, apache in servers.items():
                rps, _, non2xx, socket_errors, cpu_us = mt.measured_wrk(apache, True, True)
                results[name].append((rps, cpu_us))
                print(f"{name:32} round {round_ + 1}: {rps:8.0f} req/s  server CPU {cpu_us:6.1f} us/req  "
                      f"errors {non2xx + socket_errors}", flush=True)
        rotations = {name: mt.rotation(apache) for name, apache in servers.items() if name != "prefork"}
    finally:
        for apache in servers.values():
            apache.stop()
            apache.cleanup()
    base = statistics.median(rps for rps, _ in results["prefork"])
    print(f"\n{mt.TENANTS} tenants, a random tenant per request, Connection: close, "
          f"{mt.REPEATS} interleaved rounds, medians:")
    for name, runs in results.items():
        rps = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        line = f"  {name:32} {rps:8.0f} req/s  {rps / base:.2f} × prefork  {cpu:6.1f} µs per request"
        if name in rotations:
            took, children, each = rotations[name]
            line += f"  ({took} of {children} children answered, a median of {each:.0f} requests each)"
        print(line)


if __name__ == "__main__":
    main()
