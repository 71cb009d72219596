#!/usr/bin/env python3
"""Two builds of this MPM side by side: the same configuration (bench.py's peruser one) and the
same scenarios, interleaved (A B A B ...), medians. For a refactor that must not change speed.

    python3 bench/compare_builds.py BEFORE.so AFTER.so     (as root; BENCH_REPEATS, BENCH_SECONDS,
                                                           BENCH_ONLY as for bench.py)
Prints a Markdown table; writes nothing.
"""
import statistics
import sys
import time

import bench


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    builds = {"before": sys.argv[1], "after": sys.argv[2]}
    bench.install()
    scenarios = [s for s in bench.SCENARIOS if "CGI" not in s[0] and (not bench.ONLY or bench.ONLY in s[0])]
    results = {(s[0], b): [] for s in scenarios for b in builds}
    servers = {}
    try:
        for name, module in builds.items():
            bench.MODULE = module
            servers[name] = bench.configure("peruser")
            servers[name].start(ports=(servers[name].port,))
        time.sleep(3)
        for server in servers.values():
            bench.warm(server.port)
        for scenario, path, close, lua in scenarios:
            for round_ in range(bench.REPEATS):
                for name, server in servers.items():
                    before = bench.session_cpu(server)
                    r = bench.wrk(server.port, path, close, lua)
                    cpu_us = (bench.session_cpu(server) - before) * 1e6 / max(r[0] * bench.DURATION, 1)
                    results[(scenario, name)].append(r + (cpu_us,))
                    print(f"{scenario:32} {name:6} round {round_ + 1}: {r[0]:9.0f} req/s  p99 {r[1]:7.2f} ms  "
                          f"errors {r[2] + r[3]}  server CPU {cpu_us:6.1f} us/req", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()

    def median(scenario, name, index):
        return statistics.median(r[index] for r in results[(scenario, name)])

    print(f"{bench.REPEATS} interleaved rounds of `wrk -t{bench.THREADS} -c{bench.CONNECTIONS} -d{bench.DURATION}s`, "
          "medians; bench.py's peruser configuration (2 environments, MaxProcessors 40)\n")
    print("| scenario | before req/s | after req/s | after/before | p99 ms (before / after) | "
          "server CPU µs/request (before / after) | errors (before / after) |")
    print("|---|---|---|---|---|---|---|")
    for scenario, *_ in scenarios:
        b, a = median(scenario, "before", 0), median(scenario, "after", 0)
        errors = " / ".join(str(sum(r[2] + r[3] for r in results[(scenario, n)])) for n in builds)
        print(f"| {scenario} | {b:.0f} | {a:.0f} | {a / b:.2f} | {median(scenario, 'before', 1):.2f} / "
              f"{median(scenario, 'after', 1):.2f} | {median(scenario, 'before', 4):.0f} / "
              f"{median(scenario, 'after', 4):.0f} | {errors} |")


if __name__ == "__main__":
    main()
