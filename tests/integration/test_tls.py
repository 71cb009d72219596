"""TLS vhosts routed by SNI: the multiplexer peeks at the ClientHello, never performs TLS; the
worker of the chosen environment does the whole handshake with mod_ssl."""
import http.client
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import make_site, two_environments
from harness import Apache, free_port, serving

HELLO_CAPTURE_TIMEOUT = 5


def make_cert(directory, name, *more_names):
    """A self-signed certificate for `name` (and `more_names` in its SAN); (key, cert) paths."""
    key, crt = os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.crt")
    san = ",".join(f"DNS:{n}" for n in (name, *more_names))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def tls(module, accounts):
    port, noenv_port = free_port(), free_port()
    apache = Apache("")
    a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, *a_ids, "a")
    b_site = make_site(apache.root, *b_ids, "b")
    certs = os.path.join(apache.root, "certs")
    os.makedirs(certs)
    keys = {name: make_cert(certs, name) for name in ("a.test", "b.test", "noenv.test")}

    def vhost(vport, name, site, env):
        key, crt = keys[name]
        return f"""<VirtualHost 127.0.0.1:{vport}>
    ServerName {name}
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    SSLEngine on
    SSLCertificateFile {crt}
    SSLCertificateKeyFile {key}
    {f"ServerEnvironment {env}" if env else ""}
</VirtualHost>
"""
    apache.write_config(f"""
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
<Location /server-status>
    SetHandler server-status
</Location>
SSLSessionCache shmcb:{apache.root}/run/ssl_scache(512000)
Listen 127.0.0.1:{port} https
Listen 127.0.0.1:{noenv_port} https
MinMultiplexers 1
MaxMultiplexers 1
MinSpareProcessors 0
MultiplexerHeadTimeout 2
RequestReadTimeout handshake=3 header=5 body=5
{two_environments(apache.root)}
{vhost(port, "a.test", a_site, "env-a")}
{vhost(port, "b.test", b_site, "env-b")}
{vhost(noenv_port, "noenv.test", b_site, None)}
{vhost(noenv_port, "b.test", b_site, "env-b")}
""")
    apache.port, apache.noenv_port, apache.certs = port, noenv_port, keys
    apache.ids = {"a": a_ids, "b": b_ids}
    apache.start(ports=(port, noenv_port))
    apache.wait_children(3)
    yield from serving(apache, log_tail=3000)


