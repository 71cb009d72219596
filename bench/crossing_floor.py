#!/usr/bin/env python3
"""Benchmark: the least a crossing costs on this machine, next to prefork and this module
(issue 15).

bench/crossing_floor.c answers the random-tenant keep-alive load of bench/many_tenants.py
(wrk -t2 -c32, a random host of TENANTS per request, 1 KiB answers) in two shapes with no
Apache in them: `direct` (each process answers its own connection, prefork's shape) and
`crossing` (a multiplexer reads each head and passes the descriptor to the tenant's worker,
the architecture's shape, with N = 3 and N = TENANTS workers). Server CPU per request
(/proc/PID/schedstat of the session) of crossing minus direct is what the crossing alone
costs: no logging, no files, no Apache, no module code. Added to prefork's own CPU per
request (measured in the same run with bench/many_tenants.py's prefork server), it gives the
highest ratio to prefork any implementation of the architecture could reach here:
prefork / (prefork + floor).

Rounds are interleaved (ROUNDS, default 5); medians are printed. PAGES (default 0) makes
each crossing worker touch that many private pages per request, as a worker touches its
memory (bench/footprint.py: about 95). Run as root: `python3 bench/crossing_floor.py`.
Loopback only, bounded in time. Writes nothing; BENCHMARKS.md has the findings.
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_tenants as mt  # noqa: E402
from bench import session_cpu  # noqa: E402
from harness import free_port  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
PAGES = os.environ.get("PAGES", "0")
HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = "/tmp/crossing_floor"


class Program:
    """crossing_floor in a session of its own; `pid()` is what session_cpu needs."""

    def __init__(self, *args):
        self.port = free_port()
        self.process = subprocess.Popen([BINARY, args[0], str(self.port), *args[1:]],
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"crossing_floor {args} did not listen")

    def pid(self):
        return self.process.pid

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)


def measure(server):
    """(req/s, server µs of CPU per request) for one wrk round of random-tenant keep-alive."""
    before = session_cpu(server)
    rps, _p99, non2xx, errors = mt.run_wrk(server, True, False)
    used = session_cpu(server) - before
    if non2xx or errors:
        print(f"  ({non2xx} non-2xx, {errors} socket errors)")
    return rps, used / (rps * mt.DURATION) * 1e6


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates users and starts Apache)")
    subprocess.run(["cc", "-O2", "-Wall", "-o", BINARY, os.path.join(HERE, "crossing_floor.c")], check=True)
    mt.install()
    mt.bench.DURATION = mt.DURATION
    for user in mt.users():
        mt.ensure_account(user)
    tenants = mt.TENANTS
    shapes = {"direct": ("direct",),
              "crossing, 3 tenants": ("crossing", "3", PAGES),
              f"crossing, {tenants} tenants": ("crossing", str(tenants), PAGES)}
    servers = {}
    try:
        for kind in ("prefork", "peruser"):
            servers[kind] = mt.configure(kind)
            servers[kind].start(ports=(servers[kind].port,), timeout=60)
        for name, args in shapes.items():
            servers[name] = Program(*args)
        mt.first_touch(servers["peruser"])
        results = {name: [] for name in servers}
        for round_number in range(ROUNDS):
            for name, server in servers.items():
                # 3 tenants: the random host is taken among 3 (the Lua script's count).
                saved = mt.TENANTS
                mt.TENANTS = 6 if name == "crossing, 3 tenants" else saved
                try:
                    results[name].append(measure(server))
                finally:
                    mt.TENANTS = saved
                print(f"round {round_number + 1} {name}: {results[name][-1][0]:.0f} req/s, "
                      f"{results[name][-1][1]:.1f} µs per request", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    medians = {name: (statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows))
               for name, rows in results.items()}
    print(f"\nmedians of {ROUNDS} rounds, PAGES={PAGES}, {tenants} tenants:")
    for name, (rps, cpu) in medians.items():
        print(f"  {name}: {rps:.0f} req/s, {cpu:.1f} µs of server CPU per request")
    prefork_cpu = medians["prefork"][1]
    print(f"  peruser / prefork: {medians['peruser'][0] / medians['prefork'][0]:.2f} (req/s)")
    for name in shapes:
        if name == "direct":
            continue
        floor = medians[name][1] - medians["direct"][1]
        print(f"  {name}: the crossing costs {floor:.1f} µs; the best CPU ratio to prefork "
              f"({prefork_cpu:.1f} µs) is {prefork_cpu / (prefork_cpu + floor):.2f}")


if __name__ == "__main__":
    main()
