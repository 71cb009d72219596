"""The tenant boundary over HTTP/2: every stream runs in its own vhost's environment or gets
421 Misdirected Request on that stream (RFC 9113 9.1.2), never a handler of another tenant.

Stock mod_http2 with `Protocols h2 h2c http/1.1` (what Debian's `a2enmod http2` sets): h2c with
prior knowledge (routed by the multiplexer by its first request's :authority), h2c by `Upgrade`, and
h2 over TLS with one certificate whose SAN covers both tenants' vhosts (browsers coalesce such
hosts onto one connection). Streams for both tenants travel on one connection; each is served
under its own uid or answered 421."""
import os
import socket
import ssl
import subprocess

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from conftest import make_site, two_environments
from harness import Apache, free_port, request_on, serving
from test_tls import make_cert


@pytest.fixture(scope="module")
def h2server(module, accounts):
    port, tls_port = free_port(), free_port()
    apache = Apache("")
    a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, *a_ids, "a")
    b_site = make_site(apache.root, *b_ids, "b")
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    key, crt = make_cert(certs, "a.test", "b.test")
    # b.test maps a's private file: served under b's uid that is a 403; served under a's uid it
    # would be the leak this suite guards against.
    def vhosts(vport, tls):
        ssl_lines = f"SSLEngine on\n    SSLCertificateFile {crt}\n    SSLCertificateKeyFile {key}" if tls else ""
        return f"""<VirtualHost 127.0.0.1:{vport}>
    ServerName a.test
    DocumentRoot {a_site}
    ScriptAlias /cgi-bin/ {a_site}/cgi-bin/
    ErrorDocument 404 /cgi-bin/id.cgi
    {ssl_lines}
    ServerEnvironment env-a
</VirtualHost>
<VirtualHost 127.0.0.1:{vport}>
    ServerName b.test
    DocumentRoot {b_site}
    ScriptAlias /cgi-bin/ {b_site}/cgi-bin/
    Alias /a-files/ {a_site}/
    ErrorDocument 404 /cgi-bin/id.cgi
    {ssl_lines}
    ServerEnvironment env-b
</VirtualHost>
"""
    apache.write_config(f"""
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
Protocols h2 h2c http/1.1
Listen 127.0.0.1:{port}
Listen 127.0.0.1:{tls_port} https
MinMultiplexers 1
MinSpareProcessors 0
{two_environments(apache.root)}
{vhosts(port, False)}
{vhosts(tls_port, True)}
""")
    apache.port, apache.tls_port = port, tls_port
    apache.ids = {"a.test": a_ids, "b.test": b_ids}
    apache.start(ports=(port, tls_port))
    apache.wait_children(3)
    yield from serving(apache, log_tail=4000)


class H2Client:
    """A minimal HTTP/2 client over a socket (h2 from PyPI): streams sent one after another on
    one connection, each answered as (status, body)."""

    def __init__(self, sock, upgraded_settings=None):
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if upgraded_settings is None:
            self.conn.initiate_connection()
        else:
            self.conn.initiate_upgrade_connection(upgraded_settings)
        self.sock.sendall(self.conn.data_to_send())
        self.responses = {}

    def request(self, authority, path, scheme="http"):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", scheme),
                                        (":authority", authority)], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return self.wait(stream)

    def wait(self, stream):
        self.responses.setdefault(stream, [None, b"", False])
        while not self.responses[stream][2]:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                    self.responses.setdefault(event.stream_id, [None, b"", False])[0] = int(status)
                elif isinstance(event, h2.events.DataReceived):
                    self.responses.setdefault(event.stream_id, [None, b"", False])[1] += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.responses.setdefault(event.stream_id, [None, b"", False])[2] = True
            self.sock.sendall(self.conn.data_to_send())
        status, body, _ = self.responses[stream]
        return status, body.decode(errors="replace")


def uid_in(body):
    for word in body.split():
        if word.startswith("uid="):
            return int(word[4:])
    return None


