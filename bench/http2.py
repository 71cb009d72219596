#!/usr/bin/env python3
"""Benchmark: HTTP/2 over TLS (issue 16), h2load on loopback.

Three servers side by side, each with one TLS vhost (a.test), interleaved rounds, medians:

- event: Debian's mpm_event.conf, mod_http2, static files by Apache and PHP by php-fpm (mod_php
  needs prefork): HTTP/2 without per-user isolation, the anchor;
- peruser: this module at its defaults (one environment under its own user, mod_php loaded,
  so the requests of a connection's streams run one at a time in each worker);
- prefork: Debian's mpm_prefork.conf with mod_php, HTTP/1.1 only (mod_http2 is off there):
  what a per-user setup gives a browser today.

Static 1 KiB and a small PHP script; `h2load -c CLIENTS -m STREAMS` for h2 (`--h1 -m 1` for
prefork). Requests per second and the p99 of request times (h2load --log-file). Writes its
section of BENCHMARKS.md. Run as root: `python3 bench/http2.py`. Loopback only, bounded in time.
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)

from harness import Apache, MODULE, ensure_account, free_port  # noqa: E402
from test_tls import make_cert  # noqa: E402
import bench  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CLIENTS = int(os.environ.get("H2_CLIENTS", "8"))
STREAMS = int(os.environ.get("H2_STREAMS", "10"))
MODULES_DIR = "/usr/lib/apache2/modules"
USER = "bench-h2"
MARK_BEGIN = "<!-- http2.py begin -->"
MARK_END = "<!-- http2.py end -->"
KINDS = ["event", "peruser", "prefork"]
SCENARIOS = [("static 1 KiB", "/1k.html"), ("PHP", "/hello.php")]

EVENT = """StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0"""
PREFORK = """StartServers 5
MinSpareServers 5
MaxSpareServers 10
MaxRequestWorkers 150
MaxConnectionsPerChild 0"""


def site(root, uid, gid):
    path = os.path.join(root, "site")
    os.makedirs(path)
    with open(os.path.join(path, "1k.html"), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(path, "hello.php"), "w") as f:
        f.write("<?php echo 'hello from ', posix_getuid(), \"\\n\";\n")
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o644)
        os.chown(os.path.join(path, name), uid, gid)
    os.chmod(path, 0o755)
    return path


class Fpm:
    """php-fpm for the event server: its own config, pid file and socket, run as USER."""

    def __init__(self, root):
        self.root = root
        self.socket = os.path.join(root, "run", "php-fpm.sock")
        self.pidfile = os.path.join(root, "run", "php-fpm.pid")
        self.config = os.path.join(root, "conf", "php-fpm.conf")
        with open(self.config, "w") as f:
            f.write(f"""[global]
pid = {self.pidfile}
error_log = {root}/logs/php-fpm.log
daemonize = no
[bench]
user = {USER}
group = {USER}
listen = {self.socket}
listen.owner = www-data
listen.group = www-data
pm = static
pm.max_children = 16
""")
        binary = sorted(f for f in os.listdir("/usr/sbin") if f.startswith("php-fpm"))[-1]
        self.process = subprocess.Popen([f"/usr/sbin/{binary}", "-F", "-y", self.config], start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket) and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self):
        try:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass


def configure(kind, uid, gid):
    apache = Apache("", name=f"h2-{kind}")
    port = free_port()
    docroot = site(apache.root, uid, gid)
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "a.test")
    parts = [f"Listen 127.0.0.1:{port} https",
             "LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so",
             "LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so",
             f"SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)",
             "MaxKeepAliveRequests 0",
             f"<Directory {apache.root}>\n    Require all granted\n</Directory>"]
    vhost_extra = ""
    apache.fpm = None
    if kind == "event":
        mpm = f"LoadModule mpm_event_module {MODULES_DIR}/mod_mpm_event.so"
        parts += [EVENT, "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so", "Protocols h2 http/1.1",
                  "LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so",
                  "LoadModule proxy_fcgi_module /usr/lib/apache2/modules/mod_proxy_fcgi.so"]
        apache.fpm = Fpm(apache.root)
        vhost_extra = ('<FilesMatch "\\.php$">\n        SetHandler "proxy:unix:'
                       f'{apache.fpm.socket}|fcgi://localhost"\n    </FilesMatch>')
    else:
        php = [f"LoadModule php_module {bench.php_module()}",
               '<FilesMatch "\\.php$">\n    SetHandler application/x-httpd-php\n</FilesMatch>']
        if kind == "prefork":
            mpm = f"LoadModule mpm_prefork_module {MODULES_DIR}/mod_mpm_prefork.so"
            parts += [PREFORK] + php
        else:
            mpm = f"LoadModule mpm_peruser_module {MODULE}"
            parts += ["LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so", "Protocols h2 http/1.1",
                      "MaxClientShare 100"] + php
            parts.append(f"<Processor tenant>\n    User {USER}\n    Group {USER}\n</Processor>")
            vhost_extra = "ServerEnvironment tenant"
    parts.append(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName a.test
    DocumentRoot {docroot}
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    {vhost_extra}
</VirtualHost>""")
    modules = ("authz_core", "authz_host", "mime", "alias", "dir", "env", "reqtimeout", "setenvif")
    apache.write_config("\n".join(parts) + "\n", mpm=mpm, log_level="warn", modules=modules)
    apache.port = port
    return apache