def connect(server, server_name, port=None, verify_as=None):
    """A TLS connection; `server_name` None sends no SNI. Returns (ssl socket, peer CN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if verify_as:
        context.load_verify_locations(server.certs[verify_as][1])
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port or server.port), timeout=15)
    tls_sock = context.wrap_socket(raw, server_hostname=server_name)
    der = tls_sock.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True,
                             text=True).stdout
    return tls_sock, re.search(r"CN\s*=\s*(\S+)", subject).group(1)


def https_get(sock, host, path="/cgi-bin/id.cgi"):
    """One keep-alive request on an open TLS socket: (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    conn_file = sock.makefile("rb")
    response = http.client.HTTPResponse(sock)
    response.fp = conn_file
    response.begin()
    body = response.read().decode(errors="replace")
    return response.status, body


def uid_of(body):
    return int(re.search(r"uid=(\d+)", body).group(1))


@pytest.mark.parametrize("name,env", [("a.test", "a"), ("b.test", "b")])
def test_each_name_gets_its_certificate_and_its_environment(tls, name, env):
    sock, cn = connect(tls, name, verify_as=name)   # verification against that vhost's own cert
    assert cn == name
    status, body = https_get(sock, name)
    sock.close()
    assert status == 200, body
    assert uid_of(body) == tls.ids[env][0]


def test_curl_with_resolve_reaches_each_tenant(tls):
    for name, env in (("a.test", "a"), ("b.test", "b")):
        out = subprocess.run(["curl", "-s", "--max-time", "10", "--cacert", tls.certs[name][1], "--resolve",
                              f"{name}:{tls.port}:127.0.0.1", f"https://{name}:{tls.port}/cgi-bin/id.cgi"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert uid_of(out.stdout) == tls.ids[env][0]


@pytest.mark.parametrize("server_name", [None, "unknown.test"])
def test_no_sni_or_an_unknown_name_goes_to_the_first_vhost(tls, server_name):
    sock, cn = connect(tls, server_name)
    assert cn == "a.test"
    status, body = https_get(sock, "a.test")
    sock.close()
    assert status == 200 and uid_of(body) == tls.ids["a"][0]


def test_another_environments_host_inside_one_tls_connection_is_misdirected(tls):
    sock, _ = connect(tls, "a.test")
    status, body = https_get(sock, "a.test")
    assert status == 200 and uid_of(body) == tls.ids["a"][0]
    status, _ = https_get(sock, "b.test")
    sock.close()
    assert status == 421


def test_no_sni_to_an_address_whose_first_vhost_has_no_environment_is_closed_and_logged(tls):
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        connect(tls, None, port=tls.noenv_port)
    assert re.search(r"virtual host noenv\.test.*has no ServerEnvironment", tls.read_error_log())
    # With SNI, the second vhost of that address is served by its environment.
    sock, cn = connect(tls, "b.test", port=tls.noenv_port)
    status, body = https_get(sock, "b.test")
    sock.close()
    assert cn == "b.test" and status == 200 and uid_of(body) == tls.ids["b"][0]


def test_plain_http_to_the_tls_port_gets_an_error_not_a_hang(tls):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls.port), timeout=15) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert time.monotonic() - started < 10
    # mod_ssl, in the worker of the vhost the Host header names, explains the mistake.
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"plain HTTP" in data or b"SSL-enabled" in data, data[:600]


def real_hello():
    """The ClientHello Python's ssl module sends for a.test."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    result = {}

    def client():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection(server.getsockname(), timeout=3) as raw:
                context.wrap_socket(raw, server_hostname="a.test")
        except OSError:
            pass

    thread = threading.Thread(target=client)
    thread.start()
    conn, _ = server.accept()
    conn.settimeout(HELLO_CAPTURE_TIMEOUT)
    result = conn.recv(65536)
    conn.close()
    server.close()
    thread.join()
    return result


@pytest.mark.parametrize("payload", ["truncated", "random", "huge-length"])
def test_bad_client_hellos_neither_crash_nor_stall_the_multiplexer(tls, payload):
    mux_before = {pid for pid, uid, _ in tls.children() if uid == 33}
    hello = real_hello()
    data = {"truncated": hello[:len(hello) // 2],
            "random": b"\x16\x03\x01" + os.urandom(300),
            "huge-length": b"\x16\x03\x01\xff\xff" + os.urandom(64)}[payload]
    bad = socket.create_connection(("127.0.0.1", tls.port), timeout=30)
    bad.sendall(data)
    try:
        # Meanwhile, the multiplexer routes everyone else at once.
        for _ in range(5):
            started = time.monotonic()
            sock, _ = connect(tls, "b.test")
            status, _ = https_get(sock, "b.test", "/index.html")
            sock.close()
            assert status == 200 and time.monotonic() - started < 2
        # The bad connection ends (closed, or refused by mod_ssl) within head timeout + handshake timeout.
        started = time.monotonic()
        while True:
            chunk = bad.recv(65536)
            if not chunk:
                break
        assert time.monotonic() - started < 20
    except ConnectionResetError:
        pass
    finally:
        bad.close()
    assert {pid for pid, uid, _ in tls.children() if uid == 33} == mux_before, "a multiplexer died"
    assert "Segmentation" not in tls.read_error_log()


def test_status_shows_workers_reading_from_a_tls_client(tls):
    # A TLS client that completed its handshake and sends nothing holds a worker of A reading
    # (issue 18: the status page shows such readers per environment).
    def reading():
        sock, _ = connect(tls, "b.test")
        try:
            status, body = https_get(sock, "b.test", "/server-status?auto")
        finally:
            sock.close()
        assert status == 200, body
        lines = [line for line in body.splitlines() if line.startswith("PeruserEnvironment: env-a ")]
        assert lines, body
        return int(dict(p.split("=") for p in lines[0].split()[2:])["reading"])

    def settles_at(count):
        deadline = time.monotonic() + 8  # RequestReadTimeout header=5 ends earlier tests' readers
        while reading() != count and time.monotonic() < deadline:
            time.sleep(0.2)
        return reading() == count

    assert settles_at(0)
    idle, _ = connect(tls, "a.test")
    try:
        assert settles_at(1)
    finally:
        idle.close()
    assert settles_at(0)
