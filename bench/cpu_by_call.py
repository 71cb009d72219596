#!/usr/bin/env python3
"""Benchmark: where each role's CPU goes per request, by system call (issue 15).

Without hardware counters, the way to compare a worker with a prefork child is what each
spends its time in. This runs one server from bench/many_tenants.py (KIND, default both
`prefork` and `peruser`, one after the other) with TENANTS tenants (default 300), visits every
tenant once, warms up on a random tenant per request, then records `perf record -a -g -e
cpu-clock` during a second run of the same load (`Connection: close` with CLOSE=1, else
kept-alive; one busy tenant instead of a random one with BUSY=1). Every sample of the server's
processes is charged to the system call it is in (the libc function that entered the kernel),
to interrupts, page faults, or to the library it runs in (user space). The samples of each
role are scaled to that role's CPU time from /proc/PID/schedstat, so the figures are µs per
request and add up to the role's total.

SYMBOLS=mod_mpm_peruser.so,apache2 breaks those libraries' user time down by function (Swift's
names come mangled and whole: pipe the output through `swift demangle --simplified`).

Roles: `child` (a prefork child, or a peruser multiplexer: both run as the server's User),
`worker` (a tenant's uid), `root` (the parent, images). Needs `perf` (Debian: linux-perf).
Writes nothing; the findings are in BENCHMARKS.md.

Run as root: `python3 bench/cpu_by_call.py`. Loopback only, bounded in time.
"""
import collections
import os
import pwd
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_tenants as mt  # noqa: E402
from bench import session_pids, stat_fields  # noqa: E402

KINDS = os.environ.get("KIND", "prefork,peruser").split(",")
CLOSE = os.environ.get("CLOSE") == "1"
# BUSY=1: one busy tenant (many_tenants.py's busy rows) instead of a random tenant per request.
RANDOM_TENANT = os.environ.get("BUSY") != "1"
TOP = int(os.environ.get("TOP", "25"))
# Libraries whose user-space samples are charged to the function they are in (a build with
# symbols: `make LINK_STRIP=` for this module).
SYMBOLS = [name for name in os.environ.get("SYMBOLS", "").split(",") if name]
SAMPLE_HZ = 999


def roles(apache):
    """pid -> role of the server's processes now."""
    out = {}
    for pid in session_pids(os.getsid(apache.pid())):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = int(f.read().split("Uid:")[1].split()[0])
            name = pwd.getpwuid(uid).pw_name
        except (OSError, IndexError, ValueError, KeyError):
            continue
        out[pid] = "worker" if name.startswith("bench-t") else ("root" if uid == 0 else "child")
    return out


def cpu_ns(by_pid, kind):
    """pid -> (role, own ns, ns of the children it reaped). A reaper's children are charged
    to the role it reaps: the parent and the images reap workers (prefork's parent its
    children), anyone else its own kind (a worker's CGI scripts). Reaped time is kept in
    clock ticks only (cutime, cstime)."""
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    out = {}
    for pid, role in by_pid.items():
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                own = int(f.read().split()[0])
            reaped = sum(int(x) for x in stat_fields(pid)[13:15]) * tick_ns  # cutime cstime
        except (OSError, IndexError, ValueError):
            continue  # gone: its time since `before` is in its reaper's
        out[pid] = (role, own, reaped)
    return out


def spent_ns(before, after, kind):
    """Each role's CPU between two looks: the time of processes alive at both, all of the
    ones started between, and the reaped time of those that ended (not their time before)."""
    total = collections.Counter()
    reaped_role = {"root": "child" if kind == "prefork" else "worker"}
    for pid, (role, own, reaped) in after.items():
        _, own_before, reaped_before = before.get(pid, (role, 0, 0))
        total[role] += own - own_before
        total[reaped_role.get(role, role)] += reaped - reaped_before
    return total


def charge(frames):
    """What one sample (innermost frame first) is charged to."""
    symbols = [symbol for symbol, _ in frames]
    if "entry_SYSCALL_64_after_hwframe" in symbols:
        at = symbols.index("entry_SYSCALL_64_after_hwframe") + 1
        return "call " + (symbols[at] if at < len(symbols) else "?")
    if frames[0][1].startswith("[kernel"):
        kernel = [symbol for symbol, dso in frames if dso.startswith("[kernel")]
        if any(re.search(r"asm_sysvec|asm_common_interrupt|irq_exit|do_softirq", s) for s in kernel):
            return "kernel: interrupts"
        if any("page_fault" in s for s in kernel):
            return "kernel: page faults"
        return "kernel: " + kernel[-1]
    if frames[0][1] in SYMBOLS:
        return f"user: {frames[0][1]} {frames[0][0].split('+')[0]}"
    return "user: " + frames[0][1]


def profile(kind):
    for user in mt.users():
        mt.ensure_account(user)
    apache = mt.configure(kind)
    apache.start(ports=(apache.port,), timeout=60)
    data = tempfile.NamedTemporaryFile(prefix="cpu-by-call-", suffix=".data", delete=False).name
    try:
        mt.first_touch(apache)
        mt.run_wrk(apache, RANDOM_TENANT, CLOSE)
        by_pid = roles(apache)
        before = cpu_ns(by_pid, kind)
        perf = subprocess.Popen(["perf", "record", "-q", "-g", "-a", "-e", "cpu-clock", "-F", str(SAMPLE_HZ),
                                 "-o", data, "--", "sleep", str(mt.bench.DURATION)])
        rps = mt.run_wrk(apache, RANDOM_TENANT, CLOSE)[0]
        perf.wait()
        by_pid.update(roles(apache))  # workers started during the run
        spent = spent_ns(before, cpu_ns(by_pid, kind), kind)
        script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,ip,sym,dso"],
                                capture_output=True, text=True).stdout
    finally:
        apache.stop()
        apache.cleanup()
        os.unlink(data)
    requests = rps * mt.bench.DURATION
    samples = collections.defaultdict(collections.Counter)
    for block in script.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        head = re.match(r"^\s*(\d+)", lines[0]) if lines else None
        role = by_pid.get(int(head.group(1))) if head else None
        if not role:
            continue
        frames = [(m.group(1), os.path.basename(m.group(2))) for m in
                  (re.match(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line) for line in lines[1:]) if m]
        if frames:
            samples[role][charge(frames)] += 1
    load = "random tenant" if RANDOM_TENANT else "one busy tenant"
    print(f"{kind}, {mt.TENANTS} tenants, {load}, {'Connection: close' if CLOSE else 'keep-alive'}: "
          f"{rps:.0f} req/s", flush=True)
    for role, counts in sorted(samples.items()):
        per_request = spent[role] / 1e3 / requests
        scale = per_request / max(1, sum(counts.values()))
        print(f"  {role}: {per_request:.1f} µs per request ({sum(counts.values())} samples)")
        for what, count in counts.most_common(TOP):
            print(f"    {what:44} {count * scale:6.2f}")


if __name__ == "__main__":
    for kind in KINDS:
        profile(kind)