def h2load(kind, port, path):
    log = tempfile.NamedTemporaryFile(prefix="h2load-", delete=False).name
    args = ["h2load", "-c", str(CLIENTS), "-D", str(SECONDS), "--log-file", log, "--warm-up-time=1"]
    args += ["--h1", "-m", "1"] if kind == "prefork" else ["-m", str(STREAMS)]
    out = subprocess.run(args + [f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=SECONDS + 120).stdout
    try:
        rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        failed = int(re.search(r"(\d+) failed", out).group(1))
        protocol = re.search(r"Application protocol: (\S+)", out).group(1)
        times = []
        with open(log) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    times.append(int(fields[2]) / 1000.0)
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
        return rps, p99, int(codes.group(4)) + failed, protocol
    except (AttributeError, ValueError):
        raise RuntimeError(f"h2load: {out[-2000:]}")
    finally:
        os.unlink(log)


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates a user and starts Apache)")
    bench.install(("nghttp2-client", "libapache2-mod-php", "php8.2-fpm"))
    uid, gid = ensure_account(USER)
    servers = {}
    results = {(s, k): [] for s, _ in SCENARIOS for k in KINDS}
    try:
        for kind in KINDS:
            servers[kind] = configure(kind, uid, gid)
            servers[kind].start(ports=(servers[kind].port,), timeout=60)
        time.sleep(3)
        for scenario, path in SCENARIOS:
            for round_ in range(REPEATS):
                for kind in KINDS:
                    r = h2load(kind, servers[kind].port, path)
                    results[(scenario, kind)].append(r)
                    print(f"{scenario:14} {kind:8} round {round_ + 1}: {r[0]:9.0f} req/s  p99 {r[1]:8.2f} ms  "
                          f"errors {r[2]}  {r[3]}", flush=True)
    finally:
        for apache in servers.values():
            apache.stop()
            if apache.fpm:
                apache.fpm.stop()
            apache.cleanup()

    def median(scenario, kind, index):
        return statistics.median(r[index] for r in results[(scenario, kind)])

    lines = [MARK_BEGIN, "## HTTP/2 over TLS (`bench/http2.py`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs "
             f"({bench.cpu_model()}); one TLS vhost, `h2load -c {CLIENTS} -m {STREAMS} -D {SECONDS}` on 127.0.0.1 "
             f"(prefork: `--h1 -m 1`, HTTP/1.1 over TLS), {REPEATS} interleaved rounds, medians. event: Debian's "
             "mpm_event.conf, PHP by php-fpm (16 children). peruser: defaults, mod_php loaded (a worker runs a "
             "connection's streams one at a time). prefork: Debian's mpm_prefork.conf, mod_php.", "",
             "| scenario | event req/s | peruser req/s | prefork (h1) req/s | peruser / event | p99 ms (event / peruser / prefork) | errors |",
             "|---|---|---|---|---|---|---|"]
    for scenario, _ in SCENARIOS:
        rps = {k: median(scenario, k, 0) for k in KINDS}
        p99 = " / ".join(f"{median(scenario, k, 1):.1f}" for k in KINDS)
        errors = " / ".join(str(sum(r[2] for r in results[(scenario, k)])) for k in KINDS)
        lines.append(f"| {scenario} | {rps['event']:.0f} | {rps['peruser']:.0f} | {rps['prefork']:.0f} | "
                     f"{rps['peruser'] / rps['event']:.2f} | {p99} | {errors} |")
    lines.append(MARK_END)
    section = "\n".join(lines) + "\n"
    print(section)
    if os.environ.get("BENCH_NO_WRITE"):
        return
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read()
    if MARK_BEGIN in text:
        text = text.split(MARK_BEGIN)[0] + section + text.split(MARK_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
