#!/usr/bin/env python3
"""Benchmark: hundreds of tenants on one box (issue 15).

TENANTS tenants (default 300), each with its own system user, one environment and two names
(tNNN.bench, www.tNNN.bench), against seven servers running side by side:

- prefork: Debian's mpm_prefork.conf (StartServers 5, MinSpareServers 5, MaxSpareServers 10,
  MaxRequestWorkers 150, MaxConnectionsPerChild 0), no isolation: the anchor;
- prefork, recycling: the same with MaxConnectionsPerChild 1000, the recycling peruser's
  defaults do (the original's MaxRequestsPerChild 1000): what recycling costs an MPM without
  isolation;
- prefork, rotating: one idle child per tenant (StartServers and both spare limits at
  TENANTS). Its children wait in accept(), and the kernel gives each new connection to the one
  that has waited longest, so on `Connection: close` each request runs in a process that last
  ran about TENANTS connections ago, as a tenant's worker does under a random tenant per
  request, with no routing, no isolation and every page shared with its siblings: on close,
  the floor of any design with a process per tenant on this machine. (Kept-alive connections
  stay with the child that accepted them, so its keep-alive rows are prefork's.) The table
  says how many of its children took connections;
- itk: the same limits as prefork with AssignUserID per vhost (a fork per connection);
- peruser, defaults: nothing but the tenants written (ServerLimit sized by the module), so
  ProcessorImage isolated: a process image per environment in use;
- peruser, shared: the same with ProcessorImage shared (every worker forked from the parent);
- peruser, package: with the values of debian/peruser.conf (the package's, for hundreds of
  tenants).

Every peruser server sets MaxClientShare 99: wrk is one address playing 32 clients, and the
default share (50) would cap it at half of a busy tenant's workers, where real clients come
from many addresses. 99 lets that one address hold every worker (it rounds up to MaxProcessors)
while the share's accounting runs as it does for every server with a share: each hand-off
reserved and released. 100 (no limit) skips that accounting, and until 2026-12-07 this
benchmark set it, which hid what the accounting cost (7 µs per request in the multiplexers at
300 tenants, before 0bd5d4a).

First, every measured tenant is asked once on each server (a crawler's visit; timed, its own
row). Then the scenarios, interleaved (A B C D E A B C D E ...), REPEATS rounds, medians: a
random tenant per request on kept-alive connections (a front proxy's pooled connections), the
same with `Connection: close`, and one busy tenant with `Connection: close` and kept alive
(no request crosses environments). Each round also gives the server's CPU time per request
(summed over its session's processes, from /proc): steadier than req/s when wrk shares the
cores. Then memory (summed PSS and processes of each server's session) after start, after the
load, and after IDLE_SECONDS (default 120) without traffic; the time to the first byte from a
tenant with no worker; and the render time of /server-status and ?auto. Writes its section of
BENCHMARKS.md.

What a request that crosses environments costs, apart from what many tenants add: the same
with three warm tenants, `TENANTS=6 BENCH_KINDS=prefork,peruser BENCH_NO_WRITE=1` (the random
rows then cross on two requests in three).

Run as root: `python3 bench/many_tenants.py`. Loopback only, bounded in time.
"""
import os
import re
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)

from harness import Apache, MODULE, ensure_account, free_port  # noqa: E402
from bench import cpu_model, install, session_count, session_cpu, session_pss, wrk  # noqa: E402
import bench  # noqa: E402