def check_stream(server, authority, status, body):
    """A stream is served by its own tenant's uid, or refused with 421; never by the other."""
    own_uid = server.ids[authority][0]
    assert status in (200, 421), (authority, status, body)
    if status == 200:
        assert uid_in(body) == own_uid, f"{authority} served as uid {uid_in(body)}, not {own_uid}: {body}"
    return status


def both_tenants_on_one_connection(server, client, scheme="http"):
    """Streams for a.test and b.test, CGI, ErrorDocument and an Alias into a's private file,
    interleaved on one connection."""
    seen = {}
    for authority in ("a.test", "b.test", "a.test", "b.test"):
        status, body = client.request(authority, "/cgi-bin/id.cgi", scheme)
        seen.setdefault(authority, set()).add(check_stream(server, authority, status, body))
        # A missing page runs the vhost's ErrorDocument CGI: an internal redirect.
        status, body = client.request(authority, "/missing", scheme)
        if status != 421:
            assert uid_in(body) == server.ids[authority][0], (authority, status, body)
    status, body = client.request("b.test", "/a-files/secret.txt", scheme)
    assert "secret of a" not in body, f"b.test's Alias served a's private file ({status})"
    return seen


def test_prior_knowledge_streams_stay_in_their_environment(h2server):
    with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
        client = H2Client(sock)
        seen = both_tenants_on_one_connection(h2server, client)
    # The connection goes where its first request's :authority (a.test) says: its streams are
    # served there, b.test's are refused on their stream, and the connection stays usable.
    assert seen == {"a.test": {200}, "b.test": {421}}


def test_curl_prior_knowledge_never_runs_b_as_a(h2server):
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "Host: b.test", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{h2server.port}/cgi-bin/id.cgi"],
                         capture_output=True, text=True, timeout=20).stdout
    body, status = out.rsplit("\n", 1)
    check_stream(h2server, "b.test", int(status), body)
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "Host: b.test", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{h2server.port}/a-files/secret.txt"],
                         capture_output=True, text=True, timeout=20).stdout
    assert "secret of a" not in out


def upgrade(port, host):
    """An HTTP/1.1 request with `Upgrade: h2c`; returns the socket switched to h2 and the
    client with stream 1 (the upgraded request) pending."""
    probe = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = probe.initiate_upgrade_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall((f"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  f"Upgrade: h2c\r\nHTTP2-Settings: {settings.decode()}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed during the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    client = H2Client(sock, upgraded_settings=settings)
    return sock, client


@pytest.mark.parametrize("first", ["a.test", "b.test"])
def test_upgrade_h2c_streams_stay_in_their_environment(h2server, first):
    sock, client = upgrade(h2server.port, first)
    with sock:
        status, body = client.wait(1)
        assert status == 200 and uid_in(body) == h2server.ids[first][0], (status, body)
        seen = both_tenants_on_one_connection(h2server, client)
    other = "b.test" if first == "a.test" else "a.test"
    # The Upgrade request was routed by its Host: that tenant's worker holds the h2 session.
    assert seen == {first: {200}, other: {421}}


@pytest.mark.parametrize("sni", ["a.test", "b.test"])
def test_coalesced_tls_streams_stay_in_their_environment(h2server, sni):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", h2server.tls_port), timeout=10)
    with context.wrap_socket(raw, server_hostname=sni) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        client = H2Client(sock)
        seen = both_tenants_on_one_connection(h2server, client, scheme="https")
    other = "b.test" if sni == "a.test" else "a.test"
    assert seen == {sni: {200}, other: {421}}


def test_http1_keepalive_still_moves_between_tenants(h2server):
    """The HTTP/1.1 hand-back is untouched by the gate: one connection, both tenants, served."""
    with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
        for host in ("a.test", "b.test", "a.test"):
            status, _, body = request_on(sock, host, "/cgi-bin/id.cgi")
            assert status == 200, status
            assert uid_in(body) == h2server.ids[host][0], (host, body)
