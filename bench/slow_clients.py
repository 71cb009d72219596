#!/usr/bin/env python3
"""A tenant under a slow-client attack (issue 18): how long another client's requests take.

    python3 bench/slow_clients.py        (as root; writes a table to stdout)

The server is tests/integration/test_slow_tenant_attack.py's: tenants A and B, plain and TLS,
Debian's Timeout 300 and mod_reqtimeout defaults, this MPM's default limits (MaxProcessors 10,
MinMultiplexers 3). tests/integration/slow_attack.py keeps 200 connections of each kind open
to A (a trickled keep-alive head, a trickled head inside TLS, a bare ClientHello, a trickled
POST body), from one address or spread over fifty. Meanwhile 127.0.0.2 sends 100 requests to
A's CGI (plain and TLS in turn, a new connection each, 0.1 s apart). Each attack runs once
with the defaults (MaxClientShare 50, ReaderShedTimeout 1) and once with both off
(MaxClientShare 100, ReaderShedTimeout 0), which is how this MPM behaved before.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from harness import ensure_account  # noqa: E402
import test_slow_tenant_attack as attack_suite  # noqa: E402

OFF = "MaxClientShare 100\nReaderShedTimeout 0\n"
REQUESTS = 100


def measure(accounts, extra, sources):
    apache = attack_suite.start(accounts, extra, name="bench-slow")
    try:
        process = None
        if sources:
            process = attack_suite.attack(apache, sources, seconds=35)
            time.sleep(5)
        results = []
        for index in range(REQUESTS):
            started = time.monotonic()
            try:
                status, body, took = attack_suite.timed_get(apache, "a.test", secure=index % 2 == 1)
                ok = status == 200 and f"uid={apache.uids['a']}" in body
            except OSError:
                ok, took = False, time.monotonic() - started
            results.append((ok, took))
            time.sleep(0.1)
        line = attack_suite.environment_line(apache, "env-a")
        if process:
            attack_suite.finish(process)
        return results, line
    finally:
        apache.stop()
        apache.cleanup()


def main():
    accounts = {f"peruser-{t}": ensure_account(f"peruser-{t}") for t in ("a", "b")}
    rows = []
    for attack_name, sources in (("none", []), ("one address", ["127.0.0.1"]),
                                 ("fifty addresses", [f"127.0.0.{n}" for n in range(10, 60)])):
        for config_name, extra in (("defaults", ""), ("share and shedding off", OFF)):
            results, line = measure(accounts, extra, sources)
            latencies = sorted(took for ok, took in results if ok)
            failed = sum(1 for ok, _ in results if not ok)
            p = (lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000) if latencies else None
            row = (f"| {attack_name} | {config_name} | {REQUESTS - failed}/{REQUESTS} | "
                   + (f"{p(0.5):.0f} | {p(0.99):.0f} | {latencies[-1] * 1000:.0f}" if latencies else "- | - | -")
                   + f" | {line.get('shed', '?')} | {line.get('dropped', '?')} |")
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    print("| attack on A | configuration | A's requests from 127.0.0.2 answered 200 | p50 ms | p99 ms | max ms "
          "| shed | dropped (503) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
