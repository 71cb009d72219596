"""No tenant can be starved by slow connections (issue 18): hundreds of slow clients of each
kind against tenant A, with Debian's timeouts (Timeout 300, mod_reqtimeout's defaults) and the
default limits (MaxProcessors 10, MaxClientShare 50, ReaderShedTimeout 1). Another client's
requests to A are all answered quickly, and tenant B does not notice.

- One attacking address: it holds at most its share of A's workers (MaxClientShare); the rest
  serve everyone else.
- Attackers spread over fifty addresses: A's workers give up clients they have waited on for
  ReaderShedTimeout while connections wait (ReaderShedding), and waiting connections go to the
  lightest client first.
- Behind a front proxy (mod_remoteip): the share follows the forwarded address, never the proxy.
"""
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

from conftest import make_site
from harness import Apache, free_port, read_until_close, serving
from test_tls import make_cert

HERE = os.path.dirname(os.path.abspath(__file__))

# Debian's apache2.conf and reqtimeout.conf, and this MPM's defaults for everything else.
DEBIAN_TIMEOUTS = """Timeout 300
KeepAlive On
KeepAliveTimeout 5
LoadModule reqtimeout_module /usr/lib/apache2/modules/mod_reqtimeout.so
RequestReadTimeout header=20-40,MinRate=500 body=10,MinRate=500
"""


def configuration(apache, plain, tls, sites, keys, extra=""):
    def vhost(port, name, site, env, secure):
        key, crt = keys[name]
        return f"""<VirtualHost 127.0.0.1:{port}>
    ServerName {name}
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    ServerEnvironment {env}
    {f"SSLEngine on" if secure else ""}
    {f"SSLCertificateFile {crt}" if secure else ""}
    {f"SSLCertificateKeyFile {key}" if secure else ""}
</VirtualHost>
"""
    return f"""
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
{DEBIAN_TIMEOUTS}
Listen 127.0.0.1:{plain}
Listen 127.0.0.1:{tls} https
{extra}
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<Location /server-status>
    SetHandler server-status
</Location>
<Processor env-a>
    User peruser-a
    Group peruser-a
</Processor>
<Processor env-b>
    User peruser-b
    Group peruser-b
</Processor>
{vhost(plain, "a.test", sites["a"], "env-a", False)}
{vhost(plain, "b.test", sites["b"], "env-b", False)}
{vhost(tls, "a.test", sites["a"], "env-a", True)}
{vhost(tls, "b.test", sites["b"], "env-b", True)}
"""


def start(accounts, extra="", name="slow-attack"):
    plain, tls = free_port(), free_port()
    apache = Apache("", name=name)
    sites = {t: make_site(apache.root, *accounts[f"peruser-{t}"], t) for t in ("a", "b")}
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    keys = {n: make_cert(certs, n) for n in ("a.test", "b.test")}
    apache.write_config(configuration(apache, plain, tls, sites, keys, extra))
    apache.plain, apache.tls, apache.port = plain, tls, plain
    apache.uids = {t: accounts[f"peruser-{t}"][0] for t in ("a", "b")}
    apache.start(ports=(plain, tls))
    apache.wait_children(3)
    return apache


def attack_target(accounts, extra="", name="slow-attack"):
    """A module fixture's server: started, then stopped with the end of its log printed."""
    apache = start(accounts, extra, name=name)
    yield from serving(apache, log_tail=4000)


@pytest.fixture(scope="module")
def attacked(module, accounts):
    yield from attack_target(accounts)


def attack(apache, sources, seconds, each=200, kinds=None, forwarded_for=None):
    command = [sys.executable, os.path.join(HERE, "slow_attack.py"), "--plain-port", str(apache.plain),
               "--tls-port", str(apache.tls), "--host", "a.test", "--each", str(each), "--seconds", str(seconds)]
    for source in sources:
        command += ["--sources", source]
    if kinds:
        command += ["--kinds", kinds]
    if forwarded_for:
        command += ["--forwarded-for", forwarded_for]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def timed_get(apache, host, secure, source="127.0.0.2", path="/cgi-bin/id.cgi", headers=None):
    """One request on a new connection from `source`: (status, body, seconds)."""
    started = time.monotonic()
    if secure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", apache.tls, timeout=20, context=context,
                                           source_address=(source, 0))
        conn._tunnel_host = None
        conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", apache.tls), timeout=20,
                                                                 source_address=(source, 0)),
                                        server_hostname=host)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", apache.plain, timeout=20, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close", **(headers or {})})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        return response.status, body, time.monotonic() - started
    finally:
        conn.close()


def environment_fields(body, env):
    """The key=value pairs of `env`'s PeruserEnvironment line in a ?auto page."""
    for line in body.splitlines():
        if line.startswith(f"PeruserEnvironment: {env} "):
            return dict(part.split("=", 1) for part in line.split()[2:])
    raise AssertionError(body[:500])


