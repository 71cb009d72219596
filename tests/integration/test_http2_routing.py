"""Prior-knowledge h2c is routed by its first request's :authority (else its `host`), as an
HTTP/1.1 request is by its Host header: the multiplexer peeks the preface, SETTINGS and the first
HEADERS and decodes that block with its own HPACK decoder (Huffman-coded or literal). Prefaces it
cannot read go to the address's first vhost, whose mod_http2 answers them; none of them holds up
anyone else."""
import socket
import struct
import subprocess
import time

import h2.config
import h2.connection
import hpack
import pytest

import os

from test_end_to_end import get
from test_boundary_http2 import H2Client, h2server, uid_in  # noqa: F401  (h2server: the fixture)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags=0, stream=0, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


SETTINGS = frame(0x4, payload=struct.pack(">HI", 3, 100))


class LiteralClient(H2Client):
    """H2Client whose header blocks are never Huffman-coded."""

    def __init__(self, sock, huffman):
        super().__init__(sock)
        encode = self.conn.encoder.encode
        self.conn.encoder.encode = lambda headers, huffman_=huffman: encode(headers, huffman=huffman_)


@pytest.mark.parametrize("huffman", [True, False], ids=["huffman", "literal"])
@pytest.mark.parametrize("first", ["a.test", "b.test"])
def test_the_connection_goes_to_its_first_requests_environment(h2server, first, huffman):
    other = "b.test" if first == "a.test" else "a.test"
    with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
        client = LiteralClient(sock, huffman)
        status, body = client.request(first, "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == h2server.ids[first][0], (status, body)
        # The connection is first's environment's: the other tenant's stream is refused on it.
        status, body = client.request(other, "/cgi-bin/id.cgi")
        assert status == 421, (status, body)
        status, body = client.request(first, "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == h2server.ids[first][0], (status, body)


def test_curl_with_prior_knowledge_reaches_the_second_vhost(h2server):
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "Host: b.test", "-w", "\n%{http_code} %{http_version}",
                          f"http://127.0.0.1:{h2server.port}/cgi-bin/id.cgi"],
                         capture_output=True, text=True, timeout=20).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "200 2" and uid_in(body) == h2server.ids["b.test"][0], out


def test_a_host_header_stands_in_for_authority(h2server):
    with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
        client = H2Client(sock)
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream, [(":method", "GET"), (":path", "/cgi-bin/id.cgi"), (":scheme", "http"),
                                          ("host", "b.test")], end_stream=True)
        sock.sendall(client.conn.data_to_send())
        status, body = client.wait(stream)
        assert status == 200 and uid_in(body) == h2server.ids["b.test"][0], (status, body)


def test_a_client_that_waits_for_the_servers_settings_is_answered(h2server):
    """Preface and SETTINGS, then nothing until the server speaks: after a short wait the
    connection goes to the address's first vhost (a.test), whose mod_http2 sends its SETTINGS."""
    with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(PREFACE + SETTINGS)
        data = sock.recv(65536)
        assert data[3:4] == b"\x04", data[:20]  # the server's SETTINGS frame
        assert time.monotonic() - started < 3
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.data_to_send()  # the preface went already
        conn.receive_data(data)
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", "/cgi-bin/id.cgi"), (":scheme", "http"),
                                   (":authority", "a.test")], end_stream=True)
        sock.sendall(conn.data_to_send())
        client = H2Client.__new__(H2Client)
        client.sock, client.conn, client.responses = sock, conn, {}
        status, body = client.wait(stream)
        assert status == 200 and uid_in(body) == h2server.ids["a.test"][0], (status, body)


def bad_prefaces():
    headers = hpack.Encoder().encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                      (":authority", "b.test")])
    return {
        "HEADERS before SETTINGS": PREFACE + frame(0x1, 0x5, 1, headers),
        "a SETTINGS flood": PREFACE + SETTINGS * 2000,
        "a PING flood": PREFACE + SETTINGS + frame(0x6, payload=bytes(8)) * 500,
        "a frame over 16 KiB": PREFACE + SETTINGS + b"\x00\x40\x01\x01\x05\x00\x00\x00\x01",
        "a truncated HEADERS": PREFACE + SETTINGS + frame(0x1, 0x5, 1, headers)[:12],
        "broken HPACK": PREFACE + SETTINGS + frame(0x1, 0x5, 1, b"\x80\xff\xff"),
        "a half preface": PREFACE[:10],
    }


def test_broken_prefaces_hold_up_nobody(h2server):
    """Each held open while others are served: an HTTP/1.1 client and a prior-knowledge client
    of b.test are routed within a second, and the server stays up."""
    held = []
    try:
        for name, data in bad_prefaces().items():
            sock = socket.create_connection(("127.0.0.1", h2server.port), timeout=10)
            sock.sendall(data)
            held.append((name, sock))
        started = time.monotonic()
        status, body, _ = get(h2server.port, "b.test", "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == h2server.ids["b.test"][0], body
        with socket.create_connection(("127.0.0.1", h2server.port), timeout=10) as sock:
            status, body = H2Client(sock).request("b.test", "/cgi-bin/id.cgi")
        assert status == 200 and uid_in(body) == h2server.ids["b.test"][0], (status, body)
        assert time.monotonic() - started < 1, "routed in under a second"
        # Each bad preface ends with its connection closed or answered (mod_http2's GOAWAY), never
        # with another tenant's content.
        for name, sock in held:
            sock.settimeout(15)
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                continue
            assert b"uid=" not in data, (name, data[:200])
    finally:
        for _, sock in held:
            sock.close()
    os.kill(h2server.pid(), 0)  # the parent is up
    status, _, _ = get(h2server.port, "a.test", "/index.html")
    assert status == 200


@pytest.mark.parametrize("mode", ["h2 over TLS", "h2c Upgrade", "h2c prior knowledge"])
@pytest.mark.parametrize("tenant", ["a.test", "b.test"])
def test_curl_speaks_http2_to_every_tenant_under_its_own_uid(h2server, tenant, mode):
    if mode == "h2 over TLS":
        args = ["--http2", "-k", "--resolve", f"{tenant}:{h2server.tls_port}:127.0.0.1",
                f"https://{tenant}:{h2server.tls_port}/cgi-bin/id.cgi"]
    else:
        flag = "--http2" if mode == "h2c Upgrade" else "--http2-prior-knowledge"
        args = [flag, "-H", f"Host: {tenant}", f"http://127.0.0.1:{h2server.port}/cgi-bin/id.cgi"]
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code} %{http_version}", *args],
                         capture_output=True, text=True, timeout=20).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "200 2", out
    assert uid_in(body) == h2server.ids[tenant][0], body
