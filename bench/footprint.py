#!/usr/bin/env python3
"""Benchmark: the pages one request touches, and in which process (issue 15).

Why a worker at 300 tenants spends about twice prefork's CPU on the same Apache code, without
hardware counters: this counts the distinct memory pages the serving process touches for one
request. The kernel's accessed bits are cleared for every candidate process
(/proc/PID/clear_refs), one request is sent, and the `Referenced:` lines of /proc/PID/smaps
give the pages touched since, per mapping. Each such page needs a translation; in a process
that last ran hundreds of requests ago, that walks page tables that are no longer in the
caches, and its private pages are cold too.

Two servers from bench/many_tenants.py side by side: prefork (Debian's limits) and peruser at
its defaults, TENANTS tenants (default 300). After the first visit to every tenant and a
random-tenant warm-up, for SAMPLES tenants (default 5): a new `Connection: close` request, and
a request that arrives on a kept-alive connection after another tenant's (a front proxy's
pooled connection: the connection is lent to the worker). Prints pages per request by kind
(text, writable, read-only) and the mappings with the most pages; writes nothing.

Run as root: `python3 bench/footprint.py`. Loopback only, bounded in time.
"""
import collections
import os
import pwd
import re
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_tenants as mt  # noqa: E402
from many_tenants import configure, ensure_account, first_touch, run_wrk, users  # noqa: E402

SAMPLES = int(os.environ.get("SAMPLES", "5"))
MODULE_NAME = "mod_mpm_peruser.so"


def mappings(pid):
    """[(name, perms, referenced kB)] of `pid`'s mappings, from smaps; none if it has exited
    (a prefork child or a worker may end between the listing and the read)."""
    out, current = [], None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    fields = line.split()
                    current = [fields[5] if len(fields) > 5 else "[anon]", fields[1], 0]
                    out.append(current)
                elif line.startswith("Referenced:"):
                    current[2] = int(line.split()[1])
    except OSError:
        return []
    return out


def candidates(kind, tenant):
    """The processes that may serve `tenant`: prefork's children (www-data), or the tenant's
    workers (its own user)."""
    uid = pwd.getpwnam("www-data" if kind == "prefork" else users()[tenant]).pw_uid
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and open(f"/proc/{entry}/comm").read().strip() == "apache2":
                    found.append(int(entry))
            except OSError:
                pass
    return found


def ask(sock, tenant, close):
    header = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET /1k.html HTTP/1.1\r\nHost: t{tenant:03d}.bench\r\n{header}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1024:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def touched(kind, port, tenant, crossing):
    """(pages by kind, pages by mapping) of the process that served one request to `tenant`."""
    # Crossing: one kept-alive connection for every request. Otherwise a new connection each,
    # and none held open meanwhile (on prefork an idle connection would hold a child).
    kept = socket.create_connection(("127.0.0.1", port)) if crossing else None

    def request(t):
        if kept:
            ask(kept, t, False)
        else:
            with socket.create_connection(("127.0.0.1", port)) as once:
                ask(once, t, True)
    try:
        other = (tenant + 1) % (mt.TENANTS - 3)
        # The process that serves next is the one that served last.
        for t in ((tenant, other, tenant, other) if crossing else (tenant,) * 3):
            request(t)
        pids = candidates(kind, tenant)
        for pid in pids:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("1")
            except OSError:
                pass  # it has exited
        request(tenant)
    finally:
        if kept:
            kept.close()
    # Each candidate's smaps read once: the one that touched the most served the request.
    seen = [mappings(pid) for pid in pids]
    served = max(seen, key=lambda maps: sum(m[2] for m in maps), default=[])
    by_kind, by_mapping = collections.Counter(), collections.Counter()
    for name, perms, kb in served:
        if kb:
            by_kind["text" if "x" in perms else ("writable" if "w" in perms else "read-only")] += kb // 4
            by_mapping[(os.path.basename(name) if name.startswith("/") else name, perms)] += kb // 4
    return by_kind, by_mapping


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates users and starts Apache)")
    mt.install()
    for user in users():
        ensure_account(user)
    servers = {}
    try:
        for kind in ("prefork", "peruser"):
            servers[kind] = configure(kind)
            servers[kind].start(ports=(servers[kind].port,), timeout=60)
        time.sleep(3)
        for kind, apache in servers.items():
            first_touch(apache)
            run_wrk(apache, True, False)  # every tenant's worker has served
        sample = [int(mt.TENANTS * i / (SAMPLES + 1)) for i in range(1, SAMPLES + 1)]
        for kind, apache in servers.items():
            for crossing in (False, True):
                if crossing and kind == "prefork":
                    continue  # a kept-alive connection stays in one prefork child
                totals, mappings_seen = [], collections.Counter()
                kinds = collections.Counter()
                for tenant in sample:
                    by_kind, by_mapping = touched(kind, apache.port, tenant, crossing)
                    totals.append(sum(by_kind.values()))
                    kinds.update(by_kind)
                    mappings_seen.update(by_mapping)
                what = "kept alive, after another tenant's request" if crossing else "new connection"
                print(f"{kind} ({what}): pages touched per request {min(totals)}-{max(totals)} "
                      f"(median {statistics.median(totals):.0f}); by kind, mean: "
                      + ", ".join(f"{k} {v / len(sample):.0f}" for k, v in sorted(kinds.items())))
                top = ", ".join(f"{name} {perms} {v / len(sample):.0f}" for (name, perms), v in mappings_seen.most_common(8))
                print(f"    most: {top}")
                module = sum(v for (name, _), v in mappings_seen.items() if name == MODULE_NAME) / len(sample)
                if module:
                    print(f"    this module's mappings: {module:.0f} pages")
    finally:
        for apache in servers.values():
            apache.stop()
            apache.cleanup()


if __name__ == "__main__":
    main()