def environment_line(apache, env):
    status, body, _ = timed_get(apache, "b.test", False, path="/server-status?auto")
    assert status == 200, body
    return environment_fields(body, env)


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def normal_requests(apache, count=50):
    """`count` requests to A from 127.0.0.2, plain and TLS in turn, and a few to B: each must be
    served by its tenant. Returns the sorted latencies of A's."""
    latencies = []
    for index in range(count):
        status, body, took = timed_get(apache, "a.test", secure=index % 2 == 1)
        assert status == 200, (index, status, body[:300])
        assert f"uid={apache.uids['a']}" in body
        latencies.append(took)
        if index % 10 == 0:
            status, body, took_b = timed_get(apache, "b.test", secure=index % 20 == 0)
            assert status == 200 and f"uid={apache.uids['b']}" in body, (status, body[:300])
            assert took_b < 1.0, f"tenant B took {took_b:.2f} s"
        time.sleep(0.1)
    return sorted(latencies)


def p99(latencies):
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def test_one_attacking_address_holds_only_its_share(attacked):
    process = attack(attacked, ["127.0.0.1"], seconds=25)
    try:
        # The attack is in place: A's workers are full of this address's readers.
        assert wait_for(lambda: int(environment_line(attacked, "env-a")["reading"]) >= 4, 10), \
            environment_line(attacked, "env-a")
        time.sleep(2)
        latencies = normal_requests(attacked)
        # MaxClientShare 50 of MaxProcessors 10: never more than 5 of A's workers are its.
        assert int(environment_line(attacked, "env-a")["reading"]) <= 5
        assert p99(latencies) < 1.0, latencies
        line = environment_line(attacked, "env-a")
        assert int(line["availability"]) == 100, line  # the attacker's waiting never lowers it
    finally:
        counts = finish(process)
    assert sum(counts["opened"].values()) >= 800, counts
    log = attacked.read_error_log()
    assert "killed by signal" not in log and "Segmentation" not in log


def test_attackers_spread_over_fifty_addresses_are_shed(attacked):
    before = int(environment_line(attacked, "env-a")["shed"])
    process = attack(attacked, [f"127.0.0.{n}" for n in range(10, 60)], seconds=30)
    try:
        assert wait_for(lambda: int(environment_line(attacked, "env-a")["reading"]) >= 8, 10), \
            environment_line(attacked, "env-a")
        time.sleep(2)
        latencies = normal_requests(attacked)
        assert p99(latencies) < 2.0, latencies
        line = environment_line(attacked, "env-a")
        # Workers gave readers up under pressure, and said so; B's never had to.
        assert int(line["shed"]) > before, line
        assert int(environment_line(attacked, "env-b")["shed"]) == 0
    finally:
        counts = finish(process)
    assert sum(counts["closed_by_server"].values()) > 0, counts
    assert "gave up a connection from 127.0.0." in attacked.read_error_log()


def test_an_idle_environment_keeps_its_patience(attacked):
    # Nobody waits for B: a TLS client that takes 3 s (three times ReaderShedTimeout) to send
    # its request is still served.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    before = int(environment_line(attacked, "env-b")["shed"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", attacked.tls), timeout=20),
                             server_hostname="b.test") as sock:
        time.sleep(3)
        sock.sendall(b"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        data = read_until_close(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert f"uid={attacked.uids['b']}".encode() in data
    assert int(environment_line(attacked, "env-b")["shed"]) == before


def install_sleep_cgi(apache, name, seconds):
    """A CGI of tenant A that sleeps `seconds`, then answers its uid: /cgi-bin/NAME."""
    script = os.path.join(apache.root, "a", "cgi-bin", name)
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nsleep {seconds}\n"
                "printf 'Content-Type: text/plain\\r\\n\\r\\nuid=%s\\n' \"$(id -u)\"\n")
    os.chown(script, apache.uids["a"], apache.uids["a"])
    os.chmod(script, 0o755)


def reader_past_its_bound(apache, spares):
    """A slow POST to A that a worker has waited on past ReaderShedTimeout (1 s), with `spares`
    idle workers beside it: its socket."""
    sock = slow_post(apache)
    assert wait_for(lambda: environment_line(apache, "env-a")["reading"] == "1", 5), environment_line(apache, "env-a")
    assert wait_for(lambda: environment_line(apache, "env-a")["idle"] == str(spares), 5), environment_line(apache, "env-a")
    time.sleep(1.5)
    return sock


def assert_served_by_a(apache, sock):
    data = read_until_close(sock)
    assert data.startswith(b"HTTP/1.1 200") and f"uid={apache.uids['a']}".encode() in data, data[:300]