TENANTS = int(os.environ.get("TENANTS", "300"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
IDLE_SECONDS = int(os.environ.get("IDLE_SECONDS", "120"))
ONLY = os.environ.get("BENCH_ONLY")
# BENCH_KEEP_LOGS=DIR: each server's error log is copied there (KIND.error_log) before cleanup.
KEEP_LOGS = os.environ.get("BENCH_KEEP_LOGS")
KINDS = [k for k in os.environ.get("BENCH_KINDS",
                                   "prefork,prefork-recycling,prefork-rotating,itk,peruser,peruser-shared,"
                                   "peruser-package").split(",")
         if k]
# BENCH_BEFORE_SO=/path/to/an/older/mod_mpm_peruser.so adds that build ("peruser-before").
if os.environ.get("BENCH_BEFORE_SO") and "peruser-before" not in KINDS:
    KINDS.append("peruser-before")
MODULES_DIR = "/usr/lib/apache2/modules"
MARK_BEGIN = "<!-- many_tenants.py begin -->"
MARK_END = "<!-- many_tenants.py end -->"

RANDOM_LUA = """
local tenants = {tenants}
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16) % 1000)
request = function()
  local n = math.random(0, tenants - 1)
  local prefix = (math.random(0, 1) == 0) and "" or "www."
  -- wrk.format takes these headers instead of wrk's own (-H), so copy them (Connection: close)
  local headers = {{}}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Host"] = string.format("%st%03d.bench", prefix, n)
  return wrk.format("GET", "/1k.html", headers)
end
"""

SCENARIOS = [
    # name, lua (random tenant) or a fixed host, Connection: close?
    ("random tenant, keep-alive", True, False),
    ("random tenant, Connection: close", True, True),
    ("one busy tenant, Connection: close", False, True),
    # No request crosses environments: with the random rows, what a crossing costs.
    ("one busy tenant, keep-alive", False, False),
]

PREFORK = """StartServers 5
MinSpareServers 5
MaxSpareServers 10
MaxRequestWorkers 150
MaxConnectionsPerChild 0
"""


def prefork_rotating(children):
    """`children` idle prefork children (and room for ten more), none retired while idle: see
    the docstring."""
    return (f"StartServers {children}\nMinSpareServers {children}\nMaxSpareServers {children + 10}\n"
            f"ServerLimit {children + 10}\nMaxRequestWorkers {children + 10}\nMaxConnectionsPerChild 0\n")


def users():
    return [f"bench-t{n:03d}" for n in range(TENANTS)]


def site(root):
    path = os.path.join(root, "site")
    os.makedirs(path)
    with open(os.path.join(path, "1k.html"), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(path, "hello.php"), "w") as f:
        f.write("<?php echo 'hello from ', posix_getuid(), \"\\n\";\n")
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o644)
    os.chmod(path, 0o755)
    return path


def package_values():
    """debian/peruser.conf's directives, but the multiplexers' account (the package creates it)."""
    text = open(os.path.join(REPO, "debian", "peruser.conf")).read()
    body = text.split("<IfModule mpm_peruser_module>", 1)[1].split("</IfModule>", 1)[0]
    return "\n".join(line for line in body.splitlines()
                     if line.strip() and not line.strip().startswith(("#", "MultiplexerUser", "MultiplexerGroup")))


def configure(kind, rotating_children=TENANTS):
    apache = Apache("", name=f"tenants-{kind}")
    port = free_port()
    docroot = site(apache.root)
    parts = [f"Listen 127.0.0.1:{port}",
             f"LoadModule php_module {bench.php_module()}",
             "LoadModule status_module /usr/lib/apache2/modules/mod_status.so",
             "ExtendedStatus On",
             f"<Directory {apache.root}>\n    Require all granted\n</Directory>",
             '<FilesMatch "\\.php$">\n    SetHandler application/x-httpd-php\n</FilesMatch>']
    prefork = f"LoadModule mpm_prefork_module {MODULES_DIR}/mod_mpm_prefork.so"
    if kind.startswith("prefork") or kind == "itk":
        parts.append({"prefork-recycling": PREFORK.replace("MaxConnectionsPerChild 0", "MaxConnectionsPerChild 1000"),
                      "prefork-rotating": prefork_rotating(rotating_children)}.get(kind, PREFORK))
        mpm = prefork + (f"\nLoadModule mpm_itk_module {MODULES_DIR}/mpm_itk.so" if kind == "itk" else "")
    else:
        mpm = f"LoadModule mpm_peruser_module {MODULE}"
        if kind == "peruser-before":
            # An earlier build (BENCH_BEFORE_SO) at its defaults, with the slots it could not size.
            mpm = f"LoadModule mpm_peruser_module {os.environ['BENCH_BEFORE_SO']}"
            parts.append("ServerLimit 768")
        if kind == "peruser-package":
            parts.append(package_values())
        if kind == "peruser-shared":
            parts.append("ProcessorImage shared")
        # After the package's values: the last one counts. Not 100, which skips the share's
        # accounting that every server with a share pays (see the docstring).
        parts.append("MaxClientShare 99")
        if kind == "peruser-before":
            # For experiments: directives for this server alone (BENCH_BEFORE_EXTRA).
            parts.append(os.environ.get("BENCH_BEFORE_EXTRA", "").replace("\\n", "\n"))
        # For experiments: directives added to every peruser server (BENCH_PERUSER_EXTRA).
        parts.append(os.environ.get("BENCH_PERUSER_EXTRA", "").replace("\\n", "\n"))
    if kind.startswith("peruser"):
        parts += [f"<Processor t{n:03d}>\n    User {user}\n    Group {user}\n</Processor>" for n, user in enumerate(users())]
    parts.append(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName status.bench
    DocumentRoot {docroot}
    <Location /server-status>
        SetHandler server-status
    </Location>
    {"ServerEnvironment t000" if kind.startswith("peruser") else ""}
</VirtualHost>""")
    for n, user in enumerate(users()):
        who = (f"AssignUserID {user} {user}" if kind == "itk" else "" if kind.startswith("prefork")
               else f"ServerEnvironment t{n:03d}")
        parts.append(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName t{n:03d}.bench
    ServerAlias www.t{n:03d}.bench
    DocumentRoot {docroot}
    {who}
</VirtualHost>""")
    apache.write_config("\n".join(parts) + "\n", mpm=mpm, log_level="warn")
    apache.port = port
    return apache


def run_wrk(apache, random_tenant, close):
    if random_tenant:
        # The last three tenants are never asked for: the first-byte measure uses them.
        return wrk(apache.port, "/1k.html", close, RANDOM_LUA.format(tenants=TENANTS - 3))
    return wrk(apache.port, "/1k.html", close, None, host="t001.bench")


def measured_wrk(apache, random_tenant, close):
    """run_wrk's (req/s, p99 ms, non-2xx, socket errors) and the server's CPU µs per request."""
    before = session_cpu(apache)
    r = run_wrk(apache, random_tenant, close)
    return r + ((session_cpu(apache) - before) * 1e6 / max(r[0] * bench.DURATION, 1),)


def first_touch(apache):
    """Seconds to ask every measured tenant once, 8 clients at a time (a crawler's visit): on
    peruser with isolated images, each tenant's image and first worker start here."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(lambda n: fetch(apache, f"t{n:03d}.bench", "/1k.html")[0].startswith(b"HTTP/1.1 200"),
                                range(TENANTS - 3)))
    return time.monotonic() - started, answered


def memory(apache):
    return session_pss(apache), session_count(apache)


def first_byte(apache, tenant):
    with socket.create_connection(("127.0.0.1", apache.port)) as s:
        started = time.monotonic()
        s.sendall(f"GET /1k.html HTTP/1.1\r\nHost: t{tenant:03d}.bench\r\nConnection: close\r\n\r\n".encode())
        s.recv(1)
        return (time.monotonic() - started) * 1000


def fetch(apache, host, path):
    """The whole response to one `Connection: close` request, and its ms from the request sent
    (connected) to the last byte."""
    with socket.create_connection(("127.0.0.1", apache.port), timeout=60) as s:
        started = time.monotonic()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data, (time.monotonic() - started) * 1000


def rotation(apache):
    """How many of a prefork server's children have answered requests, of how many, and the
    median count: mod_status's table, whose third column is a slot's requests on this
    connection / by this child / in this slot."""
    page = fetch(apache, "status.bench", "/server-status")[0].decode(errors="replace")
    counts = [int(m.group(1)) for m in
              re.finditer(r"<tr><td><b>\d+-\d+</b></td><td>[\d-]+</td><td>\d+/(\d+)/\d+</td>", page)]
    return sum(1 for n in counts if n > 0), len(counts), statistics.median(counts) if counts else 0


def fetch_ms(apache, path):
    samples = [fetch(apache, "status.bench", path) for _ in range(10)]
    return statistics.median(ms for _, ms in samples), len(samples[-1][0])


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates users and starts Apache)")
    install()
    bench.DURATION = DURATION
    for user in users():
        ensure_account(user)
    scenarios = [s for s in SCENARIOS if not ONLY or ONLY in s[0]]
    results = {(s[0], k): [] for s in scenarios for k in KINDS}
    mem = {k: {} for k in KINDS}
    other = {}
    servers = {}
    try:
        for kind in KINDS:
            servers[kind] = configure(kind)
            servers[kind].start(ports=(servers[kind].port,), timeout=60)
        time.sleep(5)
        for kind in KINDS:
            mem[kind]["start"] = memory(servers[kind])
        # Throughput is measured on tenants that have been asked before; what the first visit
        # costs is its own row.
        for kind in KINDS:
            other[(kind, "touch")] = first_touch(servers[kind])
            print(f"first touch of {TENANTS - 3} tenants, {kind}: {other[(kind, 'touch')][0]:.1f} s, "
                  f"{other[(kind, 'touch')][1]} answered 200", flush=True)
        for scenario, random_tenant, close in scenarios:
            for round_ in range(REPEATS):
                for kind in KINDS:
                    began = time.strftime("%H:%M:%S", time.gmtime())
                    r = measured_wrk(servers[kind], random_tenant, close)
                    cpu_us = r[4]
                    results[(scenario, kind)].append(r)
                    print(f"{scenario:36} {kind:16} round {round_ + 1}: {r[0]:9.0f} req/s  p99 {r[1]:8.2f} ms  "
                          f"non-2xx {r[2]}  socket errors {r[3]}  server CPU {cpu_us:6.1f} us/req  (from {began} UTC)", flush=True)
        for kind in KINDS:
            mem[kind]["load"] = memory(servers[kind])
        if "prefork-rotating" in servers:
            other["rotation"] = rotation(servers["prefork-rotating"])
        for kind in KINDS:
            if kind.startswith("peruser"):
                other[(kind, "status")] = fetch_ms(servers[kind], "/server-status")
                other[(kind, "auto")] = fetch_ms(servers[kind], "/server-status?auto")
        if not ONLY:
            print(f"waiting {IDLE_SECONDS} s without traffic", flush=True)
            time.sleep(IDLE_SECONDS)
            for kind in KINDS:
                mem[kind]["idle"] = memory(servers[kind])
            # Tenants nobody asked for (no worker in any peruser setup): first byte.
            for kind in KINDS:
                other[(kind, "ttfb")] = statistics.median(first_byte(servers[kind], n)
                                                          for n in range(TENANTS - 3, TENANTS))
    finally:
        for kind, apache in servers.items():
            apache.stop()
            if KEEP_LOGS:
                os.makedirs(KEEP_LOGS, exist_ok=True)
                with open(os.path.join(KEEP_LOGS, f"{kind}.error_log"), "w") as f:
                    f.write(apache.read_error_log())
            apache.cleanup()

    def median(scenario, kind, index=0):
        return statistics.median(r[index] for r in results[(scenario, kind)])

    names = {"prefork": "prefork", "prefork-recycling": "prefork (MaxConnectionsPerChild 1000)", "itk": "mpm-itk",
             "prefork-rotating": "prefork (a child per tenant, rotating)", "peruser": "peruser (defaults)",
             "peruser-shared": "peruser (defaults, ProcessorImage shared)",
             "peruser-package": "peruser (package peruser.conf)",
             "peruser-before": f"peruser before ({os.environ.get('BENCH_BEFORE_NAME', 'earlier build')}, defaults)"}
    # The kinds shown as a ratio to prefork: peruser's, and prefork itself recycling or rotating.
    compared = [k for k in KINDS if k.startswith("peruser") or k in ("prefork-recycling", "prefork-rotating")]
    lines = [MARK_BEGIN, "## Hundreds of tenants (`bench/many_tenants.py`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs ({cpu_model()}); "
             f"{TENANTS} tenants (a system user, an environment and two names each), 1 KiB static file, "
             f"`wrk -t{bench.THREADS} -c{bench.CONNECTIONS} -d{DURATION}s` on 127.0.0.1, {REPEATS} interleaved rounds, "
             "medians. prefork and itk: Debian's mpm_prefork.conf (prefork recycling: with MaxConnectionsPerChild "
             "1000, as peruser's defaults recycle; prefork, a child per tenant: one idle child per tenant, so that "
             "each close request runs in a child that last ran about as many connections ago). "
             "peruser (defaults): no limit written, so "
             "isolated process images; shared: the same with ProcessorImage shared. "
             "peruser (package): debian/peruser.conf's values. Every peruser server: MaxClientShare 99 (wrk is "
             "one address).", "",
             "| scenario | " + " | ".join(f"{names[k]} req/s" for k in KINDS) + " | "
             + " | ".join(f"{names[k]} / prefork" for k in compared)
             + " | p99 ms | server CPU µs per request | errors (non-2xx + socket) |",
             "|---" * (len(KINDS) + len(compared) + 4) + "|"]
    for scenario, *_ in scenarios:
        rps = {k: median(scenario, k) for k in KINDS}
        base = rps.get("prefork", float("nan"))
        ratios = " | ".join(f"{rps[k] / base:.2f}" for k in compared)
        p99 = " / ".join(f"{median(scenario, k, 1):.1f}" for k in KINDS)
        cpu = " / ".join(f"{median(scenario, k, 4):.0f}" for k in KINDS)
        bad = " / ".join(str(sum(r[2] + r[3] for r in results[(scenario, k)])) for k in KINDS)
        lines.append(f"| {scenario} | " + " | ".join(f"{rps[k]:.0f}" for k in KINDS) + f" | {ratios} | {p99} | {cpu} "
                     f"| {bad} |")
    lines += ["", "| memory: PSS, processes | " + " | ".join(names[k] for k in KINDS) + " |",
              "|---" * (len(KINDS) + 1) + "|"]
    for moment, label in (("start", "after start"), ("load", "after the load"),
                          ("idle", f"after {IDLE_SECONDS} s without traffic")):
        if all(moment in mem[k] for k in KINDS):
            lines.append(f"| {label} | " + " | ".join(
                f"{mem[k][moment][0] / 1024:.0f} MiB, {mem[k][moment][1]}" for k in KINDS) + " |")
    if "prefork" in KINDS and all("idle" in mem[k] for k in KINDS):
        lines += ["", "Idle PSS over prefork's: " + ", ".join(
            f"{names[k]} {mem[k]['idle'][0] / mem['prefork']['idle'][0]:.2f}" for k in KINDS if k != "prefork") + "."]
    if any(k[1] == "touch" for k in other):
        lines += ["", f"First visit to each of the {TENANTS - 3} measured tenants, 8 clients at a time, before the "
                  "rounds (the rounds measure tenants already asked once): " + ", ".join(
                      f"{names[k]} {other[(k, 'touch')][0]:.1f} s" for k in KINDS if (k, "touch") in other) + "."]
    if "rotation" in other:
        took, children, each = other["rotation"]
        lines += ["", f"{names['prefork-rotating']}: {took} of its {children} children took connections, "
                  f"a median of {each:.0f} requests each over all the rounds."]
    if any(k[1] == "ttfb" for k in other):
        lines += ["", "First byte from a tenant never asked for (no worker; median of 3 tenants): " + ", ".join(
            f"{names[k]} {other[(k, 'ttfb')]:.1f} ms" for k in KINDS) + "."]
    for kind in KINDS:
        if (kind, "status") in other:
            (page_ms, page_bytes), (auto_ms, auto_bytes) = other[(kind, "status")], other[(kind, "auto")]
            lines.append(f"{names[kind]}: /server-status after the load {page_ms:.1f} ms ({page_bytes // 1024} KiB), "
                         f"?auto {auto_ms:.1f} ms ({auto_bytes // 1024} KiB), median of 10.")
    lines.append(MARK_END)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if ONLY or os.environ.get("BENCH_NO_WRITE"):
        return
    path = os.path.join(REPO, "BENCHMARKS.md")
    current = open(path).read()
    if MARK_BEGIN in current:
        head, rest = current.split(MARK_BEGIN, 1)
        current = head + text.rstrip("\n") + rest.split(MARK_END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(current)


if __name__ == "__main__":
    main()
