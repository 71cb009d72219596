"""What a compromised worker of tenant A holds of tenant B (issue 17): nothing.

Two TLS tenants with their own keys and a `SetEnv` secret each, mod_php (with its opcache) and
per-vhost logs. The in-process attacker (tests/integration/attacker/mod_peruser_attack.c,
`?attack=holdings`) runs inside A's worker as A's uid and:
- searches every readable mapping of the process for needles: B's private key (its two prime
  factors, as big-endian bytes and as OpenSSL's little-endian limbs, and a line of the PEM file),
  B's `SetEnv` secret, and the path of a request B is serving at that moment;
- lists its descriptors and its shared writable mappings.
A's own key and secret are needles too: the scan must find them, so a scan that sees nothing
cannot pass. With `ProcessorImage isolated` (the default) nothing of B is found, no descriptor
is B's log, and no shared writable mapping of A's worker is mapped by B's worker (only the
child table, which each worker maps writable at its own pages only, as the README says). The
multiplexers (read as root through /proc/PID/mem) hold neither tenant's key nor secret. The
same test with `ProcessorImage shared` shows that the attacker does find B's key and secret
there (the multiplexers still hold none: they always come from their own image): the test is
known to bite.
"""
import json
import os
import pwd
import re
import secrets
import signal
import subprocess
import threading
import time

import pytest

from conftest import cgi_root, make_site, php_module, processor, site_vhost, two_environments
from harness import Apache, free_port, read_maps, session_pids
from test_end_to_end import get
from test_inprocess_attacker import build_attack_module
from test_process_management import wait_until
from test_tls import make_cert