def test_a_request_that_waits_a_moment_for_a_worker_sheds_no_reader(accounts):
    # MaxProcessors 2: a reader past ReaderShedTimeout holds one worker; a request keeps the
    # other busy for some 20 ms, and one more comes meanwhile and waits for it. A wait that
    # short is no pressure (ReaderShedding.pressureAfterMilliseconds): the reader keeps its
    # worker. (Any wait once marked the environment pressed, and slow uploads were given up
    # each time a worker was a few milliseconds from free.)
    apache = start(accounts, extra="MaxProcessors 2\n", name="slow-attack-blip")
    sockets = []
    try:
        install_sleep_cgi(apache, "blip.cgi", 0.02)
        shed = int(environment_line(apache, "env-a")["shed"])
        sockets.append(reader_past_its_bound(apache, spares=1))
        busy, waiter = (socket.create_connection(("127.0.0.1", apache.plain), timeout=20, source_address=(f"127.0.0.{n}", 0))
                        for n in (2, 3))
        sockets += [busy, waiter]
        busy.sendall(b"GET /cgi-bin/blip.cgi HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        time.sleep(0.005)
        waiter.sendall(b"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        for sock in (busy, waiter):
            assert_served_by_a(apache, sock)
        time.sleep(0.3)  # a reader looks at the pressure every 100 ms past its bound
        line = environment_line(apache, "env-a")
        assert int(line["shed"]) == shed and line["reading"] == "1", str(line) + apache.read_error_log()[-2000:]
    finally:
        for sock in sockets:
            sock.close()
        apache.stop()
        apache.cleanup()


REMOTEIP = """LoadModule remoteip_module /usr/lib/apache2/modules/mod_remoteip.so
RemoteIPHeader X-Forwarded-For
RemoteIPInternalProxy 127.0.0.1
"""


@pytest.fixture(scope="module")
def proxied(module, accounts):
    yield from attack_target(accounts, REMOTEIP, name="slow-attack-proxied")


def slow_post(apache, before=b"", header=""):
    """A slow POST body to A from 127.0.0.1: `before` (a PROXY header) and one more header line."""
    sock = socket.create_connection(("127.0.0.1", apache.plain), timeout=20)
    sock.sendall(before + f"POST /cgi-bin/id.cgi HTTP/1.1\r\nHost: a.test\r\n{header}"
                 "Content-Length: 100000\r\n\r\nx".encode())
    return sock


def slow_posts(apache, forwarded):
    """Slow POST bodies to A from 127.0.0.1 (the front proxy), one per forwarded address."""
    return [slow_post(apache, header=f"X-Forwarded-For: {address}\r\n") for address in forwarded]


def test_behind_a_front_proxy_the_share_follows_the_forwarded_address(proxied):
    # One client behind the proxy sends eight slow bodies: it gets its share (5 of 10 workers).
    shed = int(environment_line(proxied, "env-a")["shed"])
    socks = slow_posts(proxied, ["198.51.100.1"] * 8)
    try:
        # (mod_reqtimeout ends these bodies after 10 s: what follows takes less.)
        assert wait_for(lambda: int(environment_line(proxied, "env-a")["reading"]) == 5, 5), \
            environment_line(proxied, "env-a")
        time.sleep(0.5)
        assert int(environment_line(proxied, "env-a")["reading"]) == 5, environment_line(proxied, "env-a")
        # Another client behind the same proxy is served at once: the proxy is not the client.
        for _ in range(5):
            status, body, took = timed_get(proxied, "a.test", False, source="127.0.0.1",
                                           headers={"X-Forwarded-For": "198.51.100.2"})
            assert status == 200 and f"uid={proxied.uids['a']}" in body, (status, body[:300])
            assert took < 1.0, took
        # And clients with one slow body each fill the other workers: the proxy itself has no share.
        # One at a time, each once the last is read: five at once may find a worker still busy
        # with the requests above and wait for it (a moment: no pressure, nothing shed), and
        # the count would be read before that one is reading.
        for n in range(10, 15):
            socks += slow_posts(proxied, [f"198.51.100.{n}"])
            assert wait_for(lambda: int(environment_line(proxied, "env-a")["reading"]) == n - 4, 1.5), \
                str(environment_line(proxied, "env-a")) + proxied.read_error_log()[-3000:]
        assert int(environment_line(proxied, "env-a")["shed"]) == shed
    finally:
        for sock in socks:
            sock.close()


def test_a_burst_that_idle_workers_and_room_can_take_sheds_no_reader(accounts):
    # MaxProcessors 4: a reader past ReaderShedTimeout, two idle spares, and three requests at
    # once. Two go to the spares and one to a worker that may still start: nothing waits for a
    # worker, so the environment is not pressed and the reader keeps its worker. (The
    # multiplexers once counted a connection queued for an idle worker twice, as that worker
    # and as one still to start, read the environment as full, and the reader was shed.)
    apache = start(accounts, extra="MaxProcessors 4\n", name="slow-attack-burst")
    sockets = []
    try:
        install_sleep_cgi(apache, "sleep.cgi", 1)
        shed = int(environment_line(apache, "env-a")["shed"])
        sockets.append(reader_past_its_bound(apache, spares=2))
        # From three other clients: none is over its share (MaxClientShare, 2 of 4 workers).
        burst = [socket.create_connection(("127.0.0.1", apache.plain), timeout=20, source_address=(f"127.0.0.{n}", 0))
                 for n in (2, 3, 4)]
        sockets += burst
        # All but the heads' last byte first, then those three bytes together: the multiplexers
        # see the three requests complete at the same moment.
        for sock in burst:
            sock.sendall(b"GET /cgi-bin/sleep.cgi HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r")
        time.sleep(0.3)
        for sock in burst:
            sock.sendall(b"\n")
        for sock in burst:
            assert_served_by_a(apache, sock)
        line = environment_line(apache, "env-a")
        assert int(line["shed"]) == shed and line["reading"] == "1", line
    finally:
        for sock in sockets:
            sock.close()
        apache.stop()
        apache.cleanup()


def test_without_a_trusted_proxy_the_header_is_the_clients_word_only(accounts):
    # No mod_remoteip: X-Forwarded-For is anybody's to write, and the share counts the peer.
    apache = start(accounts, name="slow-attack-direct")
    socks = []
    try:
        socks = slow_posts(apache, [f"198.51.100.{n}" for n in range(1, 9)])
        assert wait_for(lambda: int(environment_line(apache, "env-a")["reading"]) == 5, 10)
        time.sleep(1)
        assert int(environment_line(apache, "env-a")["reading"]) == 5, environment_line(apache, "env-a")
    finally:
        for sock in socks:
            sock.close()
        apache.stop()
        apache.cleanup()


PROXY_PROTOCOL = """LoadModule remoteip_module /usr/lib/apache2/modules/mod_remoteip.so
RemoteIPProxyProtocol On
"""


@pytest.fixture(scope="module")
def proxy_protocol(module, accounts):
    yield from attack_target(accounts, PROXY_PROTOCOL, name="slow-attack-proxy-protocol")


def proxy_line(source):
    return f"PROXY TCP4 {source} 127.0.0.1 40000 80\r\n".encode()


def proxy_v2(source):
    """A PROXY protocol version 2 header (binary) naming `source`."""
    a, b, c, d = (int(x) for x in source.split("."))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0x00, 12, a, b, c, d, 127, 0, 0, 1])
            + (40000).to_bytes(2, "big") + (443).to_bytes(2, "big"))


