#!/usr/bin/env python3
"""Benchmark: Debian's apache2 with prefork, prefork + mpm-itk, and peruser, on one machine.

Two name-based vhosts owned by two users, each with a 1 KiB file, a 100 KiB file, a tiny CGI
and a tiny PHP script. wrk on 127.0.0.1 measures each scenario against each configuration,
interleaved (A B C A B C ...), REPEATS times; medians are reported with the ratios to prefork
and to itk, p99 latency and non-2xx counts. Also: idle memory (summed PSS) with 2 and 20
environments, and the time to first byte from an environment that has no worker yet.

Run as root: `python3 bench/bench.py` (or `make bench`); it installs wrk, mpm-itk and mod_php,
and writes the table to BENCHMARKS.md. Traffic goes to loopback only, bounded in time.
"""
import os
import re
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from harness import Apache, MODULE, ensure_account, free_port, session_pids, stat_fields  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
# For quick looks while tuning: BENCH_ONLY="close" runs the scenarios whose name contains it
# (and writes nothing to BENCHMARKS.md).
ONLY = os.environ.get("BENCH_ONLY")
DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
THREADS, CONNECTIONS = 2, 32
USERS = ("bench-alice", "bench-bob")
HOSTS = ("alice.bench", "bob.bench")
MODULES_DIR = "/usr/lib/apache2/modules"

ALTERNATE_LUA = """
local hosts = {"alice.bench", "bob.bench"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/1k.html", {["Host"] = hosts[n % 2 + 1]})
end
"""

SCENARIOS = [
    # name, path, extra wrk args, close?
    ("1 KiB keep-alive", "/1k.html", False, None),
    ("1 KiB Connection: close", "/1k.html", True, None),
    ("100 KiB keep-alive", "/100k.html", False, None),
    ("PHP keep-alive", "/hello.php", False, None),
    ("PHP Connection: close", "/hello.php", True, None),
    ("CGI", "/cgi-bin/hello.cgi", False, None),
    ("alternating vhosts keep-alive", "/1k.html", False, ALTERNATE_LUA),
]


def install(packages=("wrk", "libapache2-mpm-itk", "libapache2-mod-php")):
    """The Debian packages a benchmark runs (those missing), and the module."""
    need = [p for p in packages
            if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
            .stdout.find("install ok installed") < 0]
    if need:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if not os.path.exists(MODULE):
        subprocess.run(["make", "-C", REPO], check=True)


def php_module():
    found = sorted(f for f in os.listdir(MODULES_DIR) if f.startswith("libphp") and f.endswith(".so"))
    return os.path.join(MODULES_DIR, found[-1])


def make_sites(root, accounts):
    sites = {}
    for user, host in zip(USERS, HOSTS):
        uid, gid = accounts[user]
        site = os.path.join(root, host)
        os.makedirs(os.path.join(site, "cgi-bin"))
        files = {
            "1k.html": b"x" * 1024,
            "100k.html": b"y" * 100 * 1024,
            "hello.php": b"<?php echo 'hello from ', posix_getuid(), \"\\n\";\n",
            "cgi-bin/hello.cgi": b"#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello\\n'\n",
        }
        for name, data in files.items():
            path = os.path.join(site, name)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o755 if name.endswith(".cgi") else 0o644)
        for dirpath, dirnames, filenames in os.walk(site):
            os.chown(dirpath, uid, gid)
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, gid)
        sites[host] = site
    return sites


