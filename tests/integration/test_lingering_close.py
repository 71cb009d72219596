"""The end of a connection: a worker sends the response, shuts its write side and does httpd's
lingering close (reading what the client still sends until it closes) itself while nothing else
waits for its environment; as soon as a connection does, it leaves that wait to the
multiplexers and serves it. The client still gets every byte of its response."""
import os
import socket
import threading
import time

import pytest

from harness import Apache, free_port
from test_end_to_end import get
from test_process_management import wait_until
from test_status import auto_lines


@pytest.fixture(scope="module")
def server(module, accounts):
    port = free_port()
    apache = Apache("", name="linger")
    root = apache.root
    site = os.path.join(root, "site")
    os.makedirs(site)
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(site, "big.bin"), "wb") as f:
        f.write(bytes(range(256)) * 1024)  # 256 KiB
    for name in ("index.html", "big.bin"):
        os.chmod(os.path.join(site, name), 0o644)
    os.chmod(site, 0o755)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
<Directory {root}>
    Require all granted
</Directory>
<Processor one>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MaxProcessors 1
    MinSpareProcessors 0
</Processor>
<Processor admin>
    User peruser-b
    Group peruser-b
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName one.test
    DocumentRoot {site}
    ServerEnvironment one
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName admin.test
    DocumentRoot {site}
    ServerEnvironment admin
    <Location /server-status>
        SetHandler server-status
    </Location>
</VirtualHost>
""")
    apache.port = port
    apache.start(ports=(port,))
    yield apache
    apache.stop()
    apache.cleanup()


def one(server):
    status, body, _ = get(server.port, "admin.test", "/server-status?auto")
    assert status == 200
    return auto_lines(body)["one"]


def read_response(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_client_that_keeps_sending_after_its_response_gives_up_its_worker_to_the_next(server):
    """Connection: close, response read, and then the client trickles a byte every 0.3 s
    without closing: httpd's lingering close keeps reading for up to 30 s. While nobody else
    asks, the environment's only worker does that wait; the next client gets it at once and
    the multiplexers go on reading the trickle."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n")
    response = b""
    while b"hello" not in response:
        response += sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200")
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                sock.sendall(b"x")
            except OSError:
                return
            time.sleep(0.3)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        # Nothing else waits for `one`: its worker lingers itself (busy, not idle).
        for _ in range(5):
            time.sleep(0.2)
            line = one(server)
            assert line["alive"] == "1" and line["idle"] == "0", line
        started = time.monotonic()
        status, body, _ = get(server.port, "one.test", "/index.html")
        assert status == 200 and body == "hello\n"
        assert time.monotonic() - started < 5, "the only worker was given up to the waiting client"
        assert thread.is_alive(), "the trickling client is still connected"
        assert wait_until(lambda: one(server)["idle"] == "1", timeout=5), one(server)
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_bytes_sent_past_a_closing_request_do_not_cut_the_response(server):
    """A client that sends more after a `Connection: close` request (a pipelined request,
    garbage) still reads the whole response: the connection is drained, never reset."""
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port))
        # Sent beside the reading: neither side may wait on the other's buffers.
        sender = threading.Thread(target=lambda: sock.sendall(
            b"GET /big.bin HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n"
            + b"GET /index.html HTTP/1.1\r\nHost: one.test\r\n\r\n" + b"z" * 200_000))
        sender.start()
        data = read_response(sock)
        sender.join()
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        assert body == bytes(range(256)) * 1024
    assert get(server.port, "one.test", "/index.html")[0] == 200