def environment_line_via_proxy(apache, env):
    with socket.create_connection(("127.0.0.1", apache.plain), timeout=20) as sock:
        sock.sendall(proxy_line("192.0.2.200") + b"GET /server-status?auto HTTP/1.1\r\nHost: b.test\r\n"
                     b"Connection: close\r\n\r\n")
        data = read_until_close(sock)
    return environment_fields(data.decode(errors="replace"), env)


def test_proxy_protocol_connections_are_routed_by_their_host_and_server_name(proxy_protocol):
    for host, tenant in (("a.test", "a"), ("b.test", "b")):
        with socket.create_connection(("127.0.0.1", proxy_protocol.plain), timeout=20) as sock:
            sock.sendall(proxy_line("198.51.100.1") + f"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: {host}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = read_until_close(sock)
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        assert f"uid={proxy_protocol.uids[tenant]}".encode() in data
        # TLS behind a PROXY header (version 2 here): routed by the ClientHello's server name.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", proxy_protocol.tls), timeout=20)
        raw.sendall(proxy_v2("198.51.100.1"))
        with context.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(f"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = read_until_close(sock)
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        assert f"uid={proxy_protocol.uids[tenant]}".encode() in data


def test_behind_the_proxy_protocol_the_share_follows_the_client_it_names(proxy_protocol):
    def slow(source):
        return slow_post(proxy_protocol, before=proxy_line(source))

    socks = [slow("198.51.100.1") for _ in range(8)]
    try:
        reading = lambda: int(environment_line_via_proxy(proxy_protocol, "env-a")["reading"])  # noqa: E731
        assert wait_for(lambda: reading() == 5, 5), environment_line_via_proxy(proxy_protocol, "env-a")
        time.sleep(0.5)
        assert reading() == 5, environment_line_via_proxy(proxy_protocol, "env-a")
        socks += [slow(f"198.51.100.{n}") for n in range(10, 15)]
        assert wait_for(lambda: reading() == 10, 3), environment_line_via_proxy(proxy_protocol, "env-a")
    finally:
        for sock in socks:
            sock.close()