def primes(key_file):
    """The RSA key's two prime factors, as big-endian bytes."""
    text = subprocess.run(["openssl", "rsa", "-in", key_file, "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    found = []
    for name in ("prime1", "prime2"):
        block = re.search(name + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
        assert block, text
        found.append(bytes.fromhex(re.sub(r"[\s:]", "", block.group(1))).lstrip(b"\0"))
    return found


def key_needles(key_file):
    """32-byte windows of each prime in both byte orders, and a line from the middle of the PEM."""
    needles = []
    for prime in primes(key_file):
        needles.append(prime[8:40])
        needles.append(prime[::-1][8:40])  # OpenSSL keeps BIGNUMs as little-endian 64-bit limbs
    with open(key_file) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("-----")]
    needles.append(lines[len(lines) // 2].encode())
    return needles


class Tenants:
    def __init__(self, accounts, image):
        self.port = free_port()
        self.apache = Apache("", name="holdings")
        root = self.apache.root
        a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
        self.a_uid, self.b_uid = a_ids[0], b_ids[0]
        self.a_site = make_site(root, *a_ids, "a")
        self.b_site = make_site(root, *b_ids, "b")
        with open(os.path.join(self.b_site, "cgi-bin", "slow-b-request-7f3e.cgi"), "w") as f:
            f.write("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nsleep 6\necho slow\n")
        os.chmod(os.path.join(self.b_site, "cgi-bin", "slow-b-request-7f3e.cgi"), 0o755)
        certs = os.path.join(root, "certs")
        os.makedirs(certs)
        self.keys = {name: make_cert(certs, name) for name in ("a.test", "b.test")}
        self.secrets = {"a": "alpha-" + secrets.token_hex(12), "b": "bravo-" + secrets.token_hex(12)}
        self.logs = {t: os.path.join(root, "logs", f"{t}-access.log") for t in ("a", "b")}
        # Session-ticket keys of their own (48 bytes: name, HMAC key, AES key), and a piped
        # logger each.
        self.ticket_keys = {}
        for t in ("a", "b"):
            self.ticket_keys[t] = secrets.token_bytes(48)
            with open(os.path.join(certs, f"{t}.tkey"), "wb") as f:
                f.write(self.ticket_keys[t])
        self.piped = {t: os.path.join(root, "logs", f"{t}-piped.log") for t in ("a", "b")}
        attack = build_attack_module(root)
        self.www_uid = pwd.getpwnam("www-data").pw_uid

        def vhost(tenant, name, site, env, extra=""):
            key, crt = self.keys[name]
            return f"""<VirtualHost 127.0.0.1:{self.port}>
    ServerName {name}
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    SSLSessionTicketKeyFile {certs}/{tenant}.tkey
    SetEnv DB_PASSWORD {self.secrets[tenant]}
    CustomLog {self.logs[tenant]} vhost
    CustomLog "|/usr/bin/tee -a {self.piped[tenant]}" vhost
    ErrorLog {root}/logs/{tenant}-error.log
    ServerEnvironment {env}
    {extra}
</VirtualHost>
"""
        self.apache.write_config(f"""
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
LoadModule php_module {php_module()}
LoadModule peruser_attack_module {attack}
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
SSLSessionCache shmcb:{root}/run/ssl_scache(512000)
ExtendedStatus On
Listen 127.0.0.1:{self.port} https
MinMultiplexers 1
MaxMultiplexers 1
MinSpareProcessors 0
ProcessorImage {image}
{two_environments(root)}
{vhost("a", "a.test", self.a_site, "env-a", '''<Location /attack>
        SetHandler peruser-attack
    </Location>
    <Location /server-status>
        SetHandler server-status
    </Location>''')}
{vhost("b", "b.test", self.b_site, "env-b")}
""")

    def start(self):
        self.apache.start(ports=(self.port,))
        # A multiplexer and a worker of each tenant (the piped loggers are root's children too).
        # A server that never gets there is stopped here: the fixture's teardown never runs.
        deadline = time.time() + 20
        while {33, self.a_uid, self.b_uid} - {uid for _, uid, _ in self.apache.children()}:
            if time.time() >= deadline:
                children = self.apache.children()
                self.stop()
                raise AssertionError(children)
            time.sleep(0.05)

    def stop(self):
        self.apache.stop()
        self.apache.cleanup()

    def get(self, host, path, timeout=30):
        result = subprocess.run(["curl", "-sk", "-m", str(timeout), "--resolve", f"{host}:{self.port}:127.0.0.1",
                                 f"https://{host}:{self.port}{path}"], capture_output=True, text=True)
        return result.stdout

    def worker_pids(self, uid):
        return [pid for pid, u, _ in self.apache.children() if u == uid]


def scan(server, accounts):
    """Runs the holdings attack in A's worker while B serves a slow request; its report."""
    server.get("b.test", "/id.php")  # B's worker has run PHP (its opcache is in use)
    server.get("a.test", "/id.php")
    slow = threading.Thread(target=server.get, args=("b.test", "/cgi-bin/slow-b-request-7f3e.cgi"))
    slow.start()
    time.sleep(1.5)
    needles = {
        "a-secret": server.secrets["a"].encode(),
        "b-secret": server.secrets["b"].encode(),
        "b-in-flight": b"slow-b-request-7f3e",
    }
    for tenant in ("a", "b"):  # mod_ssl keeps the name, the HMAC key and the AES key apart
        for part, (low, high) in enumerate(((0, 16), (16, 32), (32, 48))):
            needles[f"{tenant}-ticket-{part}"] = server.ticket_keys[tenant][low:high]
    for tenant, name in (("a", "a.test"), ("b", "b.test")):
        for index, needle in enumerate(key_needles(server.keys[name][0])):
            needles[f"{tenant}-key-{index}"] = needle
    names = list(needles)
    query = ",".join(needles[n].hex() for n in names)
    body = server.get("a.test", f"/attack?attack=holdings&needles={query}", timeout=60)
    status = server.get("a.test", "/server-status")
    slow.join()
    report = [json.loads(line) for line in body.splitlines() if line.startswith("{")]
    assert report and report[0].get("uid") == accounts["peruser-a"][0], body[:2000]
    hits = {names[r["needle"]]: r for r in report if "needle" in r}
    return report, hits, status


def logger_pipes(server, tenant):
    """The pipes into tenant's piped logger (its stdin), as /proc/PID/fd targets."""
    found = set()
    for pid in session_pids(os.getsid(server.apache.pid())):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if server.piped[tenant].encode() not in f.read():
                    continue
            found.add(os.readlink(f"/proc/{pid}/fd/0"))
        except OSError:
            continue
    return {t for t in found if t.startswith("pipe:")}


def memory_hits(pid, needles):
    """Which needles occur in process `pid`'s readable memory (read as root through /proc)."""
    found = {}
    ranges = []
    for line in read_maps(pid).splitlines():
        fields = line.split()
        if fields[1][0] == "r" and not any(x in line for x in ("[vvar]", "[vsyscall]")):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end, " ".join(fields[5:])))
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end, path in ranges:
            at = start
            while at < end:
                want = min(end - at, 1 << 20)
                try:
                    data = os.pread(fd, want + min(256, end - at - want), at)
                except OSError:
                    at = (at | 4095) + 1
                    continue
                for name, needle in needles.items():
                    if needle in data:
                        found.setdefault(name, []).append(path or "anonymous")
                at += want
    finally:
        os.close(fd)
    return found


def b_worker_shared_mappings(server, accounts):
    """(inode, offset, size) of every shared writable mapping of B's workers, read as root."""
    found = set()
    for pid in server.worker_pids(accounts["peruser-b"][0]):
        for line in read_maps(pid).splitlines():
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if fields[1][1] == "w" and fields[1][3] == "s":
                found.add((int(fields[4]), int(fields[2], 16), end - start, " ".join(fields[5:])))
    return found


@pytest.fixture
def isolated(module, accounts):
    server = Tenants(accounts, "isolated")
    server.start()
    yield server
    print(server.apache.read_error_log()[-3000:])
    server.stop()


@pytest.fixture
def shared(module, accounts):
    server = Tenants(accounts, "shared")
    server.start()
    yield server
    server.stop()


def image_control_root_ends(apache, zygote=True):
    """The root parent's ends of its images' and its zygote's control channels, as /proc/PID/fd
    targets: an image's own end is the descriptor PERUSER_IMAGE names (its third field; the
    zygote's PERUSER_ZYGOTE, its second), the root's is that socket's peer (ss). Checked to be the
    parent's, so a check against them can bite. `zygote`: the zygote's too."""
    image_ends = set()
    for pid in apache.images() + [p for p in [apache.zygote()] if p and zygote]:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                # The zygote's (Zygote.swift) names its control channel second.
                for variable, field in ((b"PERUSER_IMAGE=", 2), (b"PERUSER_ZYGOTE=", 1)):
                    if entry.startswith(variable):
                        fd = int(entry.split(b"=", 1)[1].split(b":")[field])
                        image_ends.add(os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:["):-1])
    out = subprocess.run(["ss", "-x", "-a"], capture_output=True, text=True, check=True).stdout
    root_ends = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[5] in image_ends:
            root_ends.add(f"socket:[{fields[7]}]")
    parent = apache.pid()
    held = {os.readlink(f"/proc/{parent}/fd/{fd}") for fd in os.listdir(f"/proc/{parent}/fd")}
    assert image_ends and len(root_ends) == len(image_ends) and root_ends <= held, (image_ends, root_ends)
    return root_ends


def assert_no_image_control(server, report):
    """From inside A's worker: none of its descriptors is the root's end of an image's control
    channel (with one, it could ask the multiplexers' image to start multiplexers with channels
    of its own for another environment, or the zygote to fork an image, as root, from a
    configuration of its own), nor the zygote's own end (its image closed it)."""
    targets = {r["target"] for r in report if "fd" in r}
    assert any(t.startswith("socket:") for t in targets), targets  # the listing sees sockets
    held = targets & image_control_root_ends(server.apache)
    assert not held, f"A's worker holds the root's end of an image's control channel: {held}"
    zygote = server.apache.zygote()
    if zygote:
        with open(f"/proc/{zygote}/environ", "rb") as f:
            fd = [e.split(b"=", 1)[1].split(b":")[1] for e in f.read().split(b"\0") if e.startswith(b"PERUSER_ZYGOTE=")][0]
        own = os.readlink(f"/proc/{zygote}/fd/{int(fd)}")
        assert own not in targets, f"A's worker holds the zygote's end of its control channel: {own}"


def epoll_watches(pid):
    """The inodes the epolls of `pid` watch (fdinfo's "ino:" fields), by descriptor."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                found[int(fd)] = {int(line.split(" ino:")[1].split()[0], 16)
                                  for line in f if line.startswith("tfd:") and " ino:" in line}
        except OSError:
            continue
    return found


def assert_no_root_epoll(server, report):
    """From inside A's worker: no epoll it holds is the root's (which watches the images'
    control channels; a worker holding it could take those watches away, and the root would
    no longer see an image ready), and each watches only what the worker holds itself."""
    # The zygote's channel is not in the root's epoll: the root waits on it only while it asks.
    root_ends = {int(t[len("socket:["):-1]) for t in image_control_root_ends(server.apache, zygote=False)}
    root_watched = set().union(*epoll_watches(server.apache.pid()).values())
    assert root_ends <= root_watched, (root_ends, root_watched)  # so the check below can bite
    fds = [r for r in report if "fd" in r]
    own = {int(r["target"].split("[")[1][:-1]) for r in fds if r["target"].startswith(("socket:[", "pipe:["))}
    for r in fds:
        if r["target"] == "anon_inode:[eventpoll]":
            assert not set(r["watches"]) & root_watched, f"A's worker holds the root's epoll: {r}"
            assert set(r["watches"]) <= own, f"an epoll of A's worker watches what it does not hold: {r}"


def test_a_worker_of_a_holds_nothing_of_b(isolated, accounts):
    report, hits, status = scan(isolated, accounts)
    print(json.dumps(hits, indent=1))
    # The scan works: it finds A's own key and secret.
    assert hits["a-secret"]["hits"] > 0
    assert any(hits[f"a-key-{i}"]["hits"] > 0 for i in range(5)), hits
    assert any(hits[f"a-ticket-{i}"]["hits"] > 0 for i in range(3)), hits
    found = {name: r["where"] for name, r in hits.items() if name.startswith("b-") and r["hits"] > 0}
    assert not found, f"A's worker holds B's: {found}"
    # Descriptors: nothing of B's logs (nor of B's site).
    targets = [r["target"] for r in report if "fd" in r]
    print(targets)
    assert not [t for t in targets if "b-access.log" in t or "b-error.log" in t or "/b/" in t], targets
    assert_no_image_control(isolated, report)
    assert_no_root_epoll(isolated, report)
    # B's piped logger: A's worker holds no end of the pipe into it.
    assert not set(targets) & logger_pipes(isolated, "b"), (targets, logger_pipes(isolated, "b"))
    assert logger_pipes(isolated, "b"), "B's piped logger runs"
    # Shared writable mappings: none is B's too, but for the child table (own pages only).
    mine = [r for r in report if "shared_writable" in r]
    theirs = b_worker_shared_mappings(isolated, accounts)
    common = [r for r in mine if any(inode == r["inode"] for inode, _, _, _ in theirs)
              and "peruser-child-table" not in r["shared_writable"]]
    assert not common, f"shared writable mappings of A's worker that B's worker maps too: {common}"
    # The multiplexers hold no key and no tenant's secret: they run from an image of stubs.
    multiplexers = [pid for pid, uid, _ in isolated.apache.children() if uid == isolated.www_uid]
    assert multiplexers
    needles = {"a-secret": isolated.secrets["a"].encode(), "b-secret": isolated.secrets["b"].encode()}
    for tenant, name in (("a", "a.test"), ("b", "b.test")):
        for index, needle in enumerate(key_needles(isolated.keys[name][0])):
            needles[f"{tenant}-key-{index}"] = needle
    for pid in multiplexers:
        assert memory_hits(pid, needles) == {}, f"multiplexer {pid} holds a tenant's key or secret"
        # Nor a language runtime: their image loads no mod_php (nor its opcache segment).
        assert "libphp" not in read_maps(pid), f"multiplexer {pid} has mod_php loaded"
    # The status page in A's vhost says nothing of B's request.
    assert "slow-b-request-7f3e" not in status and "b.test" not in status, status[-3000:]
    # The root parent loaded mod_php but never started its engine (every worker comes from an
    # image, which starts its own): no extension of php.ini is loaded there, no opcache segment.
    # A's worker runs PHP all the same.
    assert root_php(isolated) == {"libphp": True, "engine started": False}
    assert f"uid={accounts['peruser-a'][0]} " in isolated.get("a.test", "/id.php")


def test_php_runs_after_a_graceful_restart_and_the_root_still_leaves_it_unstarted(isolated, accounts):
    """A graceful restart reads the configuration again, hooks included: the root leaves mod_php
    unstarted in the new generation too, and A's new worker (from A's new image) runs PHP."""
    a_uid = accounts["peruser-a"][0]
    assert f"uid={a_uid} " in isolated.get("a.test", "/id.php")
    old = set(isolated.worker_pids(a_uid))
    parent = isolated.apache.pid()
    os.kill(parent, signal.SIGUSR1)
    assert wait_until(lambda: "generation 1," in isolated.apache.read_error_log()), isolated.apache.read_error_log()[-2000:]
    # A connection the old multiplexers accepted before they saw the signal is still served by
    # the old generation (none is lost); the new generation serves the ones after.
    served = []

    def served_by_a_new_worker():
        body = isolated.get("a.test", "/id.php", timeout=5)
        served.append(body)
        pid = re.search(r"pid=(\d+)", body)
        return f"uid={a_uid} " in body and pid is not None and int(pid.group(1)) not in old

    assert wait_until(served_by_a_new_worker, timeout=20), (served[-3:], old)
    assert isolated.apache.pid() == parent
    assert wait_until(lambda: not set(isolated.worker_pids(a_uid)) & old), "the old generation's worker of A stays"
    assert root_php(isolated) == {"libphp": True, "engine started": False}


def root_php(server):
    """What the root parent has mapped of PHP: libphp (LoadModule), and the extensions PHP's
    start loads (opcache, listed in Debian's php.ini.d)."""
    maps = read_maps(server.apache.pid())
    return {"libphp": "libphp" in maps, "engine started": "opcache.so" in maps}


def test_the_shared_image_gives_b_away(shared, accounts):
    """The same attack on ProcessorImage shared: every worker is forked from the root, which
    loaded every tenant's key and configuration. The attacker finds B's secret and key."""
    report, hits, _ = scan(shared, accounts)
    print(json.dumps(hits, indent=1))
    assert hits["b-secret"]["hits"] > 0
    assert any(hits[f"b-key-{i}"]["hits"] > 0 for i in range(5)), hits
    targets = [r["target"] for r in report if "fd" in r]
    assert any("b-access.log" in t for t in targets), targets
    assert any(hits[f"b-ticket-{i}"]["hits"] > 0 for i in range(3)), hits
    assert set(targets) & logger_pipes(shared, "b"), "A's worker holds the pipe into B's logger"
    # But not the images' control channels, which would reach beyond B: to the multiplexers'
    # image, and through it every environment's connections, isolated ones too.
    assert_no_image_control(shared, report)
    assert_no_root_epoll(shared, report)
    # The multiplexers come from their own image whatever ProcessorImage says: no key there.
    multiplexers = [pid for pid, uid, _ in shared.apache.children() if uid == shared.www_uid]
    needles = {f"b-key-{i}": n for i, n in enumerate(key_needles(shared.keys["b.test"][0]))}
    assert multiplexers and not any(memory_hits(pid, needles) for pid in multiplexers)
    # Workers forked from the root run PHP started there.
    assert root_php(shared) == {"libphp": True, "engine started": True}


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def image_role(pid):
    """An image's role as its start named it (PERUSER_IMAGE's first field: "m" for the
    multiplexers', else an environment's index); the image unsets the variable, but its
    initial environment block stays readable in /proc."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"PERUSER_IMAGE="):
                    return entry.split(b"=", 1)[1].split(b":")[0].decode()
    except OSError:
        pass
    return None


def images_by_role(apache):
    return sorted(image_role(pid) or "?" for pid in apache.images())


def test_an_isolated_environment_image_starts_when_needed_and_leaves_when_quiet(module, accounts):
    """ProcessorImage per <Processor>: globally shared, env-a isolated with MinProcessors 0. No
    image for env-a until a.test is asked for; then its worker comes from env-a's image (its
    command line reads the configuration from a memfd), while env-b's comes from the root
    parent; once env-a has had no worker for the quiet time (IdleTimeout, at least 10 s), its
    image exits too."""
    from conftest import make_site
    port = free_port()
    apache = Apache("", name="lazy-image")
    a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, *a_ids, "a")
    b_site = make_site(apache.root, *b_ids, "b")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
ProcessorImage shared
IdleTimeout 2
MinSpareProcessors 0
MinMultiplexers 1
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<Processor env-a>
    User peruser-a
    Group peruser-a
    ProcessorImage isolated
</Processor>
<Processor env-b>
    User peruser-b
    Group peruser-b
    MinProcessors 1
</Processor>
{site_vhost(port, "a.test", a_site, "env-a")}
{site_vhost(port, "b.test", b_site, "env-b")}
""")
    try:
        apache.start(ports=(port,))
        apache.wait_children(2)  # a multiplexer, env-b's worker
        assert images_by_role(apache) == ["m"], "only the multiplexers' image at start"
        b_worker = [pid for pid, uid, _ in apache.children() if uid == b_ids[0]][0]
        assert cmdline(b_worker) == cmdline(apache.pid()), "env-b (shared) is forked from the root parent"
        body = get(port, "a.test")[1]
        assert f"uid={a_ids[0]} " in body, body
        assert images_by_role(apache) == ["0", "m"]
        a_workers = [pid for pid, uid, _ in apache.children() if uid == a_ids[0]]
        assert a_workers and all(any(x.startswith(b"/proc/self/fd/") for x in cmdline(p)) for p in a_workers)
        # The worker leaves after IdleTimeout, the image 10 s after it was last used (and the
        # multiplexers' image 10 s after its last multiplexer started).
        assert wait_until(lambda: "0" not in images_by_role(apache), timeout=30, interval=0.5), \
            apache.read_error_log()[-2000:]
        assert "exits: no worker and none asked for in 10 s" in apache.read_error_log()
        # Asked again, it starts again.
        body = get(port, "a.test")[1]
        assert f"uid={a_ids[0]} " in body, body
    finally:
        apache.stop()
        apache.cleanup()


def test_the_multiplexers_image_leaves_when_quiet_and_comes_back_for_a_multiplexer(module, accounts):
    """The multiplexers' image holds a whole Apache startup that nothing uses once the
    multiplexers run: with MinMultiplexers running and none asked for during the quiet time
    (IdleTimeout, at least 10 s), it exits. A multiplexer that dies then brings it back, and the
    new multiplexer routes as before."""
    port = free_port()
    apache = Apache("", name="mux-image")
    a_ids = accounts["peruser-a"]
    a_site = make_site(apache.root, *a_ids, "a")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
IdleTimeout 2
MinMultiplexers 1
MaxMultiplexers 1
{cgi_root(apache.root)}{processor("env-a", "peruser-a", "MinProcessors 1")}{site_vhost(port, "a.test", a_site, "env-a")}
""")

    def served():
        return get(port, "a.test")[1]

    def multiplexers():
        return [pid for pid, uid, _ in apache.children() if uid not in (a_ids[0], 0)]

    try:
        apache.start(ports=(port,))
        apache.wait_children(2)
        assert images_by_role(apache) == ["0", "m"]
        assert f"uid={a_ids[0]} " in served()
        assert wait_until(lambda: "m" not in images_by_role(apache), timeout=30, interval=0.5)
        assert images_by_role(apache) == ["0"], apache.read_error_log()[-2000:]
        assert "the multiplexers' process image" in apache.read_error_log()
        assert "exits: no multiplexer asked for in 10 s" in apache.read_error_log()
        assert f"uid={a_ids[0]} " in served(), "the running multiplexer routes without its image"
        [old] = multiplexers()
        os.kill(old, 9)
        assert wait_until(lambda: [p for p in multiplexers() if p != old], interval=0.1), apache.read_error_log()[-2000:]
        assert "m" in images_by_role(apache)
        assert f"uid={a_ids[0]} " in served(), apache.read_error_log()[-2000:]
    finally:
        apache.stop()
        apache.cleanup()
