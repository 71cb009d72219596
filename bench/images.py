#!/usr/bin/env python3
"""Benchmark: what per-environment process images cost (issue 17).

`ProcessorImage isolated` (the default: each environment's workers are forked from an apache2
that loaded only that environment's vhosts, and the multiplexers from one that loaded only
routing stubs) against `ProcessorImage shared` (every child forked from the root parent, which
holds every tenant's configuration), interleaved (isolated, shared, isolated, shared, ...),
REPEATS rounds, medians. Every tenant has mod_php and a TLS vhost with its own key, as a
hosting box has. Measured:

- first byte from an environment with no worker (MinProcessors 0; 20 tenants, each asked once
  right after a fresh start): with isolated, its image starts first (images start when first
  needed); then again once the workers have left (IdleTimeout 3 s) while the images stay
  (10 s): the spawn through the image's double fork and the first request;
- worker spawn time: from a start until every one of 20 environments has its first worker
  (MinProcessors 1), divided by 20;
- idle memory: summed PSS of the whole server, 20 environments at MinProcessors 1, each asked
  once, 5 s later; prefork (Debian's mod_php, no isolation) with as many children as anchor;
- graceful restart with 100 environments (MinProcessors 1): from SIGUSR1 until every
  environment has a worker of the new generation.

Run as root: `python3 bench/images.py`. Writes its section of BENCHMARKS.md. Loopback only.
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)

from harness import Apache, MODULE, ensure_account, free_port, proc_ids, session_pids  # noqa: E402
from bench import cpu_model, install, php_module, session_pss  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
MODULES_DIR = "/usr/lib/apache2/modules"
MARK_BEGIN = "<!-- images.py begin -->"
MARK_END = "<!-- images.py end -->"


def users(count):
    return [f"bench-t{n:03d}" for n in range(count)]


def configure(kind, tenants, min_processors, extra=""):
    """prefork, or peruser with ProcessorImage `kind` (isolated, shared); `tenants` TLS vhosts."""
    apache = Apache("", name=f"images-{kind}")
    port = free_port()
    root = apache.root
    docroot = os.path.join(root, "site")
    os.makedirs(docroot)
    with open(os.path.join(docroot, "1k.html"), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(docroot, "hello.php"), "w") as f:
        f.write("<?php echo 'hello from ', posix_getuid(), \"\\n\";\n")
    for name in os.listdir(docroot):
        os.chmod(os.path.join(docroot, name), 0o644)
    os.chmod(docroot, 0o755)
    certs = os.path.join(root, "certs")
    os.makedirs(certs)
    # One key per tenant, as a hosting box has (ECDSA: quick to make in bulk).
    for n in range(tenants):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{certs}/t{n}.key", "-out", f"{certs}/t{n}.crt", "-days", "2",
                        "-subj", f"/CN=t{n:03d}.bench"], check=True, capture_output=True)
    tls_port = free_port()
    parts = [f"Listen 127.0.0.1:{port}", f"Listen 127.0.0.1:{tls_port} https",
             f"LoadModule php_module {php_module()}",
             f"LoadModule ssl_module {MODULES_DIR}/mod_ssl.so",
             f"LoadModule socache_shmcb_module {MODULES_DIR}/mod_socache_shmcb.so",
             f"SSLSessionCache shmcb:{root}/run/ssl_scache(512000)",
             f"<Directory {root}>\n    Require all granted\n</Directory>",
             '<FilesMatch "\\.php$">\n    SetHandler application/x-httpd-php\n</FilesMatch>']
    if kind == "prefork":
        children = tenants + 4
        parts.append(f"StartServers {children}\nMinSpareServers {children}\nMaxSpareServers {children + 1}\n"
                     f"ServerLimit {children + 8}\nMaxRequestWorkers {children + 8}")
        mpm = f"LoadModule mpm_prefork_module {MODULES_DIR}/mod_mpm_prefork.so"
    else:
        mpm = f"LoadModule mpm_peruser_module {MODULE}"
        parts.append(f"ProcessorImage {kind}\nMinMultiplexers 2\nMinSpareProcessors 0\nMaxClientShare 100\n{extra}")
        parts += [f"<Processor t{n:03d}>\n    User {user}\n    Group {user}\n    MinProcessors {min_processors}\n"
                  "</Processor>" for n, user in enumerate(users(tenants))]
    # A plain vhost first: the port's default, so plain HTTP reaches every tenant by name.
    for n in range(tenants):
        env = f"ServerEnvironment t{n:03d}" if kind != "prefork" else ""
        parts.append(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName t{n:03d}.bench
    DocumentRoot {docroot}
    SetEnv DB_PASSWORD secret-of-t{n:03d}
    {env}
</VirtualHost>
<VirtualHost 127.0.0.1:{tls_port}>
    ServerName t{n:03d}.bench
    DocumentRoot {docroot}
    SSLEngine on
    SSLCertificateFile {certs}/t{n}.crt
    SSLCertificateKeyFile {certs}/t{n}.key
    SetEnv DB_PASSWORD secret-of-t{n:03d}
    {env}
</VirtualHost>""")
    apache.write_config("\n".join(parts) + "\n", mpm=mpm, log_level="info")
    apache.port = port
    apache.tenants = tenants
    return apache