def vhosts(port, sites, extra_for):
    out = []
    for user, host in zip(USERS, HOSTS):
        out.append(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName {host}
    DocumentRoot {sites[host]}
    ScriptAlias /cgi-bin/ {sites[host]}/cgi-bin/
    {extra_for(user)}
</VirtualHost>""")
    return "\n".join(out)


COMMON = """
LoadModule php_module {php}
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
<Directory {root}>
    Require all granted
</Directory>
"""

PREFORK_LIMITS = """
StartServers 40
MinSpareServers 40
MaxSpareServers 80
ServerLimit 100
MaxRequestWorkers 100
MaxConnectionsPerChild 0
"""


def configure(kind, envs=2, min_processors=34):
    """Writes and returns an Apache for `kind` (prefork, itk, peruser) with `envs` vhosts in use."""
    apache = Apache("", name=f"bench-{kind}")
    accounts = {u: ensure_account(u) for u in USERS}
    sites = make_sites(apache.root, accounts)
    port = free_port()
    common = COMMON.format(php=php_module(), root=apache.root)
    prefork = f"LoadModule mpm_prefork_module {MODULES_DIR}/mod_mpm_prefork.so"
    if kind == "prefork":
        body = PREFORK_LIMITS + common + vhosts(port, sites, lambda u: "")
        mpm = prefork
    elif kind == "itk":
        body = PREFORK_LIMITS + common + vhosts(port, sites, lambda u: f"AssignUserID {u} {u}")
        mpm = prefork + f"\nLoadModule mpm_itk_module {MODULES_DIR}/mpm_itk.so"
    else:
        processors = "\n".join(f"""<Processor {u}>
    User {u}
    Group {u}
    MinProcessors {min_processors}
    MaxProcessors 40
    MinSpareProcessors 0
</Processor>""" for u in USERS)
        # MaxClientShare 100: wrk is one address playing 32 clients (real clients come from
        # many addresses, so the default share does not bind them; here it would cap wrk at
        # half the workers). <IfDirective>: compare_builds.py also runs builds that predate it.
        body = ("ServerLimit 100\nMaxClients 100\nMinMultiplexers 2\nMaxConnectionsPerChild 0\n"
                + "<IfDirective MaxClientShare>\n    MaxClientShare 100\n</IfDirective>\n"
                + processors + common + vhosts(port, sites, lambda u: f"ServerEnvironment {u}"))
        mpm = f"LoadModule mpm_peruser_module {MODULE}"
    apache.write_config(f"Listen 127.0.0.1:{port}\n" + body, mpm=mpm, log_level="warn")
    apache.port = port
    return apache


def wrk(port, path, close, lua, host=HOSTS[0]):
    args = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", "-H", f"Host: {host}"]
    if close:
        args += ["-H", "Connection: close"]
    script = None
    if lua:
        script = os.path.join("/tmp", "bench-alternate.lua")
        with open(script, "w") as f:
            f.write(lua)
        args += ["-s", script]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=DURATION + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    non2xx = int(re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out).group(1)) \
        if "Non-2xx" in out else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return rps, p99_ms, non2xx, socket_errors


def session_cpu(apache):
    """CPU seconds used by the server's processes so far: each live process's own time, plus
    the time of the children they have reaped (itk's per-connection forks, CGI scripts).

    A live process's time comes from /proc/PID/schedstat (nanoseconds), not from stat's utime
    and stime: those are whole clock ticks per process and per field, and with hundreds of
    workers that each run less than a tick in a round, most of the round's CPU was truncated
    away (a round of young workers then looked cheaper than a later one). What reaped children
    used is only kept in ticks (cutime, cstime), summed by the kernel before it rounds."""
    seconds = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in session_pids(os.getsid(apache.pid())):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                own_ns = int(f.read().split()[0])
            reaped_ticks = sum(int(x) for x in stat_fields(pid)[13:15])  # cutime cstime
        except (OSError, ValueError, IndexError):
            continue
        seconds += own_ns / 1e9 + reaped_ticks / tick
    return seconds


def warm(port):
    for path in ("/1k.html", "/hello.php", "/cgi-bin/hello.cgi"):
        for host in HOSTS:
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"])


def session_pss(apache):
    """Summed PSS (KiB) of every process in the server's session."""
    total = 0
    for pid in session_pids(os.getsid(apache.pid())):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += int(re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M).group(1))
        except (OSError, AttributeError):
            pass
    return total


def session_count(apache):
    return len(session_pids(os.getsid(apache.pid())))


def measure_idle(apache):
    """Starts `apache`, sends one request to every vhost, lets it settle, and returns its summed
    PSS (KiB) and process count; then stops it."""
    apache.start(ports=(apache.port,))
    time.sleep(3)
    for host in HOSTS:
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Host: {host}", f"http://127.0.0.1:{apache.port}/1k.html"])
    time.sleep(2)
    result = session_pss(apache), session_count(apache)
    apache.stop()
    apache.cleanup()
    return result


def idle_memory(env_count):
    """(peruser PSS, prefork PSS, processes) with `env_count` environments at MinProcessors 1."""
    global USERS, HOSTS
    saved = USERS, HOSTS
    USERS = tuple(f"bench-u{i}" for i in range(env_count))
    HOSTS = tuple(f"h{i}.bench" for i in range(env_count))
    try:
        peruser = configure("peruser", min_processors=1)
        peruser_pss, processes = measure_idle(peruser)
        prefork = configure("prefork")
        text = open(prefork.config).read()
        children = processes - 1
        text = re.sub(r"StartServers \d+\nMinSpareServers \d+\nMaxSpareServers \d+",
                      f"StartServers {children}\nMinSpareServers {children}\nMaxSpareServers {children + 1}", text)
        open(prefork.config, "w").write(text)
        prefork_pss, prefork_processes = measure_idle(prefork)
        return peruser_pss, prefork_pss, processes, prefork_processes
    finally:
        USERS, HOSTS = saved


def first_byte():
    """Time to the first byte of a request to an environment with MinProcessors 0 and no worker."""
    apache = configure("peruser", min_processors=0)
    apache.start(ports=(apache.port,))
    time.sleep(1)
    samples = []
    for _ in range(5):
        # Each round: a fresh server generation has no worker for bob yet.
        os.kill(apache.pid(), 1)  # SIGHUP: full restart, every child stopped
        time.sleep(1.5)
        with socket.create_connection(("127.0.0.1", apache.port)) as s:
            started = time.monotonic()
            s.sendall(f"GET /1k.html HTTP/1.1\r\nHost: {HOSTS[1]}\r\nConnection: close\r\n\r\n".encode())
            s.recv(1)
            samples.append((time.monotonic() - started) * 1000)
    apache.stop()
    apache.cleanup()
    return statistics.median(samples), max(samples)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    return m.group(1) if m else "unknown"


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates users and starts Apache)")
    install()
    kinds = ("prefork", "itk", "peruser")
    scenarios = [s for s in SCENARIOS if not ONLY or ONLY in s[0]]
    results = {(s[0], k): [] for s in scenarios for k in kinds}
    servers = {}
    try:
        for kind in kinds:
            servers[kind] = configure(kind)
            servers[kind].start(ports=(servers[kind].port,))
        time.sleep(3)
        for kind in kinds:
            warm(servers[kind].port)
        for scenario, path, close, lua in scenarios:
            for round_ in range(REPEATS):
                for kind in kinds:  # interleaved: A B C A B C ...
                    before = session_cpu(servers[kind])
                    r = wrk(servers[kind].port, path, close, lua)
                    # Server CPU per request: steadier than req/s when wrk shares the cores.
                    cpu_us = (session_cpu(servers[kind]) - before) * 1e6 / max(r[0] * DURATION, 1)
                    r = r + (cpu_us,)
                    results[(scenario, kind)].append(r)
                    print(f"{scenario:32} {kind:8} round {round_ + 1}: {r[0]:9.0f} req/s  p99 {r[1]:7.2f} ms  "
                          f"non-2xx {r[2]}  socket errors {r[3]}  server CPU {cpu_us:6.1f} us/req", flush=True)
    finally:
        for apache in servers.values():
            apache.stop()
            apache.cleanup()

    def median(scenario, kind, index=0):
        return statistics.median(r[index] for r in results[(scenario, kind)])

    lines = ["# Benchmarks", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs ({cpu_model()}); "
             f"`wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s` on 127.0.0.1 (wrk shares the cores), "
             f"{REPEATS} interleaved rounds, medians. Produced by `bench/bench.py`. peruser at its defaults: "
             "ProcessorImage isolated (each environment's workers come from a process image of its own; "
             "README, \"What a worker holds\").", "",
             "| scenario | prefork req/s | itk req/s | peruser req/s | peruser/prefork | peruser/itk | "
             "p99 ms (prefork / itk / peruser) | non-2xx + socket errors (prefork / itk / peruser) | "
             "server CPU µs/request (prefork / itk / peruser) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scenario, *_ in scenarios:
        p, i, u = (median(scenario, k) for k in kinds)
        p99 = " / ".join(f"{median(scenario, k, 1):.2f}" for k in kinds)
        bad = " / ".join(str(sum(r[2] + r[3] for r in results[(scenario, k)])) for k in kinds)
        cpu = " / ".join(f"{median(scenario, k, 4):.0f}" for k in kinds)
        lines.append(f"| {scenario} | {p:.0f} | {i:.0f} | {u:.0f} | {u / p:.2f} | {u / i:.1f} | {p99} | {bad} | {cpu} |")

    if ONLY:
        print("\n".join(lines))
        return
    ttfb_median, ttfb_max = first_byte()
    lines += ["", f"First byte from an environment with `MinProcessors 0` and no worker yet: "
                  f"median {ttfb_median:.1f} ms, worst {ttfb_max:.1f} ms (5 tries, each after a full restart).", ""]
    lines += ["| idle memory | peruser PSS | prefork PSS (same number of processes) | ratio |", "|---|---|---|---|"]
    for envs in (2, 20):
        peruser_pss, prefork_pss, processes, prefork_processes = idle_memory(envs)
        lines.append(f"| {envs} environments, MinProcessors 1 ({processes} processes; prefork {prefork_processes}) | "
                     f"{peruser_pss / 1024:.1f} MiB | {prefork_pss / 1024:.1f} MiB | {peruser_pss / prefork_pss:.2f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    # Its section is the file's head, up to the first "## " heading (the other benches' sections).
    path = os.path.join(REPO, "BENCHMARKS.md")
    rest = ""
    if os.path.exists(path):
        current = open(path).read()
        if "\n## " in current:
            rest = current[current.index("\n## "):]
    with open(path, "w") as f:
        f.write(text + "\n" + rest.lstrip("\n") if rest else text)


if __name__ == "__main__":
    main()