def tenant_workers(apache, tenants):
    """Pids of the server's processes running as a tenant."""
    uids = {ensure_account(u)[0] for u in users(tenants)}
    found = set()
    for pid in session_pids(os.getsid(apache.pid())):
        try:
            if proc_ids(pid)[0] in uids:
                found.add(pid)
        except (OSError, TypeError):
            pass
    return found


def first_byte_ms(port, host):
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        s.sendall(f"GET /1k.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        s.recv(1)
        return (time.monotonic() - started) * 1000


def wait_ready(apache, timeout=60):
    """Until the error log says the multiplexers' image is ready (environments' images start
    when first needed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "multiplexers' process image" in apache.read_error_log() and "is ready after" in apache.read_error_log():
            return
        time.sleep(0.05)
    raise RuntimeError("images not ready")


def worker_count(apache, tenants):
    return len(tenant_workers(apache, tenants))


def first_bytes(kind):
    """(cold, warm) first-byte samples of 20 tenants with no worker: cold right after the start
    (isolated: no image either, so it starts too), warm once the workers left after IdleTimeout
    (3 s) and the images are still there (they stay 10 s)."""
    apache = configure(kind, 20, 0, extra="IdleTimeout 3")
    apache.start(ports=(apache.port,))
    wait_ready(apache)
    time.sleep(1)
    cold = [first_byte_ms(apache.port, f"t{n:03d}.bench") for n in range(20)]
    deadline = time.time() + 20
    while worker_count(apache, 20) and time.time() < deadline:
        time.sleep(0.1)
    warm = [first_byte_ms(apache.port, f"t{n:03d}.bench") for n in range(20)]
    apache.stop()
    apache.cleanup()
    return cold, warm


def spawn_and_idle(kind):
    """(ms per first worker of 20 environments, idle PSS KiB, processes)."""
    apache = configure(kind, 20, 1)
    started = time.monotonic()
    apache.start(ports=(apache.port,))
    deadline = time.time() + 60
    while len(tenant_workers(apache, 20)) < 20 and time.time() < deadline:
        time.sleep(0.01)
    per_worker = (time.monotonic() - started) * 1000 / 20
    for n in range(20):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Host: t{n:03d}.bench",
                        f"http://127.0.0.1:{apache.port}/hello.php"])
    time.sleep(5)
    pss, count = session_pss(apache), len(session_pids(os.getsid(apache.pid())))
    apache.stop()
    apache.cleanup()
    return per_worker, pss, count


def prefork_idle():
    apache = configure("prefork", 20, 0)
    apache.start(ports=(apache.port,))
    time.sleep(3)
    for n in range(20):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Host: t{n:03d}.bench",
                        f"http://127.0.0.1:{apache.port}/hello.php"])
    time.sleep(5)
    pss, count = session_pss(apache), len(session_pids(os.getsid(apache.pid())))
    apache.stop()
    apache.cleanup()
    return pss, count


def graceful_restart_ms(kind, tenants=100):
    apache = configure(kind, tenants, 1)
    apache.start(ports=(apache.port,), timeout=120)
    deadline = time.time() + 120
    while len(tenant_workers(apache, tenants)) < tenants and time.time() < deadline:
        time.sleep(0.05)
    old = tenant_workers(apache, tenants)
    started = time.monotonic()
    os.kill(apache.pid(), signal.SIGUSR1)
    deadline = time.time() + 120
    # Every environment has a worker of the new generation: as many new tenant pids as tenants
    # (each old one is retired once the new one is there).
    while len(tenant_workers(apache, tenants) - old) < tenants and time.time() < deadline:
        time.sleep(0.02)
    elapsed = (time.monotonic() - started) * 1000
    apache.stop()
    apache.cleanup()
    return elapsed


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    install(("libapache2-mod-php",))
    for user in users(100):
        ensure_account(user)
    results = {k: {"first": [], "warm": [], "spawn": [], "pss": [], "procs": [], "restart": []}
               for k in ("isolated", "shared")}
    prefork = []
    for round_ in range(REPEATS):
        for kind in ("isolated", "shared"):
            r = results[kind]
            cold, warm = first_bytes(kind)
            r["first"] += cold
            r["warm"] += warm
            per_worker, pss, procs = spawn_and_idle(kind)
            r["spawn"].append(per_worker)
            r["pss"].append(pss)
            r["procs"].append(procs)
            r["restart"].append(graceful_restart_ms(kind))
            print(kind, round_, {k: v[-1] for k, v in r.items()}, flush=True)
        prefork.append(prefork_idle())
    prefork_pss = statistics.median(p for p, _ in prefork)
    prefork_procs = prefork[0][1]
    rows = []
    for kind in ("isolated", "shared"):
        r = results[kind]
        first, warm = sorted(r["first"]), sorted(r["warm"])
        rows.append(f"| {kind} | {statistics.median(first):.1f} ms (max {first[-1]:.1f}) "
                    f"| {statistics.median(warm):.1f} ms (max {warm[-1]:.1f}) "
                    f"| {statistics.median(r['spawn']):.1f} ms "
                    f"| {statistics.median(r['pss']) / 1024:.0f} MiB ({statistics.median(r['pss']) / prefork_pss:.2f} × prefork, "
                    f"{r['procs'][0]} processes) | {statistics.median(r['restart']) / 1000:.2f} s |")
    table = "\n".join([
        MARK_BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()}, {os.cpu_count()} CPUs; {REPEATS} interleaved rounds, "
        "medians. Every tenant: mod_php, its own TLS key, a SetEnv secret.",
        "",
        "| ProcessorImage | first byte, no worker, no image (20 tenants after a start) | first byte, no worker, "
        "image still there | worker spawn (20 environments with MinProcessors 1, from start, per environment) "
        "| idle PSS, 20 environments with a worker each | graceful restart, 100 environments with MinProcessors 1 |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| prefork (no isolation) | — | — | — | {prefork_pss / 1024:.0f} MiB ({prefork_procs} processes) | — |",
        MARK_END,
    ])
    print(table)
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read()
    if MARK_BEGIN in text:
        text = text.split(MARK_BEGIN)[0] + table + text.split(MARK_END, 1)[1]
    else:
        text += "\n## Process images (issue 17): what isolation costs\n\n" + table + "\n"
    open(path, "w").write(text)


if __name__ == "__main__":
    main()
